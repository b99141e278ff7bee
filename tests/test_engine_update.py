"""ERC through verl 0.9.1's real actor update: engine TrainingWorker (FSDP2 over gloo) on CPU.

Each test does what the V1 trainer does: the old-log-prob pass with entropy, then
`train_mini_batch` on a batch carrying `old_log_probs`, `advantages` and the OLD entropy as
`entropy`, with the loss `partial(ppo_loss, config=actor_config)` bound as init_model binds it.
"""

import math

import pytest
import torch
from harness import training_worker as engine_cpu  # sets VERL_PLATFORM=cpu before verl resolves its platform

from erc_verl.metrics import METRIC_NAMES

BSZ, PROMPT_LEN, RESPONSE_LEN = 8, 6, 12
ERC_TARGET = "erc_verl.ERCPolicyLossConfig"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return engine_cpu.tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2"), vocab_size=512, hidden_size=64, layers=2)


@pytest.fixture(scope="module")
def peaked_model_dir(model_dir, tmp_path_factory):
    return engine_cpu.sharpened_qwen2(model_dir, tmp_path_factory.mktemp("tiny_qwen2_peaked"), 30.0)


@pytest.fixture(scope="module")
def very_peaked_model_dir(model_dir, tmp_path_factory):
    # Many positions with entropy < 1e-3, as in a trained LLM's confident tokens.
    return engine_cpu.sharpened_qwen2(model_dir, tmp_path_factory.mktemp("tiny_qwen2_very_peaked"), 400.0)


@pytest.fixture(scope="module")
def rollout():
    return engine_cpu.random_rollout(BSZ, PROMPT_LEN, RESPONSE_LEN)


def build(model_dir, loss_mode, lr=1e-3, mini=BSZ, engine_kwargs=None, **policy_loss):
    return engine_cpu.build_actor_worker(
        model_dir,
        **(engine_kwargs or {}),
        policy_loss={"_target_": ERC_TARGET, "loss_mode": loss_mode, **policy_loss},
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        clip_ratio_c=10.0,
        lr=lr,
        micro_batch_size=2,
        ppo_mini_batch_size=mini,
    )


def old_pass_and_update(worker, rollout, entropy_scale=1.0, mini=BSZ, layout="nested"):
    batch, advantages = rollout
    old_log_probs, old_entropy = engine_cpu.compute_old_log_prob(worker, batch, temperature=1.0, layout=layout)
    before = engine_cpu.get_params(worker)
    metrics = engine_cpu.update_actor(
        worker,
        batch,
        old_log_probs,
        None if old_entropy is None else old_entropy * entropy_scale,
        advantages,
        ppo_mini_batch_size=mini,
        temperature=1.0,
        layout=layout,
    )
    return before, engine_cpu.get_params(worker), metrics


