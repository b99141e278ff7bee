"""The cluster layouts give the one-worker result: data parallel, Ulysses, and both, on CPU.

verl's engine TrainingWorker runs in 1, 2 or 4 processes over gloo (tests/harness/layouts.py)
with the same rollout, the same mini-batches and the same micro-batches in every layout. One
old-log-prob pass and one update of `dapo_erc` and `gppo_erc`, with the authors' positive-sample
NLL on, 2 mini-batches of 4 micro-batches each, temperatures 1.0 and 0.7, the V1 trainer's
nested batch and the older trainer's padded one. Ulysses runs through erc_verl's sdpa wrapper
(erc_verl/cpu/ulysses.py): without it each rank would attend over its own shard only.

What the layouts must agree on, and how closely. The gradient at each optimizer step (before
clipping) and the parameter change of the update (SGD in every case, so the change is linear
in the gradients; Adam's first step is about lr * sign(g), which turns float noise on a near-zero
gradient entry into a full step whose sign depends on the CPU's kernels). Each gradient entry is
a float32 sum over the mini-batch's tokens, and a layout adds the same terms in another order:
per-rank partial sums reduced across ranks, Ulysses' all-to-all, other matrix shapes and so
other kernel blockings. That moves an entry by a few float32 roundings (eps = 1.2e-7) of the
terms summed, which are at most the tensor's largest entries: on the 2-core CPU machine the
largest difference of a gradient was 1.7e-6 of its tensor's largest entry (4e-5 for a parameter
change, which also carries the parameters' own rounding, PARAM_ULPS). A layout error moves it by
a large fraction: a rank that attends over its own shard only, one of a mini-batch's four
micro-batches lost or counted twice (about a quarter), a data-parallel scale off by a factor of
2. RTOL = 1e-3 of each tensor's largest entry sits over 500 times above the gradients' noise and
over 100 times below a lost micro-batch. A failure prints the largest difference, where it is
and both values.
"""

from __future__ import annotations

import pytest
import torch
from harness import training_worker as tw
from harness.layouts import run_layout, shard_order

pytestmark = pytest.mark.slow

ERC_TARGET = "erc_verl.ERCPolicyLossConfig"


def _loss(mode: str, **extra) -> dict:
    # A band narrower than the paper's, so that one update of this tiny model cuts some tokens
    # of the second mini-batch and the keep and clip fractions compared below are not all 1 and 0.
    return {
        "_target_": ERC_TARGET,
        "loss_mode": mode,
        "positive_nll_coeff": 0.1,
        "entropy_ratio_low": 0.999,
        "entropy_ratio_high": 1.001,
        **extra,
    }


# bsz 16, mini 8, micro 2: 2 mini-batches, 4 micro-batches each (2 per rank at data parallel 2).
CASES = [
    {"name": "dapo_erc-T1-nested", "policy_loss": _loss("dapo_erc"), "temperature": 1.0, "layout": "nested"},
    {"name": "dapo_erc-T0.7-padded", "policy_loss": _loss("dapo_erc"), "temperature": 0.7, "layout": "padded"},
    {"name": "gppo_erc-T0.7-nested", "policy_loss": _loss("gppo_erc"), "temperature": 0.7, "layout": "nested"},
    {"name": "gppo_erc-T1-padded", "policy_loss": _loss("gppo_erc"), "temperature": 1.0, "layout": "padded"},
    {
        "name": "dapo_erc-T1-nested-global",
        "policy_loss": _loss("dapo_erc", positive_nll_norm="global"),
        "temperature": 1.0,
        "layout": "nested",
    },
]
for _case in CASES:
    # SGD (see the module docstring); lr 1.0 moves the tiny model enough for the band to cut tokens
    # of the second mini-batch.
    _case.update(bsz=16, mini=8, micro=2, seed=3, extra_actor={"optim.optimizer": "SGD", "optim.lr": 1.0})
# The positive-sample NLL's two normalisations at another micro-batching and data-parallel size:
# data parallel 2 with one micro-batch of 4 per rank and mini-batch, against DP1's micro-batches of 2.
REGROUPED = [
    dict(case, micro=4) for case in CASES if case["name"] in ("dapo_erc-T1-nested", "dapo_erc-T1-nested-global")
]

EXACT = ("actor/erc_keep_frac", "actor/erc_clip_frac_low", "actor/erc_clip_frac_high")
RELATIVE = (
    "actor/entropy_ratio_mean",
    "actor/entropy_ratio_min",
    "actor/entropy_ratio_max",
    "actor/pg_loss",
    "actor/positive_nll",
)
LAYOUTS = {"DP2": (2, 1), "SP2": (1, 2), "DP2xSP2": (2, 2)}
# Largest difference allowed, relative to each tensor's largest entry (module docstring).
RTOL = 1e-3
# Parameters are float32: a parameter change is read as a difference of two parameters, so it
# carries their rounding, a unit in the last place of the parameter (2**-23 relative).
PARAM_ULPS = 4 * 2.0**-23


def largest_difference(reference: dict, other: dict, floor: dict | None = None) -> dict:
    """Over every tensor, the largest |other - reference| relative to that tensor's largest
    |reference| entry (plus `floor[name]`, an absolute floor), with where it is and both values
    (a tensor that is all zero, without a floor, must match exactly)."""
    worst = {"relative": 0.0, "where": None}
    for name, ref in reference.items():
        got = other[name]
        diff = (got.double() - ref.double()).abs()
        if diff.numel() == 0:
            continue
        flat = int(diff.argmax())
        scale = ref.abs().max().item() + (floor or {}).get(name, 0.0)
        value = diff.flatten()[flat].item()
        relative = value / scale if scale > 0 else (float("inf") if value > 0 else 0.0)
        if relative > worst["relative"] or worst["where"] is None:
            index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
            worst = {
                "relative": relative,
                "where": f"{name}{list(index)}",
                "difference": value,
                "scale": scale,
                "values": (ref.flatten()[flat].item(), got.flatten()[flat].item()),
            }
    return worst


