"""ERC's settings: declared and defaulted once, validated when built, refused the same way everywhere."""

import dataclasses
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from erc_verl import ERCPolicyLossConfig
from erc_verl.settings import DEFAULTS, ERC_FIELDS, RESOLVER, Algorithm, ERCSettings, Tooling, band_problem, settings

ROOT = Path(__file__).resolve().parents[1]
SNIPPET = ROOT / "erc_verl" / "conf" / "policy_loss" / "erc.yaml"
A = "actor_rollout_ref.actor.policy_loss"


def test_the_config_class_declares_exactly_the_settings_fields_with_their_defaults():
    from verl.workers.config import PolicyLossConfig

    verls = {f.name for f in dataclasses.fields(PolicyLossConfig)}
    ours = {f.name: f for f in dataclasses.fields(ERCPolicyLossConfig) if f.name not in verls}
    assert set(ours) == {f.name for f in ERC_FIELDS}
    built = ERCPolicyLossConfig()
    for name in ours:
        value = getattr(built, name)
        assert (tuple(value) if isinstance(value, list) else value) == DEFAULTS[name], name


def test_the_snippet_lists_every_field_as_its_default():
    raw = OmegaConf.load(SNIPPET)
    erc_keys = set(raw) - {"_target_", "loss_mode"}
    assert erc_keys == {f.name for f in ERC_FIELDS}
    assert all(raw._get_node(k)._value() == f"${{{RESOLVER}:{k}}}" for k in erc_keys)
    resolved = OmegaConf.to_container(raw, resolve=True)
    assert {k: resolved[k] for k in erc_keys} == {
        k: list(v) if isinstance(v, tuple) else v for k, v in DEFAULTS.items() if k in erc_keys
    }


def test_algorithm_and_tooling_are_separate_groups():
    algorithm = {f.name for f in dataclasses.fields(Algorithm)}
    tooling = {f.name for f in dataclasses.fields(Tooling)}
    assert not algorithm & tooling
    assert {"entropy_ratio_low", "entropy_ratio_high", "positive_nll_coeff", "erc_base_loss_mode"} <= algorithm
    assert {"keep_frac_floor", "fused_entropy_accepted_rel_error", "positive_nll_warn_steps"} <= tooling


def test_settings_are_built_once_per_config():
    cfg = OmegaConf.create({"loss_mode": "dapo_erc", "entropy_ratio_low": 0.9})
    assert settings(cfg) is settings(cfg) is settings({"loss_mode": "dapo_erc", "entropy_ratio_low": 0.9})
    built = ERCPolicyLossConfig(loss_mode="gppo_erc")
    assert settings(built) is settings(built) and settings(built).is_erc and settings(built).declared
    # A run without ERC's fields (verl's own PolicyLossConfig node) reads every default.
    plain = settings({"loss_mode": "vanilla"})
    assert plain == ERCSettings(Algorithm(), Tooling(), declared=False) and not plain.active


# (field, value, what the one line says): every setting refused when the object is built.
BAD = [
    ("entropy_ratio_low", 0.0, r"entropy_ratio_low=0.0 is outside \[0.5, 1\)"),
    ("entropy_ratio_low", 1.0, r"entropy_ratio_low=1.0 is outside \[0.5, 1\)"),
    ("entropy_ratio_low", 0.05, r"entropy_ratio_low=0.05 is outside \[0.5, 1\)"),  # an epsilon typed as a bound
    ("entropy_ratio_low", math.nan, "entropy_ratio_low must be a finite number"),
    ("entropy_ratio_high", 1.0, r"entropy_ratio_high=1.0 is outside \(1, 2\]"),
    ("entropy_ratio_high", 0.99, r"entropy_ratio_high=0.99 is outside \(1, 2\]"),
    ("entropy_ratio_high", 50, r"entropy_ratio_high=50 is outside \(1, 2\]"),
    ("entropy_ratio_high", math.inf, "entropy_ratio_high must be a finite number"),
    ("gppo_beta_low", -0.1, "gppo_beta_low must be >= 0"),
    ("gppo_beta_high", -1.0, "gppo_beta_high must be >= 0"),
    ("positive_nll_coeff", math.nan, "positive_nll_coeff must be a finite number"),
    ("positive_nll_norm", "mini", "positive_nll_norm must be one of"),
    ("erc_base_loss_mode", "gspo", "cannot be gated by ERC"),
    ("keep_frac_floor", 1.0, "keep_frac_floor must lie in"),
    ("keep_frac_floor_steps", 0, "keep_frac_floor_steps must be an integer >= 1"),
    ("entropy_ratio_monitor", "yes", "entropy_ratio_monitor must be true or false"),
]


def test_a_band_typed_as_an_epsilon_is_refused_in_one_line_that_says_the_fields_are_bounds():
    assert band_problem(0.95, 1.05) is None and band_problem(0.5, 2.0) is None
    for low, high in ((0.05, 1.05), (0.95, 0.05), (0.95, 50.0), (0.49, 1.05), (0.95, 2.01)):
        with pytest.raises(ValueError) as err:
            ERCPolicyLossConfig(entropy_ratio_low=low, entropy_ratio_high=high)
        line = str(err.value)
        assert line == band_problem(low, high) and "\n" not in line
        assert "bounds" in line and "not an epsilon" in line and "low 0.95, high 1.05" in line


@pytest.mark.parametrize("field, value, says", BAD)
def test_the_worker_the_support_rules_and_the_check_refuse_with_the_same_line(field, value, says):
    from erc_verl.integration import support
    from erc_verl.repro import check

    with pytest.raises(ValueError, match=says) as err:  # the worker builds ERCPolicyLossConfig
        ERCPolicyLossConfig(loss_mode="erc", **{field: value})
    line = str(err.value)
    assert field in line and "\n" not in line
    # the driver's DictConfig, read by the same settings
    with pytest.raises(ValueError) as err:
        settings(OmegaConf.create({"loss_mode": "erc", field: value}))
    assert str(err.value) == line
    # the rules `erc-verl check` and the workers share
    whole = {"actor_rollout_ref": {"actor": {"strategy": "fsdp2", "policy_loss": {"loss_mode": "erc", field: value}}}}
    assert support.problems(OmegaConf.create(whole))[0] == line
    # `erc-verl check` (and launch.sh's preflight, which calls the same check_recipe)
    overrides = [f"{A}.loss_mode=erc", f"++{A}.{field}={value}"]
    with pytest.raises(check.RecipeError) as err:
        check.check_recipe(ROOT / "recipes", "dapo_erc_qwen1.5b", overrides)
    assert line in str(err.value)
