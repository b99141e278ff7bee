"""ERC updates through verl 0.9.1's engine TrainingWorker; saves what they produced to a .pt file.

usage: PYTHON engine_091.py MODEL_DIR PEAKED_MODEL_DIR OUT.pt
       PYTHON engine_091.py make-models MODEL_DIR PEAKED_MODEL_DIR

tests/test_patches.py runs this twice on the same tiny models and compares the two files:
- with the stock venv (.venv): erc_verl's runtime plumbing feeds the entropies;
- with .venv-patched-0.9.1: verl carries patches/verl-0.9.1 and erc_verl installs nothing.

Each case is the V1 trainer's two actor calls (old-log-prob pass with entropy, then
`train_mini_batch`) through harness.training_worker. On the patched side the update gets the
non-tensor flags that the PATCHED trainers send: they are taken from the real
`PPOTrainer._update_actor` (V1) and `RayPPOTrainer._update_actor` (v0), called on a stub that
records what would go to the worker. On the stock side the flags are stock verl's.
"""

import sys
import types
from pathlib import Path

# The test harness lives in tests/, beside this folder; it is not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from harness import training_worker as engine_cpu  # first: fixes verl's platform to the CPU one

import erc_verl  # noqa: E402

ERC_TARGET = "erc_verl.ERCPolicyLossConfig"
BSZ, PROMPT_LEN, RESPONSE_LEN = 8, 6, 12
# name -> (model, policy_loss, actor options)
CASES = {
    "dapo_erc": ("peaked", {"loss_mode": "dapo_erc"}, {"lr": 1e-2, "ppo_mini_batch_size": 2}),
    "gppo_erc": ("peaked", {"loss_mode": "gppo_erc", "gppo_beta_low": 1.0}, {"lr": 1e-2, "ppo_mini_batch_size": 2}),
    # loss_mode=erc over a named base: the same update as gppo_erc
    "erc_over_gppo": (
        "peaked",
        {"loss_mode": "erc", "erc_base_loss_mode": "gppo", "gppo_beta_low": 1.0},
        {"lr": 1e-2, "ppo_mini_batch_size": 2},
    ),
    "dapo_erc_entropy_bonus": (
        "peaked",
        {"loss_mode": "dapo_erc"},
        {"lr": 1e-2, "ppo_mini_batch_size": 4, "entropy_coeff": 0.01},
    ),
    "vanilla_monitor": (
        "peaked",
        {"loss_mode": "vanilla", "entropy_ratio_monitor": True},
        {"lr": 1e-2, "ppo_mini_batch_size": 2},
    ),
    "vanilla": ("base", {"loss_mode": "vanilla"}, {"lr": 1e-3, "ppo_mini_batch_size": 4}),
    # the authors' positive-sample NLL term, on a baseline and under ERC's gate
    "vanilla_positive_nll": (
        "peaked",
        {"loss_mode": "vanilla", "positive_nll_coeff": 0.1},
        {"lr": 1e-2, "ppo_mini_batch_size": 4},
    ),
    "dapo_erc_positive_nll": (
        "peaked",
        {"loss_mode": "dapo_erc", "positive_nll_coeff": 0.1},
        {"lr": 1e-2, "ppo_mini_batch_size": 2},
    ),
}
# Responses 0, 3, 4 and 5 are correct (summed reward 1.0); the V1 trainer's update batch carries the
# rewards as `rm_scores` (score on the last response token).
CORRECT = (0, 3, 4, 5)
# Host-dependent numbers, not results.
VOLATILE = ("perf/", "timing", "mfu")


def rollout():
    return engine_cpu.random_rollout(BSZ, PROMPT_LEN, RESPONSE_LEN)


def patched_trainer_flags(cfg, batch) -> dict:
    """The update flags the patched V1 and v0 trainers send (they must agree)."""
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer
    from verl.utils import tensordict_utils as tu

    keys = ("calculate_entropy", "policy_loss_entropy")
    seen = {}

    class V1WorkerGroup:
        def update_actor(self, kv_batch):
            seen["v1"] = {k: kv_batch.extra_info[k] for k in keys}
            return {"metrics": {"mfu": 0.0}}

    class V0WorkerGroup:
        def update_actor(self, batch_td):
            seen["v0"] = {k: tu.get_non_tensor_data(batch_td, k, None) for k in keys}
            return tu.get_tensordict(tensor_dict={}, non_tensor_dict={"metrics": {"mfu": 0.0}})

    stub = types.SimpleNamespace(config=cfg, actor_rollout_wg=V1WorkerGroup())
    PPOTrainer._update_actor(stub, types.SimpleNamespace(extra_info={}), {})
    stub.actor_rollout_wg = V0WorkerGroup()
    RayPPOTrainer._update_actor(stub, DataProto(batch=batch.clone(), meta_info={}))
    if seen["v0"] != seen["v1"]:
        raise AssertionError(f"patched trainers disagree: {seen}")
    return seen["v1"]