def max_change(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


LOW, HIGH = 0.95, 1.05


def update_and_replay(model_dir, rollout, mode, mini, lr=1e-3, **policy_loss):
    """The ERC metrics verl logs for one update of several mini-batches, and the same fractions
    computed independently.

    Worker A runs the update as the trainer does (one call, BSZ / mini mini-batches, in order).
    Worker B, built the same way, replays it one mini-batch at a time and, before each optimizer
    step, runs a fresh forward of its current policy: H_cur of that mini-batch's rows, the
    entropy the update's own forward sees, against H_old from the old-log-prob pass. The replay
    must end on A's parameters (so its entropies are the ones A's update saw). Returns A's
    per-mini-batch raw metrics, A's reduced metrics, and per mini-batch the replay's token
    ratios rho.
    """
    batch, advantages = rollout
    a, b = (build(model_dir, mode, lr=lr, mini=mini, **policy_loss) for _ in range(2))
    old_log_probs, old_entropy = engine_cpu.compute_old_log_prob(a, batch, temperature=1.0)
    kwargs = dict(ppo_mini_batch_size=mini, temperature=1.0, shuffle=False)
    raw = engine_cpu.update_actor(a, batch, old_log_probs, old_entropy, advantages, raw=True, **kwargs)
    mask = batch["response_mask"].bool()
    rhos = []
    for start in range(0, BSZ, mini):
        rows = slice(start, start + mini)
        _, current = engine_cpu.compute_old_log_prob(b, batch, temperature=1.0)
        rhos.append(((current[rows] + 1e-8) / (old_entropy[rows] + 1e-8))[mask[rows]].double())
        engine_cpu.update_actor(b, batch[rows], old_log_probs[rows], old_entropy[rows], advantages[rows], **kwargs)
    assert max_change(engine_cpu.get_params(a), engine_cpu.get_params(b)) == 0.0
    return raw, rhos


def assert_logged_fractions_are_the_replays(raw, rhos):
    """Per mini-batch, each logged fraction is the replay's, up to tokens within 1e-5 of a band
    edge (the fresh forward and the update's may round differently); the step's logged value is
    the mean over mini-batches."""
    from verl.utils.metric import reduce_metrics

    assert len(raw["actor/erc_keep_frac"]) == len(rhos)
    for k, rho in enumerate(rhos):
        slack = int(((rho - LOW).abs() < 1e-5).sum() + ((rho - HIGH).abs() < 1e-5).sum()) / rho.numel()
        expected = {
            "actor/erc_keep_frac": ((rho > LOW) & (rho < HIGH)).double().mean().item(),
            "actor/erc_clip_frac_low": (rho <= LOW).double().mean().item(),
            "actor/erc_clip_frac_high": (rho >= HIGH).double().mean().item(),
        }
        for key, value in expected.items():
            assert abs(raw[key][k] - value) <= slack + 1e-9, (k, key, raw[key][k], value)
        assert raw["actor/entropy_ratio_mean"][k] == pytest.approx(rho.mean().item(), rel=1e-5)
        assert raw["actor/entropy_ratio_min"][k] == pytest.approx(rho.min().item(), rel=1e-5)
        assert raw["actor/entropy_ratio_max"][k] == pytest.approx(rho.max().item(), rel=1e-5)
    reduced = reduce_metrics({key: list(raw[key]) for key in METRIC_NAMES})
    assert reduced["actor/erc_keep_frac"] == pytest.approx(sum(raw["actor/erc_keep_frac"]) / len(rhos))


@pytest.mark.parametrize("layout", ["nested", "padded"])
def test_open_band_updates_exactly_like_vanilla(model_dir, rollout, layout):
    # nested: the V1 trainer's batch layout; padded: the v0 trainer's (ray_trainer.py) layout.
    _, vanilla_after, vanilla_metrics = old_pass_and_update(build(model_dir, "vanilla"), rollout, layout=layout)
    before, erc_after, erc_metrics = old_pass_and_update(
        build(model_dir, "dapo_erc", entropy_ratio_low=0.5, entropy_ratio_high=2.0), rollout, layout=layout
    )
    assert max_change(before, erc_after) > 0
    for name in vanilla_after:
        torch.testing.assert_close(erc_after[name], vanilla_after[name], rtol=0, atol=0, msg=name)
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/pg_clipfrac", "actor/ppo_kl"):
        assert erc_metrics[key] == pytest.approx(vanilla_metrics[key], rel=1e-6, abs=1e-9), key
    assert erc_metrics["actor/erc_keep_frac"] == 1.0


def test_band_that_excludes_every_token_gives_zero_gradient(model_dir, rollout):
    # Old entropies doubled: every ratio is about 0.5, outside the paper's band.
    before, after, metrics = old_pass_and_update(build(model_dir, "dapo_erc"), rollout, entropy_scale=2.0)
    assert metrics["actor/grad_norm"] == 0.0
    assert max_change(before, after) == 0.0
    assert metrics["actor/erc_keep_frac"] == 0.0
    assert metrics["actor/erc_clip_frac_low"] == 1.0
    assert metrics["actor/pg_loss"] != 0.0  # the loss value is still reported, only gradients stop


@pytest.mark.parametrize("mode", ["dapo_erc", "gppo_erc"])
def test_papers_band_cuts_some_off_policy_tokens(peaked_model_dir, rollout, mode):
    # Four optimizer steps per batch: the first mini-batch is on-policy (ratio 1), the
    # later ones see a policy that has moved, as in the paper's 8-steps-per-batch setting.
    raw, rhos = update_and_replay(peaked_model_dir, rollout, mode, mini=2, lr=1e-2)
    for key in METRIC_NAMES:
        assert len(raw[key]) == len(rhos) and all(math.isfinite(v) for v in raw[key]), key
    assert_logged_fractions_are_the_replays(raw, rhos)
    assert raw["actor/erc_keep_frac"][0] == 1.0  # on-policy: H_cur is H_old
    assert raw["actor/erc_keep_frac_first_mb"] == [1.0]  # logged as its own metric, once per step
    later = torch.cat(rhos[1:])
    assert 0 < int(((later > LOW) & (later < HIGH)).sum()) < later.numel()  # the band cuts some, not all


@pytest.mark.parametrize("entropy_coeff", [0.0, 0.01])
def test_gate_entropy_never_has_a_graph_and_the_bonus_keeps_verls(model_dir, rollout, monkeypatch, entropy_coeff):
    from verl.trainer.ppo import core_algos

    seen = []
    real = core_algos.POLICY_LOSS_REGISTRY["dapo_erc"]

    def spy(*args, entropy=None, old_entropy=None, **kwargs):
        seen.append((entropy.requires_grad, entropy.grad_fn is not None, old_entropy.requires_grad))
        return real(*args, entropy=entropy, old_entropy=old_entropy, **kwargs)

    monkeypatch.setitem(core_algos.POLICY_LOSS_REGISTRY, "dapo_erc", spy)
    worker = engine_cpu.build_actor_worker(
        model_dir,
        policy_loss={"_target_": ERC_TARGET, "loss_mode": "dapo_erc"},
        entropy_coeff=entropy_coeff,
        micro_batch_size=2,
        ppo_mini_batch_size=BSZ,
    )
    metrics = old_pass_and_update(worker, rollout)[2]
    assert len(seen) == BSZ // 2  # one call per micro-batch
    assert all(s == (False, False, False) for s in seen), seen
    # With an entropy bonus verl still computes its own in-graph entropy for it.
    assert ("actor/entropy_loss" in metrics) == (entropy_coeff != 0.0), sorted(metrics)


def test_missing_old_entropy_stops_the_update_naming_the_fix(model_dir, rollout):
    batch, advantages = rollout
    worker = build(model_dir, "dapo_erc")
    old_log_probs, _ = engine_cpu.compute_old_log_prob(worker, batch, temperature=1.0)
    before = engine_cpu.get_params(worker)
    with pytest.raises(ValueError, match="old-policy entropy") as err:
        engine_cpu.update_actor(worker, batch, old_log_probs, None, advantages, temperature=1.0)
    assert "bypass_mode" in str(err.value) and "use_v1" in str(err.value)
    assert max_change(before, engine_cpu.get_params(worker)) == 0.0


def test_monitor_on_vanilla_logs_ratio_metrics_and_trains_like_vanilla(model_dir, rollout):
    _, plain_after, _ = old_pass_and_update(build(model_dir, "vanilla", mini=2), rollout, mini=2)
    _, mon_after, metrics = old_pass_and_update(
        build(model_dir, "vanilla", mini=2, entropy_ratio_monitor=True), rollout, mini=2
    )
    for name in plain_after:
        torch.testing.assert_close(mon_after[name], plain_after[name], rtol=0, atol=0, msg=name)
    assert set(METRIC_NAMES) <= set(metrics)


def test_monitor_keep_fraction_is_computed_from_each_mini_batchs_entropies(peaked_model_dir, rollout):
    # The monitor reports what ERC would keep: per mini-batch, from the entropies of the policy
    # that mini-batch's update sees, averaged over the step's mini-batches.
    raw, rhos = update_and_replay(peaked_model_dir, rollout, "vanilla", mini=2, lr=1e-2, entropy_ratio_monitor=True)
    assert_logged_fractions_are_the_replays(raw, rhos)
    assert min(raw["actor/erc_keep_frac"]) < 1.0  # the policy moved: the comparison is not 1 == 1
    assert raw["actor/erc_keep_frac_first_mb"] == [raw["actor/erc_keep_frac"][0]] == [1.0]


@pytest.mark.parametrize(
    "mode, engine_kwargs",
    [
        ("dapo_erc", {}),
        ("gppo_erc", {}),
        # verl's padded (no remove-padding) forward, and verl's compiled entropy configured:
        # both passes must still use erc_verl's kernel.
        ("dapo_erc", {"use_remove_padding": False}),
        ("dapo_erc", {"use_torch_compile": True}),
    ],
    ids=["dapo_erc", "gppo_erc", "padded_forward", "torch_compile_configured"],
)
def test_on_policy_mini_batch_keeps_every_token(very_peaked_model_dir, rollout, mode, engine_kwargs):
    # One mini-batch: the update sees exactly the old-log-prob pass's policy and micro-batches,
    # so every ratio must be exactly 1, including peaked, near-zero-entropy positions where two
    # different float32 entropy formulas would disagree by more than the 5% band.
    batch, advantages = rollout
    worker = build(very_peaked_model_dir, mode, mini=BSZ, engine_kwargs=engine_kwargs)
    old_log_probs, old_entropy = engine_cpu.compute_old_log_prob(worker, batch, temperature=1.0)
    assert old_entropy[batch["response_mask"].bool()].min() < 1e-3  # the case that matters is present
    metrics = engine_cpu.update_actor(
        worker, batch, old_log_probs, old_entropy, advantages, ppo_mini_batch_size=BSZ, temperature=1.0
    )
    assert metrics["actor/erc_keep_frac"] == 1.0
    assert metrics["actor/entropy_ratio_min"] == metrics["actor/entropy_ratio_max"] == 1.0