def assert_agree(what: str, reference: dict, other: dict, rtol: float = RTOL, floor: dict | None = None) -> dict:
    worst = largest_difference(reference, other, floor)
    assert worst["relative"] <= rtol, (
        f"{what}: largest difference {worst['difference']:.3g} at {worst['where']} "
        f"(one worker {worst['values'][0]!r}, this layout {worst['values'][1]!r}) is {worst['relative']:.3g} of "
        f"that tensor's largest entry {worst['scale']:.3g}; allowed: {rtol:g}"
    )
    return worst


def update_of(case: dict) -> dict:
    """The parameter change of the case's update."""
    return {name: after - case["params_before"][name] for name, after in case["params"].items()}


def rounding_floor(case: dict) -> dict:
    """Per tensor, what reading the change as after - before can add: a few units in the last place
    of its largest parameter, over RTOL (so that RTOL x floor is that absolute amount)."""
    return {name: PARAM_ULPS * p.abs().max().item() / RTOL for name, p in case["params"].items()}


def assert_same_update(name: str, one: dict, other: dict) -> float:
    """Gradients at each optimizer step and the parameter change agree; returns the largest relative difference."""
    worst = [
        assert_agree(f"{name} gradient of optimizer step {k + 1}", g1, g2)
        for k, (g1, g2) in enumerate(zip(one["grads"], other["grads"], strict=True))
    ]
    change = assert_agree(f"{name} parameter change", update_of(one), update_of(other), floor=rounding_floor(one))
    grad = max(worst, key=lambda w: w["relative"])
    print(f"{name}: gradients {grad['relative']:.3g} ({grad['where']}), parameter change {change['relative']:.3g}")
    return grad["relative"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # 4 query heads and 2 kv heads: Ulysses 2 splits both; the wrapper repeats kv heads as needed.
    return tw.tiny_qwen2(tmp_path_factory.mktemp("layouts") / "model", vocab_size=128, seed=5)


@pytest.fixture(scope="module")
def results(model_dir):
    return {name: run_layout(dp, sp, CASES, model_dir) for name, (dp, sp) in {"DP1": (1, 1), **LAYOUTS}.items()}


@pytest.fixture(scope="module")
def regrouped(model_dir):
    return run_layout(2, 1, REGROUPED, model_dir)


def test_shards_deal_whole_micro_batches_of_each_mini_batch():
    shards = shard_order(16, 8, 2, 2)
    assert shards[0] == [0, 1, 2, 3, 8, 9, 10, 11]
    assert shards[1] == [4, 5, 6, 7, 12, 13, 14, 15]
    assert sorted(shards[0] + shards[1]) == list(range(16))
    with pytest.raises(ValueError, match="do not divide"):
        shard_order(16, 8, 4, 4)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_gives_the_one_worker_result(results, layout):
    for one, other in zip(results["DP1"], results[layout], strict=True):
        name = f"{layout}/{one['name']}"
        torch.testing.assert_close(other["old_log_probs"], one["old_log_probs"], rtol=0, atol=1e-6, msg=name)
        torch.testing.assert_close(other["entropy"], one["entropy"], rtol=0, atol=1e-6, msg=name)
        m1, m2 = one["metrics"], other["metrics"]
        for key in EXACT:
            # The same token counts; the ranks' partial fractions are summed in another order,
            # so allow the last bits of a float64 (one token more or less moves it by ~1e-3).
            assert abs(m2[key] - m1[key]) <= 1e-12, (name, key, m1[key], m2[key])
        for key in RELATIVE:
            assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-7), (name, key)
        assert len(other["grads"]) == len(one["grads"]) == 2  # one optimizer step per mini-batch
        assert_same_update(name, one, other)


def test_the_runs_are_informative(results):
    """The band cut some tokens and the NLL term was on, so the equalities above say something."""
    for case in results["DP1"]:
        metrics = case["metrics"]
        assert 0.0 < metrics["actor/erc_keep_frac"] < 1.0, case["name"]
        assert metrics["actor/positive_nll"] > 0.0, case["name"]


def test_global_nll_is_the_same_at_another_micro_batching_and_dp_size_and_micro_is_not(results, regrouped):
    one = {case["name"]: case for case in results["DP1"]}
    other = {case["name"]: case for case in regrouped}
    glob, glob2 = one["dapo_erc-T1-nested-global"], other["dapo_erc-T1-nested-global"]
    for key in ("actor/pg_loss", "actor/positive_nll"):
        assert glob2["metrics"][key] == pytest.approx(glob["metrics"][key], rel=1e-5, abs=1e-7), key
    assert_same_update("global, regrouped", glob, glob2)
    micro, micro2 = one["dapo_erc-T1-nested"], other["dapo_erc-T1-nested"]
    nll, nll2 = micro["metrics"]["actor/positive_nll"], micro2["metrics"]["actor/positive_nll"]
    assert abs(nll2 - nll) > 1e-3 * abs(nll), (nll, nll2)
    # micro's objective changed with the micro-batching: far beyond the layouts' noise
    assert largest_difference(micro["grads"][0], micro2["grads"][0])["relative"] > 100 * RTOL