def patched_old_pass_flags(cfg, batch) -> dict:
    """The flags the patched V1 and v0 trainers send with the old-log-prob pass (they must agree)."""
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer
    from verl.utils import tensordict_utils as tu

    keys = ("calculate_entropy", "policy_loss_entropy")
    seen = {}

    class Sent(Exception):
        """Stops the trainer once it has handed the batch to the worker group."""

    class V1WorkerGroup:
        def compute_log_prob(self, kv_batch):
            seen["v1"] = {k: kv_batch.extra_info[k] for k in keys}
            raise Sent

    class V0WorkerGroup:
        def compute_log_prob(self, batch_td):
            seen["v0"] = {k: tu.get_non_tensor_data(batch_td, k, None) for k in keys}
            raise Sent

    stub = types.SimpleNamespace(config=cfg, actor_rollout_wg=V1WorkerGroup())
    for call, group in (
        (lambda: PPOTrainer._compute_old_log_prob(stub, types.SimpleNamespace(extra_info={}), {}), V1WorkerGroup()),
        (
            lambda: RayPPOTrainer._compute_old_log_prob(stub, DataProto(batch=batch.clone(), meta_info={})),
            V0WorkerGroup(),
        ),
    ):
        stub.actor_rollout_wg = group
        try:
            call()
        except Sent:
            pass
    if seen["v0"] != seen["v1"]:
        raise AssertionError(f"patched trainers disagree on the old-log-prob pass: {seen}")
    return seen["v1"]


def rm_scores(batch):
    mask = batch["response_mask"]
    scores = torch.zeros(mask.shape, dtype=torch.float32)
    for i, length in enumerate(mask.sum(dim=1).tolist()):
        scores[i, int(length) - 1] = 1.0 if i in CORRECT else -1.0
    return scores


def run_case(model_dir, policy_loss, options, batch, advantages) -> dict:
    settings = dict(
        policy_loss={"_target_": ERC_TARGET, **policy_loss},
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        clip_ratio_c=10.0,
        micro_batch_size=2,
        **options,
    )
    cfg = engine_cpu.actor_config_dict(model_dir, **settings)
    worker = engine_cpu.build_actor_worker(model_dir, **settings)
    flags, old_flags = {}, {}
    if erc_verl.PLUMBING == "patched":
        from verl.utils import tensordict_utils as tu

        flags = patched_trainer_flags(cfg, batch)
        old_flags = patched_old_pass_flags(cfg, batch)
        train_mini_batch, infer_batch = worker.train_mini_batch, worker.infer_batch

        def train_with_trainer_flags(data):
            tu.assign_non_tensor(data, **flags)
            return train_mini_batch(data)

        def infer_with_trainer_flags(data, *args, **kwargs):
            tu.assign_non_tensor(data, **old_flags)
            return infer_batch(data, *args, **kwargs)

        worker.train_mini_batch = train_with_trainer_flags
        worker.infer_batch = infer_with_trainer_flags

    old_log_probs, old_entropy = engine_cpu.compute_old_log_prob(worker, batch, temperature=1.0)

    # In the update, whether each entropy is computed with autograd on (one entry per micro-batch
    # and function): erc_verl's (the gate's, on both paths) and verl's own (entropy bonus).
    import erc_verl.entropy as erc_entropy

    grad_modes, verl_grad_modes = [], []
    erc_fn, verl_fn = erc_entropy.entropy_from_logits, worker.engine.compute_entropy_from_logits

    def recording_erc(*args, **kwargs):
        grad_modes.append(torch.is_grad_enabled())
        return erc_fn(*args, **kwargs)

    def recording_verl(*args, **kwargs):
        verl_grad_modes.append(torch.is_grad_enabled())
        return verl_fn(*args, **kwargs)

    erc_entropy.entropy_from_logits = recording_erc
    worker.engine.compute_entropy_from_logits = recording_verl
    try:
        metrics = engine_cpu.update_actor(
            worker,
            batch,
            old_log_probs,
            old_entropy,
            advantages,
            temperature=1.0,
            calculate_entropy=None,
            extra={"rm_scores": rm_scores(batch)},
        )
    finally:
        erc_entropy.entropy_from_logits = erc_fn
    metrics = {k: float(v) for k, v in metrics.items() if not any(s in k for s in VOLATILE)}
    return {
        "metrics": metrics,
        "params": engine_cpu.get_params(worker),
        "entropy_grad_modes": grad_modes,
        "verl_entropy_grad_modes": verl_grad_modes,
        "trainer_flags": flags,
        "old_pass_flags": old_flags,
        "old_entropy": old_entropy,
    }


def main(model_dir, peaked_dir, out):
    batch, advantages = rollout()
    models = {"base": model_dir, "peaked": peaked_dir}
    from verl.trainer.ppo import core_algos

    results = {"plumbing": erc_verl.PLUMBING, "cases": {}}
    # verl's stock losses stay the very functions verl defines, on both paths
    results["stock_losses_untouched"] = (
        core_algos.POLICY_LOSS_REGISTRY["vanilla"] is core_algos.compute_policy_loss_vanilla
    )
    for name, (model, policy_loss, options) in CASES.items():
        try:
            results["cases"][name] = run_case(models[model], policy_loss, options, batch, advantages)
        except Exception as err:  # recorded, so one failing case does not hide the others
            results["cases"][name] = {"error": f"{type(err).__name__}: {err}"}
        print(f"[engine_091 {erc_verl.PLUMBING}] {name}: {results['cases'][name]}", flush=True)
    torch.save(results, out)


def make_models(model_dir, peaked_dir):
    """The tiny Qwen2 (built from a config) and a copy with a sharper output head: a random init
    is near-uniform over the vocabulary, where entropy barely moves."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    engine_cpu.tiny_qwen2(model_dir, vocab_size=512, hidden_size=64, layers=2)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    model.save_pretrained(peaked_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(peaked_dir)


if __name__ == "__main__":
    if sys.argv[1] == "make-models":
        make_models(*sys.argv[2:4])
    else:
        main(*sys.argv[1:4])
