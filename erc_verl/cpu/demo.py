"""`erc-verl demo`: a real ERC training run on CPU, through verl's own actor, in minutes.

What it does, in order (everything local, nothing downloaded):

1. builds a tiny Qwen2 policy and a character tokenizer (``engine_cpu.tiny_qwen2``,
   ``vocab_size = len(tokenizer)`` so sampling can only produce real characters);
2. warms it up with a short plain-torch supervised pass on a synthetic arithmetic task
   ("12+7=" -> "19<eos>"), so that early rewards are neither all 0 nor all 1;
3. for each loss mode (default: the ``vanilla`` baseline with the entropy-ratio monitor, and
   ``dapo_erc``), from the same warm start and the same seed, runs GRPO:
   rollouts at temperature 1.0 (prompts x responses per prompt, HF sampling from the worker's
   current weights with a seeded generator), exact-match reward (1 correct / 0 wrong),
   verl's old-log-prob pass with entropy, verl's ``compute_grpo_outcome_advantage`` grouped by
   prompt, then verl's engine ``TrainingWorker.train_mini_batch`` with several mini-batches per
   rollout batch (all but the first off-policy), exactly as verl's V1 trainer drives it;
4. writes ``metrics.jsonl`` (verl's metric names), ``demo.png`` and ``summary.md``, with
   self-checks (ERC gate, reward rises, same seed same metrics).

The ERC gate check spies on the loss: for the run, the registered loss function in
``verl.trainer.ppo.core_algos.POLICY_LOSS_REGISTRY`` is wrapped; on every micro-batch the
wrapper calls the real loss, then takes d pg_loss / d log_prob with ``torch.autograd.grad``
(only the few elementwise ops between the two are traversed, so it is cheap) and counts the
response tokens whose entropy ratio lies outside (low, high) yet carry a non-zero gradient.
A token's loss reaches the parameters only through its own log_prob (advantages, old
log-probs and entropies are constants; entropy_coeff is 0, no KL loss), so a zero there
means the token contributes nothing to the update.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path

TASKS = ("add", "sub", "mul")
ERC_TARGET = "erc_verl.ERCPolicyLossConfig"
# Metrics that measure time or memory: never part of the same-seed comparison.
_NONDETERMINISTIC_PREFIXES = ("timing", "perf/", "actor/perf/")


# ----------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.description = (
        "Train a tiny Qwen2 on CPU with GRPO through verl's engine actor, once per loss mode from the "
        "same warm start and seed, and compare: writes metrics.jsonl, demo.png and summary.md under --out."
    )
    g = parser.add_argument_group("run")
    g.add_argument("--out", default="runs/demo", help="output folder for metrics.jsonl, demo.png, summary.md")
    g.add_argument("--steps", type=int, default=60, help="RL steps (rollout batches) per loss mode")
    g.add_argument("--seed", type=int, default=0, help="seed for model init, warm-up, prompts and sampling")
    g.add_argument(
        "--loss-modes",
        default="vanilla,dapo_erc",
        help="comma-separated verl loss modes to compare: vanilla, dapo_erc, gppo, gppo_erc "
        "(vanilla/dapo_erc: clip 0.2/0.28; gppo/gppo_erc: clip 0.2/0.2; dual-clip 10 for all)",
    )
    g.add_argument("--band", type=float, nargs=2, default=(0.95, 1.05), metavar=("LOW", "HIGH"),
                   help="ERC entropy-ratio band (low, high); also the band the baselines' monitor reports")
    g.add_argument("--threads", type=int, default=2, help="torch CPU threads (fixed so results repeat)")
    g.add_argument("--repeat-steps", type=int, default=2,
                   help="re-run the first K steps of the first ERC run (else the first run) from scratch and "
                   "require identical metrics; 0 skips this check")
    g.add_argument("--strict", action="store_true", help="exit with status 1 if a self-check fails")
    g.add_argument("--no-plot", action="store_true", help="skip the PNG figure")

    g = parser.add_argument_group("task and model")
    g.add_argument("--task", choices=TASKS, default="add", help="arithmetic task: a+b, a-b (a>=b) or a*b")
    g.add_argument("--max-operand", type=int, default=9, help="operands are drawn from 0..MAX_OPERAND")
    g.add_argument("--hidden-size", type=int, default=64, help="tiny Qwen2 hidden size")
    g.add_argument("--layers", type=int, default=2, help="tiny Qwen2 decoder layers")
    g.add_argument("--heads", type=int, default=4, help="attention heads (HEADS//2 key/value heads)")
    g.add_argument("--sft-steps", type=int, default=50, help="supervised warm-up steps before RL (50: about half the samples right, room for RL)")
    g.add_argument("--sft-batch-size", type=int, default=64, help="warm-up batch size")
    g.add_argument("--sft-lr", type=float, default=3e-3, help="warm-up AdamW learning rate")

    g = parser.add_argument_group("RL")
    g.add_argument("--prompts-per-step", type=int, default=8, help="prompts per rollout batch")
    g.add_argument("--responses-per-prompt", type=int, default=8, help="sampled responses per prompt (GRPO group)")
    g.add_argument("--updates-per-batch", type=int, default=8,
                   help="optimizer steps (mini-batches) per rollout batch; all but the first are off-policy")
    g.add_argument("--micro-batch-size", type=int, default=8, help="sequences per forward/backward micro-batch")
    g.add_argument("--lr", type=float, default=1e-4, help="actor AdamW learning rate (verl optim.lr)")
    g.add_argument("--temperature", type=float, default=1.0, help="rollout sampling temperature")
    g.add_argument("--max-new-tokens", type=int, default=6, help="maximum response length in tokens")


# ----------------------------------------------------------------------------------------
# task
# ----------------------------------------------------------------------------------------


def make_problem(task: str, rng: random.Random, max_operand: int) -> tuple[str, str]:
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    if task == "add":
        return f"{a}+{b}=", str(a + b)
    if task == "sub":
        a, b = max(a, b), min(a, b)
        return f"{a}-{b}=", str(a - b)
    if task == "mul":
        return f"{a}*{b}=", str(a * b)
    raise ValueError(f"unknown task {task!r}")


def parse_answer(text: str) -> str | None:
    """The digits of a response (the text after '=' up to eos), or None if it is not a number."""
    text = text.strip()
    return text if text.isdigit() else None


def score(response_ids: list[int], answer: str, tokenizer) -> float:
    """Exact match: 1.0 if the response is exactly the answer's digits followed by eos, else 0.0."""
    if not response_ids or response_ids[-1] != tokenizer.eos_token_id:
        return 0.0  # ran out of tokens before eos
    got = parse_answer(tokenizer.decode(response_ids[:-1]))
    return 1.0 if got is not None and got == answer else 0.0


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def loss_settings(mode: str, band) -> dict:
    """The actor settings of each loss mode (erc-spec.md section 3)."""
    low, high = band
    if mode in ("vanilla", "dapo_erc"):
        clip = (0.2, 0.28)
    elif mode in ("gppo", "gppo_erc"):
        clip = (0.2, 0.2)
    else:
        raise ValueError(f"--loss-modes: unknown mode {mode!r} (vanilla, dapo_erc, gppo, gppo_erc)")
    policy_loss = {
        "_target_": ERC_TARGET,
        "loss_mode": mode,
        "entropy_ratio_low": float(low),
        "entropy_ratio_high": float(high),
        # baselines log what ERC would keep; never changes their gradient
        "entropy_ratio_monitor": True,
    }
    return {"policy_loss": policy_loss, "clip_ratio_low": clip[0], "clip_ratio_high": clip[1], "clip_ratio_c": 10.0}


