"""Run verl's engine TrainingWorker at a data-parallel x Ulysses layout, in CPU processes over gloo.

``run_layout(dp, sp, cases, model_dir)`` spawns ``dp * sp`` processes. Every process builds the
actor worker exactly as :mod:`harness.training_worker` does, with
``ulysses_sequence_parallel_size=sp``, and for each case runs the V1 trainer's two passes on
the same rollout: the old-log-prob pass, then one ``update_actor`` step. Each data-parallel
rank gets its shard of the batch the way verl's dispatch hands it out (the ranks of one
Ulysses group share a shard).

The shards are laid out so that every layout sees the same mini-batches and the same
micro-batches: mini-batch k of the one-worker run is the union over data-parallel ranks of
their k-th mini-batch, and its micro-batches are split whole between the ranks. That keeps
the objective identical where it depends, by design, on which responses share a
micro-batch (the authors' per-micro-batch positive-sample NLL).

``layout`` is the trainer's data layout: ``nested`` (the V1 trainer's TransferQueue, every
sample unpadded) or ``padded`` (the older trainer's padded batch); the model forward is packed
(remove-padding) in both, as verl requires with Ulysses > 1.

Rank 0 returns, per case: the old log-probs and entropies of the whole batch (gathered back
into the one-worker order), the logged metrics, the full gradient at each optimizer step (before
clipping and the step), and the parameters before and after the update.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch

from erc_verl.rehearsal.ray_cluster import free_port

CASE_KEYS = ("name", "policy_loss", "temperature", "layout", "bsz", "mini", "micro", "seed")


def shard_order(bsz: int, mini: int, micro: int, dp: int) -> list[list[int]]:
    """For each data-parallel rank, the one-worker sample indices it holds, in order.

    Mini-batch k of the one-worker run is samples [k*mini, (k+1)*mini); it holds mini/micro
    micro-batches, which are dealt out whole: rank r gets micro-batches
    [r*n, (r+1)*n) of every mini-batch, n = mini / micro / dp.
    """
    if bsz % mini or mini % micro or (mini // micro) % dp:
        raise ValueError(f"bsz {bsz}, mini {mini}, micro {micro} and dp {dp} do not divide")
    per_rank = mini // micro // dp
    shards: list[list[int]] = [[] for _ in range(dp)]
    for k in range(bsz // mini):
        for r in range(dp):
            for j in range(r * per_rank, (r + 1) * per_rank):
                start = k * mini + j * micro
                shards[r].extend(range(start, start + micro))
    return shards


def _rollout(case: dict):
    from harness import training_worker as tw

    gen = torch.Generator().manual_seed(case["seed"])
    batch, advantages = tw.random_rollout(case["bsz"], 7, case["bsz"] + 4, vocab_high=60, seed=case["seed"])
    # Rewards for the positive-sample NLL: about half the responses count as correct.
    correct = (torch.rand(case["bsz"], generator=gen) < 0.5).float()
    rewards = torch.zeros_like(advantages)
    lens = batch["response_mask"].sum(dim=1)
    rewards[torch.arange(case["bsz"]), lens - 1] = correct
    return batch, advantages, rewards


def _select(batch, idx):
    return batch[torch.tensor(idx)]


def _child(rank: int, world: int, port: int, dp: int, sp: int, model_dir: str, cases: list, out_path: str):
    os.environ.update(
        VERL_PLATFORM="cpu",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    from harness import training_worker as tw

    tw.register_cpu_platform()
    dist.init_process_group("gloo", rank=rank, world_size=world)
    dp_rank = rank // sp
    sp_groups = [dist.new_group(list(range(r * sp, (r + 1) * sp))) for r in range(dp)]
    results = []
    try:
        for case in cases:
            worker = tw._build_worker(
                model_dir,
                False,
                policy_loss=case["policy_loss"],
                temperature=case["temperature"],
                micro_batch_size=case["micro"],
                ppo_mini_batch_size=case["mini"],
                use_remove_padding=True,  # verl requires it with Ulysses > 1; the same in every layout
                lr=1e-2,
                extra_actor={
                    "ulysses_sequence_parallel_size": sp,
                    "fsdp_config.ulysses_sequence_parallel_size": sp,
                    **case.get("extra_actor", {}),
                },
            )
            torch.manual_seed(0)
            batch, advantages, rewards = _rollout(case)
            idx = shard_order(case["bsz"], case["mini"], case["micro"], dp)[dp_rank]
            part = _select(batch, idx)
            layout = case["layout"]
            old_lp, old_ent = tw.compute_old_log_prob(worker, part, case["temperature"], layout=layout)
            # verl collects a Ulysses group's output from its first rank and hands the stored
            # batch (old log-probs and entropies included) to every rank of the group.
            shared = [old_lp, old_ent]
            dist.broadcast_object_list(shared, src=dp_rank * sp, group=sp_groups[dp_rank])
            old_lp, old_ent = shared
            params_before = tw.get_params(worker)
            grads = tw.record_gradients(worker)
            metrics = tw.update_actor(
                worker,
                part,
                old_lp,
                old_ent,
                advantages[idx],
                ppo_mini_batch_size=case["mini"],
                shuffle=False,
                temperature=case["temperature"],
                layout=layout,
                extra={"token_level_rewards": rewards[idx]},
            )
            params = tw.get_params(worker)
            gathered = [None] * world if rank == 0 else None
            dist.gather_object((idx, old_lp, old_ent), gathered, dst=0)
            if rank == 0:
                bsz, width = case["bsz"], old_lp.shape[1]
                full_lp, full_ent = torch.zeros(bsz, width), torch.zeros(bsz, width)
                for r in range(0, world, sp):  # one copy per Ulysses group
                    ridx, lp, ent = gathered[r]
                    full_lp[ridx], full_ent[ridx] = lp, ent
                results.append(
                    {
                        "name": case["name"],
                        "old_log_probs": full_lp,
                        "entropy": full_ent,
                        "metrics": dict(metrics),
                        "grads": grads,
                        "params_before": params_before,
                        "params": params,
                    }
                )
            del worker
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()


def run_layout(dp: int, sp: int, cases: list[dict], model_dir: str) -> list[dict[str, Any]]:
    """Run ``cases`` at data parallel ``dp`` x Ulysses ``sp``; returns rank 0's results per case."""
    import torch.multiprocessing as mp

    for case in cases:
        missing = set(CASE_KEYS) - set(case)
        if missing:
            raise ValueError(f"case {case.get('name')} lacks {sorted(missing)}")
    world = dp * sp
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "results.pt")
        mp.start_processes(
            _child, args=(world, free_port(), dp, sp, model_dir, cases, out), nprocs=world, start_method="spawn"
        )
        return torch.load(out, weights_only=False)
