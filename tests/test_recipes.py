"""recipes/, `erc-verl check`, scripts/launch.sh and the Hydra snippet, on verl 0.9.1's config."""

import argparse
import functools
import os
import shlex
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

from erc_verl.repro import check
from erc_verl.repro.check.compose import compose_verl_trainer

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
LAUNCH = ROOT / "scripts" / "launch.sh"
RUNS = [f"{loss}_qwen{size}" for size in ("1.5b", "7b") for loss in ("dapo", "dapo_erc", "gppo", "gppo_erc")]

warnings.filterwarnings("ignore", message="Disabled critic")


def run_check(argv):
    parser = argparse.ArgumentParser()
    check.add_check_arguments(parser)
    return check.check_main(parser.parse_args(argv))


@functools.cache
def composed(name):
    """The recipe with the check's placeholders (cached: composition is the slow part; read-only use)."""
    return check.compose_recipe(RECIPES, name, check.PLACEHOLDER_OVERRIDES)


def recipe_table():
    """recipes/README.md's table: {recipe: {column: cell}}."""
    import re

    lines = [line for line in (RECIPES / "README.md").read_text().splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:  # after the header and its --- row
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        name = re.fullmatch(r"\[`(.+)\.yaml`\]\(\1\.yaml\)", cells["file"])
        assert name, cells["file"]
        assert name.group(1) not in rows, f"two rows for {name.group(1)}"
        rows[name.group(1)] = cells
    return rows


def test_recipe_table_has_one_row_per_recipe_matching_its_composed_loss_and_band():
    import re

    table = recipe_table()
    assert sorted(table) == check.list_recipes(RECIPES)
    for name, cells in table.items():
        actor = composed(name).actor_rollout_ref.actor
        loss = actor.policy_loss
        mode, clip_low, clip_high = re.fullmatch(
            r"`(\w+)`, clip ([\d.]+)/([\d.]+)", cells["loss mode, clip low/high"]
        ).groups()
        assert (mode, float(clip_low), float(clip_high)) == (
            loss.loss_mode,
            actor.clip_ratio_low,
            actor.clip_ratio_high,
        ), name
        low, high = map(float, re.search(r"([\d.]+) / ([\d.]+)$", cells["ERC band"]).groups())
        assert (low, high) == (loss.entropy_ratio_low, loss.entropy_ratio_high), name
        is_erc = loss.loss_mode.endswith("erc")
        assert cells["ERC band"].startswith("monitor only") == (not is_erc), name
        assert is_erc or loss.get("entropy_ratio_monitor") is True, name
        assert f"check {name}`" in cells["verification"] and f"--smoke {name}`" in cells["verification"], name
        for common in re.findall(r"\]\((common/[\w.]+\.yaml)\)", cells["differs from verl's defaults"]):
            assert (RECIPES / common).is_file(), common
            assert f"- {common[: -len('.yaml')]}" in (RECIPES / f"{name}.yaml").read_text(), (name, common)


def test_required_verl_is_the_pin_the_package_declares():
    import tomllib

    pin = [
        line for line in (RECIPES / "REQUIRED_VERL.txt").read_text().splitlines() if line and not line.startswith("#")
    ]
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert pin == [d for d in deps if d.startswith("verl")]


def test_check_passes_on_every_recipe(capsys):
    assert run_check([]) == 0
    out = capsys.readouterr().out
    for name in RUNS:
        assert f"OK   {name}:" in out
    assert "8/8 recipes OK" in out


@pytest.mark.parametrize("override", ["actor_rollout_ref.actor.use_kl_loss=true", "algorithm.use_kl_in_reward=true"])
def test_check_passes_on_every_recipe_with_a_reference_model(capsys, override):
    """verl builds the reference model's config from `ref` with its log-prob keys renamed; so does the check."""
    assert run_check(["-o", override]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    for name in RUNS:
        assert f"OK   {name}:" in out and out.split(f"OK   {name}:")[1].split("\n")[0].endswith("ref=True"), out
    assert "8/8 recipes OK" in out


def test_check_passes_on_every_recipe_with_lora_saying_what_it_could_not_check(capsys):
    import importlib.util

    lora = ["-o", "actor_rollout_ref.model.lora_rank=8", "-o", "actor_rollout_ref.model.lora_alpha=16"]
    assert run_check([*lora, "-o", "actor_rollout_ref.actor.use_kl_loss=true"]) == 0, capsys.readouterr().out
    ok = [line for line in capsys.readouterr().out.splitlines() if line.startswith("OK   ")]
    assert len(ok) == 8
    if importlib.util.find_spec("vllm") is None:  # verl reads vLLM's largest LoRA rank from vLLM itself
        assert all("not checked here=lora rank 8 against vLLM's largest LoRA rank" in line for line in ok), ok


def _flat(name):
    from omegaconf import OmegaConf

    def walk(node, prefix=""):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{prefix}{key}.")
        else:
            yield prefix[:-1], node

    return dict(walk(OmegaConf.to_container(composed(name), resolve=True)))


def _differing(a, b):
    fa, fb = _flat(a), _flat(b)
    return {k for k in fa.keys() | fb.keys() if fa.get(k, "<absent>") != fb.get(k, "<absent>")}


# Keys that carry the run's name (verl copies trainer.experiment_name into some of its nodes).
RUN_NAME_KEYS = {
    "trainer.experiment_name",
    "trainer.default_local_dir",
    "actor_rollout_ref.rollout.trace.experiment_name",
}
LOSS = "actor_rollout_ref.actor.policy_loss."


@pytest.mark.parametrize("size", ["1.5b", "7b"])
def test_erc_and_its_baseline_differ_only_in_the_gate(size):
    """What makes a paper comparison valid: the same run with and without the ERC gate."""
    for base in ("dapo", "gppo"):
        diff = _differing(f"{base}_qwen{size}", f"{base}_erc_qwen{size}") - RUN_NAME_KEYS
        assert diff <= {LOSS + "loss_mode", LOSS + "entropy_ratio_monitor"}, diff
        assert LOSS + "loss_mode" in diff


@pytest.mark.parametrize("size", ["1.5b", "7b"])
def test_dapo_and_gppo_differ_only_in_the_base_loss(size):
    diff = _differing(f"dapo_erc_qwen{size}", f"gppo_erc_qwen{size}") - RUN_NAME_KEYS
    assert diff <= {LOSS + "loss_mode", "actor_rollout_ref.actor.clip_ratio_high"}, diff


def test_model_sizes_differ_only_in_memory_knobs():
    diff = _differing("dapo_erc_qwen1.5b", "dapo_erc_qwen7b") - RUN_NAME_KEYS
    # The token budget (and the log-prob passes' budgets that follow it) and vLLM's memory share.
    assert {k.rsplit(".", 1)[1] for k in diff} <= {
        "ppo_max_token_len_per_gpu",
        "log_prob_max_token_len_per_gpu",
        "gpu_memory_utilization",
    }, diff


@pytest.mark.parametrize("name", RUNS)
def test_a_full_length_sequence_fits_one_micro_batch(name):
    """verl asserts max_token_len_per_gpu * Ulysses >= the longest sequence (seqlen_balancing)."""
    cfg = composed(name)
    sp = cfg.actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size
    longest = cfg.data.max_prompt_length + cfg.data.max_response_length
    assert cfg.actor_rollout_ref.actor.ppo_max_token_len_per_gpu * sp >= longest
    assert cfg.actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu * sp >= longest


def test_no_machine_specific_path_in_recipes_or_launcher():
    for path in [*RECIPES.rglob("*.yaml"), LAUNCH]:
        text = path.read_text()
        for marker in ("/work/", "/home/", "/root/", "/mnt/", "/data/"):
            assert marker not in text, f"{path}: {marker}"


def test_user_values_come_from_the_environment(monkeypatch):
    user_vars = ("MODEL_PATH", "TRAIN_FILES", "VAL_FILES", "CKPT_DIR", "NNODES", "GPUS_PER_NODE")
    for var in user_vars:
        monkeypatch.delenv(var, raising=False)
    cfg = check.compose_recipe(RECIPES, "dapo_qwen7b")
    with pytest.raises(check.RecipeError) as err:
        check.check_config(cfg)
    assert "Environment variable" in err.value.message
    assert any(var in err.value.message for var in user_vars)
    monkeypatch.setenv("MODEL_PATH", "/m")
    monkeypatch.setenv("TRAIN_FILES", "/t.parquet")
    monkeypatch.setenv("VAL_FILES", "[/a.parquet,/b.parquet]")
    monkeypatch.setenv("CKPT_DIR", "/ck")
    monkeypatch.setenv("NNODES", "2")
    monkeypatch.setenv("GPUS_PER_NODE", "4")
    cfg = check.compose_recipe(RECIPES, "dapo_qwen7b")
    assert cfg.trainer.nnodes * cfg.trainer.n_gpus_per_node == 8
    assert list(cfg.data.val_files) == ["/a.parquet", "/b.parquet"]
    assert cfg.trainer.default_local_dir == "/ck/dapo_qwen7b"


@pytest.mark.parametrize(
    "line, key",
    [
        ("entropy_ratio_low: 1.5", "actor_rollout_ref.actor.policy_loss.entropy_ratio_low"),
        ("entropy_ratio_lowx: 0.9", "actor_rollout_ref.actor.policy_loss.entropy_ratio_lowx"),
        ("loss_mode: not_a_loss", "actor_rollout_ref.actor.policy_loss.loss_mode"),
    ],
)
def test_check_names_the_offending_key_of_a_broken_recipe(tmp_path, capsys, line, key):
    recipes = tmp_path / "recipes"
    shutil.copytree(RECIPES, recipes)
    broken = recipes / "broken.yaml"
    text = (RECIPES / "dapo_erc_qwen1.5b.yaml").read_text()
    broken.write_text(text + f"\nactor_rollout_ref:\n  actor:\n    policy_loss:\n      {line}\n")
    also_good = ["dapo_erc_qwen1.5b"] if "loss_mode" in line else []
    assert run_check([str(broken), *also_good, "--recipes-dir", str(recipes)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL broken: {key}:" in out
    if also_good:
        assert "OK   dapo_erc_qwen1.5b" in out  # one bad recipe does not hide the others


def test_check_flags_a_filter_metric_the_reward_does_not_produce(capsys):
    assert run_check(["dapo_qwen1.5b", "-o", "algorithm.filter_groups.metric=accuracy"]) == 1
    assert "FAIL dapo_qwen1.5b: algorithm.filter_groups.metric:" in capsys.readouterr().out


def test_check_flags_an_erc_mode_without_the_erc_config_class(capsys):
    import dataclasses

    from verl.workers.config import PolicyLossConfig

    import erc_verl

    node = "actor_rollout_ref.actor.policy_loss"
    # Every field ERCPolicyLossConfig adds that the recipe sets, removed, so only the class differs.
    erc_only = {f.name for f in dataclasses.fields(erc_verl.ERCPolicyLossConfig)} - {
        f.name for f in dataclasses.fields(PolicyLossConfig)
    }
    present = [k for k in composed("dapo_erc_qwen1.5b").actor_rollout_ref.actor.policy_loss if k in erc_only]
    overrides = [f"{node}._target_=verl.workers.config.PolicyLossConfig", *[f"~{node}.{k}" for k in present]]
    assert run_check(["dapo_erc_qwen1.5b", *[a for o in overrides for a in ("-o", o)]]) == 1
    assert "policy_loss._target_" in capsys.readouterr().out


ENV = {
    "MODEL_PATH": "/models/R1-Distill-Qwen-7B",
    "TRAIN_FILES": "/d/train.parquet",
    "VAL_FILES": "/d/aime2024.parquet,/d/aime 2025.parquet",
    "CKPT_DIR": "/ckpt",
    "NNODES": "1",
    "GPUS_PER_NODE": "8",
}


def launch(args, env):
    full = {k: v for k, v in os.environ.items() if k not in ENV and k != "RAY_ADDRESS"}
    full.update(env)
    return subprocess.run(["bash", str(LAUNCH), *args], env=full, capture_output=True, text=True, timeout=30)


def test_launcher_names_each_missing_env_var():
    for var in ENV:
        res = launch(["--dry-run", "dapo_erc_qwen7b"], {k: v for k, v in ENV.items() if k != var})
        assert res.returncode != 0
        assert var in res.stderr and "missing environment variable" in res.stderr


def test_launcher_refuses_multi_node_without_ray_cluster():
    res = launch(["--dry-run", "dapo_erc_qwen7b"], {**ENV, "NNODES": "8"})
    assert res.returncode != 0 and "RAY_ADDRESS" in res.stderr
    res = launch(["--dry-run", "dapo_erc_qwen7b"], {**ENV, "NNODES": "8", "RAY_ADDRESS": "10.0.0.1:6379"})
    assert res.returncode == 0, res.stderr


def test_launcher_rejects_unknown_recipe():
    res = launch(["--dry-run", "dapo_erc_qwen3b"], ENV)
    assert res.returncode != 0 and "no recipe" in res.stderr and "dapo_erc_qwen7b" in res.stderr


def _printed_command(stdout):
    argv = shlex.split(stdout.strip().splitlines()[-1])
    assert argv[1:3] == ["-m", "verl.trainer.main_ppo"]
    assert argv[argv.index("--config-path") + 1] == str(RECIPES)
    name = argv[argv.index("--config-name") + 1]
    return name, argv[argv.index("--config-name") + 2 :]


def test_launcher_dry_run_prints_a_command_that_composes_and_checks():
    res = launch(["--dry-run", "gppo_erc_qwen7b", "trainer.total_epochs=1"], ENV)
    assert res.returncode == 0, res.stderr
    assert "VERL_USE_EXTERNAL_MODULES=erc_verl" in res.stdout
    name, overrides = _printed_command(res.stdout)
    assert name == "gppo_erc_qwen7b" and overrides[-1] == "trainer.total_epochs=1"
    cfg = check.compose_recipe(RECIPES, name, overrides)
    check.check_config(cfg)
    assert cfg.actor_rollout_ref.model.path == ENV["MODEL_PATH"]
    assert list(cfg.data.val_files) == ["/d/aime2024.parquet", "/d/aime 2025.parquet"]
    assert cfg.trainer.default_local_dir == "/ckpt/gppo_erc_qwen7b"
    assert cfg.trainer.total_epochs == 1
    log_path = cfg.ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH
    assert log_path.startswith("/ckpt/gppo_erc_qwen7b/logs/metrics-") and log_path.endswith(".jsonl")


def test_launcher_val_only_evaluates_at_32k():
    res = launch(["--dry-run", "--val-only", "/ckpt/dapo_qwen7b/global_step_100", "dapo_qwen7b"], ENV)
    assert res.returncode == 0, res.stderr
    name, overrides = _printed_command(res.stdout)
    cfg = check.compose_recipe(RECIPES, name, overrides)
    assert cfg.trainer.val_only and cfg.data.max_response_length == 32768
    assert cfg.trainer.resume_from_path == "/ckpt/dapo_qwen7b/global_step_100"
    assert "/eval32k/" in cfg.ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH


# The Hydra snippet for plain verl command lines (docs/hydra-snippet.md).


def test_hydra_snippet_selects_erc_on_plain_verl():
    from verl.utils.config import omega_conf_to_dataclass

    import erc_verl

    cfg = compose_verl_trainer(
        [
            "hydra.searchpath=[pkg://erc_verl.conf]",
            "+policy_loss@actor_rollout_ref.actor.policy_loss=erc",
            "actor_rollout_ref.actor.policy_loss.loss_mode=gppo_erc",
            "actor_rollout_ref.actor.policy_loss.entropy_ratio_high=1.1",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
        ]
    )
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert isinstance(actor.policy_loss, erc_verl.ERCPolicyLossConfig)
    assert actor.policy_loss.loss_mode == "gppo_erc"
    assert (actor.policy_loss.entropy_ratio_low, actor.policy_loss.entropy_ratio_high) == (0.95, 1.1)