def is_erc(mode: str) -> bool:
    from erc_verl.config import ERC_LOSS_MODES

    return mode in ERC_LOSS_MODES


def warm_start(args, model_dir: Path, log) -> dict:
    """tiny_qwen2 + a plain-torch SFT pass on the task (answer tokens only). Saves to model_dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from erc_verl import engine_cpu

    tokenizer = engine_cpu.build_tokenizer()
    engine_cpu.tiny_qwen2(
        model_dir,
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        layers=args.layers,
        heads=args.heads,
        kv_heads=max(1, args.heads // 2),
        intermediate_size=2 * args.hidden_size,
        max_position_embeddings=64,
        seed=args.seed,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.train()
    seed_everything(args.seed)
    rng = random.Random(args.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=args.sft_lr, weight_decay=0.0)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    t0 = time.time()
    for step in range(args.sft_steps):
        rows = []
        for _ in range(args.sft_batch_size):
            q, a = make_problem(args.task, rng, args.max_operand)
            p, r = tokenizer.encode(q), tokenizer.encode(a) + [eos]
            rows.append((p, r))
        L = max(len(p) + len(r) for p, r in rows)
        ids = torch.full((len(rows), L), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, (p, r) in enumerate(rows):
            seq = p + r
            ids[i, L - len(seq) :] = torch.tensor(seq)  # left padding, as in the rollouts
            attn[i, L - len(seq) :] = 1
            labels[i, L - len(r) :] = torch.tensor(r)
        pos = (attn.cumsum(1) - 1).clamp(min=0)
        loss = model(input_ids=ids, attention_mask=attn, position_ids=pos, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == args.sft_steps - 1:
            log(f"[warm-up] step {step + 1}/{args.sft_steps} loss {loss.item():.3f}")
    model.eval()
    model.save_pretrained(model_dir, safe_serialization=True)
    return {"sft_final_loss": float(loss.item()) if args.sft_steps else float("nan"), "sft_s": time.time() - t0}


@contextlib.contextmanager
def gate_spy(mode: str, band, counters: dict):
    """Wrap the registered loss `mode` for the duration: count tokens that get gradient.

    After the real loss is formed, g = d pg_loss / d log_prob (autograd.grad, graph retained
    for verl's own backward). Counted per response token: out of band (rho <= low or
    rho >= high), out of band with g != 0, in band, in band with g != 0.
    """
    import torch
    from verl.trainer.ppo import core_algos

    from erc_verl.losses import entropy_ratio, fed_entropies

    low, high = band
    real = core_algos.POLICY_LOSS_REGISTRY[mode]

    def spy(*args, entropy=None, old_entropy=None, **kwargs):
        entropy, old_entropy = fed_entropies(kwargs.get("config"), entropy, old_entropy)
        pg_loss, metrics = real(*args, entropy=entropy, old_entropy=old_entropy, **kwargs)
        log_prob, mask = kwargs["log_prob"], kwargs["response_mask"].bool()
        if entropy is None or old_entropy is None or not log_prob.requires_grad:
            counters["calls_without_check"] += 1
            return pg_loss, metrics
        (grad,) = torch.autograd.grad(pg_loss, log_prob, retain_graph=True, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(log_prob)
        rho = entropy_ratio(entropy, old_entropy)
        inside = mask & (rho > low) & (rho < high)
        outside = mask & ~inside
        moved = grad != 0
        counters["calls"] += 1
        counters["out_of_band"] += int(outside.sum())
        counters["out_of_band_with_grad"] += int((outside & moved).sum())
        counters["in_band"] += int(inside.sum())
        counters["in_band_with_grad"] += int((inside & moved).sum())
        if outside.any():
            counters["max_abs_grad_out_of_band"] = max(
                counters["max_abs_grad_out_of_band"], float(grad[outside].abs().max())
            )
        return pg_loss, metrics

    core_algos.POLICY_LOSS_REGISTRY[mode] = spy
    try:
        yield
    finally:
        core_algos.POLICY_LOSS_REGISTRY[mode] = real


def new_counters() -> dict:
    return dict.fromkeys(
        ("calls", "calls_without_check", "out_of_band", "out_of_band_with_grad", "in_band", "in_band_with_grad"), 0
    ) | {"max_abs_grad_out_of_band": 0.0}


def greedy_accuracy(model_or_worker, tokenizer, problems, max_new_tokens: int) -> float:
    """Share of `problems` answered exactly with greedy decoding."""
    from erc_verl import engine_cpu

    prompts = [tokenizer.encode(q) for q, _ in problems]
    responses = engine_cpu.generate(model_or_worker, prompts, n=1, max_new_tokens=max_new_tokens, temperature=0.0)
    return sum(score(r, a, tokenizer) for r, (_, a) in zip(responses, problems)) / len(problems)


# ----------------------------------------------------------------------------------------
# one training run
# ----------------------------------------------------------------------------------------


def _step_problems(args, step: int):
    # same prompts at a given step for every run (and the repeat)
    rng = random.Random(args.seed * 100_003 + step)
    return [make_problem(args.task, rng, args.max_operand) for _ in range(args.prompts_per_step)]


def run_one(args, mode: str, model_dir: str, tokenizer, steps: int, log, eval_problems=None, sink=None, tag=None):
    """GRPO with loss `mode` from the warm start in model_dir. Returns (rows, counters, info)."""
    import numpy as np
    import torch
    from verl import DataProto
    from verl.trainer.ppo.core_algos import agg_loss, compute_grpo_outcome_advantage
    from verl.trainer.ppo.metric_utils import compute_data_metrics

    from erc_verl import engine_cpu

    tag = tag or mode
    n, n_prompts = args.responses_per_prompt, args.prompts_per_step
    batch_size = n * n_prompts
    mini = batch_size // args.updates_per_batch
    micro = min(args.micro_batch_size, mini)

    seed_everything(args.seed)
    worker = engine_cpu.build_actor_worker(
        model_dir,
        lr=args.lr,
        micro_batch_size=micro,
        ppo_mini_batch_size=mini,
        rollout_n=1,  # the batch is already expanded to prompts x responses
        temperature=args.temperature,
        **loss_settings(mode, args.band),
    )
    info = {}
    if eval_problems:
        info["greedy_acc_start"] = greedy_accuracy(worker, tokenizer, eval_problems, args.max_new_tokens)
    counters = new_counters()
    rows = []
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    t_run = time.time()
    with gate_spy(mode, args.band, counters):
        for step in range(steps):
            t0 = time.time()
            before = dict(counters)
            problems = _step_problems(args, step)
            prompts = [tokenizer.encode(q) for q, _ in problems]
            t_gen = time.time()
            responses = engine_cpu.generate(
                worker,
                prompts,
                n=n,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                eos_token_id=eos,
                pad_token_id=pad,
                seed=args.seed * 100_003 + step,
            )
            scores = [score(r, problems[i // n][1], tokenizer) for i, r in enumerate(responses)]
            batch = engine_cpu.make_batch(
                [p for p in prompts for _ in range(n)], responses, pad_token_id=pad, max_response_len=args.max_new_tokens
            )
            response_mask = batch["response_mask"].float()
            last = response_mask.sum(1).long() - 1
            token_level_scores = torch.zeros_like(response_mask)
            token_level_scores[torch.arange(batch_size), last] = torch.tensor(scores)

            t_old = time.time()
            # verl's old-log-prob pass (with entropy), then GRPO advantages grouped by prompt
            old_log_probs, old_entropy = engine_cpu.compute_old_log_prob(worker, batch, temperature=args.temperature)
            index = np.array([f"{step}-{i // n}" for i in range(batch_size)], dtype=object)
            advantages, returns = compute_grpo_outcome_advantage(token_level_scores, response_mask, index)

            t_upd = time.time()
            update = engine_cpu.update_actor(
                worker, batch, old_log_probs, old_entropy, advantages,
                ppo_mini_batch_size=mini, temperature=args.temperature,
            )
            t_end = time.time()

            data = DataProto.from_dict(
                tensors={
                    **{k: batch[k] for k in ("prompts", "responses", "input_ids", "attention_mask", "response_mask")},
                    "token_level_scores": token_level_scores,
                    "token_level_rewards": token_level_scores,
                    "advantages": advantages,
                    "returns": returns,
                }
            )
            row = {"run": tag, "step": step}
            row.update(compute_data_metrics(data, use_critic=False))
            row["actor/entropy"] = agg_loss(
                loss_mat=old_entropy, loss_mask=response_mask, loss_agg_mode="token-mean"
            ).item()
            row.update({k: float(v) for k, v in update.items()})
            delta = {k: counters[k] - before[k] for k in counters if k != "max_abs_grad_out_of_band"}
            row["demo/gate_out_of_band_tokens"] = delta["out_of_band"]
            row["demo/gate_out_of_band_tokens_with_grad"] = delta["out_of_band_with_grad"]
            row["demo/gate_in_band_tokens_with_grad"] = delta["in_band_with_grad"]
            row["timing_s/gen"] = t_old - t_gen
            row["timing_s/old_log_prob"] = t_upd - t_old
            row["timing_s/update_actor"] = t_end - t_upd
            row["timing_s/step"] = time.time() - t0
            rows.append(row)
            if sink is not None:
                sink.write(json.dumps(row) + "\n")
                sink.flush()
            log(
                f"[{tag}] step {step + 1}/{steps}  reward {row['critic/score/mean']:.3f}  "
                f"entropy {row['actor/entropy']:.3f}  keep {row.get('actor/erc_keep_frac', float('nan')):.3f}  "
                f"clipfrac {row.get('actor/pg_clipfrac', float('nan')):.4f}  "
                f"grad_norm {row.get('actor/grad_norm', float('nan')):.3f}  ({row['timing_s/step']:.1f}s)"
            )
    info["wall_s"] = time.time() - t_run
    if eval_problems:
        info["greedy_acc_end"] = greedy_accuracy(worker, tokenizer, eval_problems, args.max_new_tokens)
    del worker
    import gc

    gc.collect()
    return rows, counters, info


# ----------------------------------------------------------------------------------------
# checks, figure, summary
# ----------------------------------------------------------------------------------------


def _mean(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def _window(steps: int) -> int:
    return max(1, min(10, steps // 3))


def self_checks(args, modes, results, repeat) -> list[dict]:
    checks = []
    low, high = args.band
    # 1. ERC gate
    for mode in modes:
        if not is_erc(mode):
            continue
        rows, c = results[mode]["rows"], results[mode]["counters"]
        min_keep = min(r["actor/erc_keep_frac"] for r in rows)
        ok = (
            c["calls"] > 0
            and c["calls_without_check"] == 0
            and c["out_of_band"] > 0
            and c["out_of_band_with_grad"] == 0
            and c["in_band_with_grad"] > 0
            and min_keep < 1.0
        )
        checks.append({
            "name": f"erc_gate[{mode}]",
            "ok": ok,
            "detail": (
                f"{c['calls']} loss calls spied; {c['out_of_band']} response tokens had entropy ratio outside "
                f"({low}, {high}), {c['out_of_band_with_grad']} of them got a non-zero d loss/d log_prob "
                f"(max |grad| {c['max_abs_grad_out_of_band']:.3g}); {c['in_band_with_grad']} of {c['in_band']} "
                f"in-band tokens got gradient; lowest logged erc_keep_frac {min_keep:.3f}"
            ),
        })
    # (contrast, not a pass/fail check) what the baselines let through
    # 2. reward rises in the baseline
    base = next((m for m in modes if not is_erc(m)), modes[0])
    rows = results[base]["rows"]
    k = _window(len(rows))
    first, last = _mean(r["critic/score/mean"] for r in rows[:k]), _mean(r["critic/score/mean"] for r in rows[-k:])
    checks.append({
        "name": f"reward_rises[{base}]",
        "ok": len(rows) >= 2 and last > first,
        "detail": f"mean critic/score/mean over the first {k} steps {first:.3f} -> last {k} steps {last:.3f}",
    })
    # 3a. same seed, same warm start: step-0 rollout metrics coincide across runs
    keys0 = ("critic/score/mean", "response_length/mean", "actor/entropy")
    step0 = {m: tuple(results[m]["rows"][0][key] for key in keys0) for m in modes if results[m]["rows"]}
    same0 = len(set(step0.values())) == 1
    checks.append({
        "name": "same_seed_step0",
        "ok": same0 and len(step0) == len(modes),
        "detail": (
            f"step-0 {', '.join(keys0)} (rollout and old-log-prob pass, before any update) "
            + ("identical in all runs: " + ", ".join(f"{v:.6g}" for v in next(iter(step0.values())))
               if same0 else f"differ: {step0}")
        ),
    })
    # 3b. a repeat of the first K steps gives bit-identical metrics
    if repeat is not None:
        mode, rep_rows = repeat
        orig = results[mode]["rows"][: len(rep_rows)]
        diffs = []
        compared = 0
        for a, b in zip(orig, rep_rows):
            for key in a:
                if key in ("run",) or key.startswith(_NONDETERMINISTIC_PREFIXES):
                    continue
                compared += 1
                va, vb = a[key], b.get(key)
                if not (va == vb or (isinstance(va, float) and isinstance(vb, float) and math.isnan(va) and math.isnan(vb))):
                    diffs.append(f"step {a['step']} {key}: {va!r} != {vb!r}")
        checks.append({
            "name": f"same_seed_repeat[{mode}]",
            "ok": not diffs and len(rep_rows) == len(orig) and compared > 0,
            "detail": (
                f"re-ran the first {len(rep_rows)} steps of {mode} from the warm start with a fresh worker: "
                + (f"all {compared} logged values (timings excluded) bit-identical" if not diffs
                   else f"{len(diffs)} differ, e.g. {diffs[:3]}")
            ),
        })
    return checks


PLOTS = (
    ("critic/score/mean", "reward (exact match, mean)"),
    ("actor/entropy", "entropy (old-log-prob pass, token mean)"),
    ("actor/erc_keep_frac", "ERC keep fraction (monitor for baselines)"),
    ("actor/grad_norm", "gradient norm (before clip)"),
)


def plot(path: Path, modes, results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex=True)
    for ax, (key, title) in zip(axes.flat, PLOTS):
        for mode in modes:
            rows = results[mode]["rows"]
            ax.plot([r["step"] for r in rows], [r.get(key, float("nan")) for r in rows], label=mode, lw=1.4)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("RL step")
    axes[0, 0].legend(fontsize=9)
    fig.suptitle("erc-verl demo: tiny Qwen2, GRPO on CPU through verl's engine actor", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def summary_table(args, modes, results) -> str:
    k = _window(args.steps)
    head = (
        f"| run | clip low/high | reward first {k} steps | reward last {k} steps | greedy acc start -> end "
        "| entropy first -> last | mean ERC keep frac | min ERC keep frac | mean pg_clipfrac | max grad_norm "
        "| out-of-band tokens with gradient | wall s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for mode in modes:
        rows, c, info = results[mode]["rows"], results[mode]["counters"], results[mode]["info"]
        s = loss_settings(mode, args.band)
        get = lambda key, rs=rows: [r.get(key) for r in rs]  # noqa: E731
        lines.append(
            f"| {mode}{' (ERC)' if is_erc(mode) else ''} | {s['clip_ratio_low']}/{s['clip_ratio_high']} "
            f"| {_mean(get('critic/score/mean')[:k]):.3f} | {_mean(get('critic/score/mean')[-k:]):.3f} "
            f"| {info.get('greedy_acc_start', float('nan')):.3f} -> {info.get('greedy_acc_end', float('nan')):.3f} "
            f"| {rows[0]['actor/entropy']:.3f} -> {rows[-1]['actor/entropy']:.3f} "
            f"| {_mean(get('actor/erc_keep_frac')):.3f} | {min(get('actor/erc_keep_frac')):.3f} "
            f"| {_mean(get('actor/pg_clipfrac')):.4f} | {max(get('actor/grad_norm')):.3f} "
            f"| {c['out_of_band_with_grad']} of {c['out_of_band']} | {info['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def write_summary(path: Path, args, modes, results, checks, warm, total_s) -> str:
    n_batch = args.prompts_per_step * args.responses_per_prompt
    text = [
        "# erc-verl demo summary",
        "",
        f"Task `{args.task}` (operands 0..{args.max_operand}), tiny Qwen2 (hidden {args.hidden_size}, "
        f"{args.layers} layers), warm-up {args.sft_steps} SFT steps (final loss {warm['sft_final_loss']:.3f}). "
        f"{args.steps} GRPO steps per run: {args.prompts_per_step} prompts x {args.responses_per_prompt} responses "
        f"at temperature {args.temperature}, {args.updates_per_batch} mini-batches of "
        f"{n_batch // args.updates_per_batch} sequences per batch (all but the first off-policy), "
        f"lr {args.lr}, seed {args.seed}, ERC band ({args.band[0]}, {args.band[1]}). Reward: 1 for an exact "
        "answer followed by eos, else 0 (so `critic/score/mean` is the sampled accuracy). Greedy accuracy on "
        f"{results[modes[0]]['info'].get('n_eval', 0)} fixed held-out problems. Baselines run with "
        "`entropy_ratio_monitor` on: their keep fraction is what ERC *would* keep; their gradient is untouched.",
        "",
        summary_table(args, modes, results),
        "",
        "## Self-checks",
        "",
    ]
    for c in checks:
        text.append(f"- **{'PASS' if c['ok'] else 'FAIL'}** `{c['name']}`: {c['detail']}")
    text += ["", f"Total wall time {total_s:.0f} s (warm-up {warm['sft_s']:.0f} s).", ""]
    path.write_text("\n".join(text))
    return "\n".join(text)


# ----------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------


def _validate(args) -> list[str]:
    modes = [m.strip() for m in args.loss_modes.split(",") if m.strip()]
    if not modes:
        raise SystemExit("--loss-modes: give at least one loss mode")
    for m in modes:
        loss_settings(m, args.band)
    if len(set(modes)) != len(modes):
        raise SystemExit("--loss-modes: a mode is listed twice")
    batch = args.prompts_per_step * args.responses_per_prompt
    if args.steps < 1 or args.updates_per_batch < 1 or batch % args.updates_per_batch:
        raise SystemExit(
            f"--updates-per-batch {args.updates_per_batch} must divide prompts x responses = {batch}"
        )
    mini = batch // args.updates_per_batch
    if mini % min(args.micro_batch_size, mini):
        raise SystemExit(f"--micro-batch-size {args.micro_batch_size} must divide the mini-batch ({mini} sequences)")
    if args.responses_per_prompt < 2:
        raise SystemExit("--responses-per-prompt must be >= 2 (GRPO compares responses to the same prompt)")
    if not 0 < args.band[0] < 1 < args.band[1]:
        raise SystemExit("--band LOW HIGH needs 0 < LOW < 1 < HIGH")
    return modes


def main(args) -> int:
    t_start = time.time()
    modes = _validate(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    import torch

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    from erc_verl import engine_cpu  # noqa: F401  (sets VERL_PLATFORM=cpu before verl resolves it)
    import erc_verl  # noqa: F401  (registers the loss modes and the entropy plumbing)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    model_dir = out / "warm_start"
    log(f"[demo] building a tiny Qwen2 + char tokenizer in {model_dir} and warming it up on '{args.task}'")
    warm = warm_start(args, model_dir, log)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    eval_rng = random.Random(args.seed + 7)
    eval_problems = [make_problem(args.task, eval_rng, args.max_operand) for _ in range(200)]

    results = {}
    metrics_path = out / "metrics.jsonl"
    with metrics_path.open("w") as sink:
        for mode in modes:
            log(f"[demo] run {mode}: {args.steps} steps")
            rows, counters, info = run_one(args, mode, str(model_dir), tokenizer, args.steps, log, eval_problems, sink)
            info["n_eval"] = len(eval_problems)
            results[mode] = {"rows": rows, "counters": counters, "info": info}

    repeat = None
    k = min(args.repeat_steps, args.steps)
    if k > 0:
        mode = next((m for m in modes if is_erc(m)), modes[0])
        log(f"[demo] determinism: re-running the first {k} steps of {mode} from scratch")
        with (out / "repeat.jsonl").open("w") as sink:
            rep_rows, _, _ = run_one(args, mode, str(model_dir), tokenizer, k, log, None, sink, tag=f"{mode}/repeat")
        repeat = (mode, rep_rows)

    checks = self_checks(args, modes, results, repeat)
    if not args.no_plot:
        plot(out / "demo.png", modes, results)
    total = time.time() - t_start
    text = write_summary(out / "summary.md", args, modes, results, checks, warm, total)
    (out / "checks.json").write_text(json.dumps(checks, indent=2))
    log("")
    log(text)
    log(f"[demo] metrics: {metrics_path}")
    if not args.no_plot:
        log(f"[demo] figure:  {out / 'demo.png'}")
    log(f"[demo] summary: {out / 'summary.md'}")
    failed = [c["name"] for c in checks if not c["ok"]]
    log(f"[demo] self-checks: {'all passed' if not failed else 'FAILED: ' + ', '.join(failed)}")
    if failed and args.strict:
        return 1
    return 0


def demo_main(args) -> int:
    return main(args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="erc-verl demo")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
