"""Bad input to `erc-verl check / prepare-data / table / plot`: one line naming the problem and
the fix, a non-zero exit, nothing half-written; and every fix those lines suggest, run.

Everything goes through `erc_verl.cli.main`, the `erc-verl` entry point, in-process.
"""

import json
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from erc_verl import cli
from erc_verl.repro import data, results
from erc_verl.repro.check.compose import compose_verl_trainer
from erc_verl.repro.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "fixtures"
RECIPE = "dapo_erc_qwen7b"  # Ulysses 4, rollout TP 2, mini-batch 16 x 8 responses


def erc_verl(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_error_line(err, command):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"erc-verl {command}: error: "), err
    return lines[0]


def check_fails(capsys, *overrides, key):
    """`erc-verl check RECIPE -o ...` fails with one FAIL line naming `key`; returns that line."""
    rc, out, _ = erc_verl(capsys, "check", RECIPE, *[a for o in overrides for a in ("-o", o)])
    assert rc == 1, out
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and fails[0].startswith(f"FAIL {RECIPE}: {key}: "), out
    return fails[0]


def check_passes(capsys, *overrides):
    rc, out, _ = erc_verl(capsys, "check", RECIPE, *[a for o in overrides for a in ("-o", o)])
    assert rc == 0, out
    assert f"OK   {RECIPE}:" in out


def ulysses(n):
    return [
        f"actor_rollout_ref.actor.ulysses_sequence_parallel_size={n}",
        f"actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size={n}",
    ]


def gpus(nodes, per_node):
    return [f"trainer.nnodes={nodes}", f"trainer.n_gpus_per_node={per_node}"]


# ---- erc-verl check: what verl would reject on the cluster ------------------------------------


def test_check_world_size_against_ulysses(capsys):
    line = check_fails(capsys, *gpus(1, 3), key="actor_rollout_ref.actor.ulysses_sequence_parallel_size")
    assert "Ulysses size 4 does not divide the world size" in line and "= 3" in line


def test_check_ulysses_fix_then_token_budget_fix(capsys):
    # 2 GPUs: Ulysses 4 cannot run; the line says "a divisor of 2".
    line = check_fails(capsys, *gpus(1, 2), key="actor_rollout_ref.actor.ulysses_sequence_parallel_size")
    assert "fix: a divisor of 2" in line
    # Ulysses 2: verl multiplies the budget by 2 only, so a full sequence no longer fits.
    line = check_fails(capsys, *gpus(1, 2), *ulysses(2), key="actor_rollout_ref.actor.ppo_max_token_len_per_gpu")
    assert "20480" in line and "fix: -o actor_rollout_ref.actor.ppo_max_token_len_per_gpu=10240 or more" in line
    # The suggested override, as written (the log-prob budget follows the actor's).
    check_passes(capsys, *gpus(1, 2), *ulysses(2), "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=10240")


def test_check_rollout_tensor_parallel_against_world_size(capsys):
    overrides = [*gpus(1, 2), *ulysses(2), "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=10240"]
    line = check_fails(
        capsys,
        *overrides,
        "actor_rollout_ref.rollout.tensor_model_parallel_size=4",
        key="actor_rollout_ref.rollout.tensor_model_parallel_size",
    )
    assert "TP 4" in line and "fix: a tensor_model_parallel_size that divides 2" in line
    check_passes(capsys, *overrides, "actor_rollout_ref.rollout.tensor_model_parallel_size=2")


def test_check_mini_batch_against_data_parallel_ranks(capsys):
    # 6 GPUs, Ulysses 2: 3 data-parallel ranks cannot share 16 x 8 = 128 responses.
    overrides = [*gpus(1, 6), *ulysses(2), "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=10240"]
    line = check_fails(capsys, *overrides, key="actor_rollout_ref.actor.ppo_mini_batch_size")
    assert "128 responses" in line and "3 data-parallel ranks" in line
    check_passes(capsys, *overrides, "actor_rollout_ref.actor.ppo_mini_batch_size=12")  # 96 % 3 == 0


def test_check_value_types(capsys):
    line = check_fails(capsys, "trainer.total_epochs=abc", key="trainer.total_epochs")
    assert "'abc' is not a number" in line and "fix: -o trainer.total_epochs=<a number>" in line
    check_fails(capsys, "trainer.nnodes=two", key="trainer.nnodes")
    check_fails(capsys, "actor_rollout_ref.actor.use_dynamic_bsz=maybe", key="actor_rollout_ref.actor.use_dynamic_bsz")
    check_passes(capsys, "trainer.total_epochs=1")


def test_check_refuses_the_v0_trainer_with_dynamic_sampling(capsys):
    from erc_verl.integration.support import V0_DYNAMIC_SAMPLING_PROBLEM

    line = check_fails(capsys, "trainer.use_v1=false", key="trainer.use_v1")
    # The trainer's own refusal, word for word: one source of truth.
    assert V0_DYNAMIC_SAMPLING_PROBLEM in line
    # Both fixes the message names.
    check_passes(capsys, "trainer.use_v1=true")
    check_passes(capsys, "trainer.use_v1=false", "algorithm.filter_groups.enable=false")


def test_check_model_path(capsys, tmp_path):
    rc, out, err = erc_verl(capsys, "check", RECIPE, "--model-path", "/nonexistent")
    assert rc == 2 and not out
    assert "no such model folder: /nonexistent" in one_error_line(err, "check")
    (tmp_path / "empty").mkdir()
    rc, _, err = erc_verl(capsys, "check", RECIPE, "--model-path", tmp_path / "empty")
    assert rc == 2 and "has no config.json" in one_error_line(err, "check")
    # The same rule for a model path given as an override.
    check_fails(capsys, "actor_rollout_ref.model.path=/nonexistent/model", key="actor_rollout_ref.model.path")


def test_check_model_path_fix_a_real_model_folder(capsys, tmp_path):
    from harness.training_worker import tiny_qwen2

    model = tiny_qwen2(tmp_path / "model")
    rc, out, _ = erc_verl(capsys, "check", RECIPE, "--model-path", model)
    assert rc == 0, out


def test_check_recipes_dir(capsys, tmp_path):
    rc, out, err = erc_verl(capsys, "check", "--recipes-dir", "/nope")
    assert rc == 2 and not out
    assert "--recipes-dir /nope: no such folder" in one_error_line(err, "check")
    rc, _, err = erc_verl(capsys, "check", "--recipes-dir", tmp_path)
    assert rc == 2 and f"no *.yaml recipe in {tmp_path}" in one_error_line(err, "check")
    # The fix: the recipes/ folder of a checkout.
    rc, out, _ = erc_verl(capsys, "check", RECIPE, "--recipes-dir", ROOT / "recipes")
    assert rc == 0, out


# ---- erc-verl prepare-data --------------------------------------------------------------------


def test_prepare_data_offline_fails_fast_naming_file_and_packaged_sets(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out_dir = tmp_path / "out"
    start = time.monotonic()
    rc, _, err = erc_verl(capsys, "prepare-data", "--out", out_dir)
    assert time.monotonic() - start < 10
    line = one_error_line(err, "prepare-data")
    assert rc == 2 and "HF_HUB_OFFLINE is set" in line
    assert "--file klear_mathsub_30k=PATH" in line and "aime2024, aime2025" in line
    assert not out_dir.exists()  # the packaged sets were not written either
    # Both fixes the line names, run offline.
    rc, _, _ = erc_verl(capsys, "prepare-data", "--out", out_dir, "--sets", "aime2024,aime2025")
    assert rc == 0 and sorted(p.name for p in out_dir.iterdir()) == ["aime2024.parquet", "aime2025.parquet"]
    rc, _, _ = erc_verl(
        capsys, "prepare-data", "--out", out_dir, "--sets", "math500", "--file", f"math500={FIX / 'math500.jsonl'}"
    )
    assert rc == 0 and (out_dir / "math500.parquet").exists()


def test_prepare_data_unreachable_hub_fails_fast(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(data, "read_hub", lambda spec: pytest.fail("tried the Hub"))
    start = time.monotonic()
    rc, _, err = erc_verl(capsys, "prepare-data", "--out", tmp_path / "out", "--sets", "aime2024,math500")
    assert time.monotonic() - start < 10
    line = one_error_line(err, "prepare-data")
    assert rc == 2 and "cannot reach 127.0.0.1:9" in line and "--file math500=PATH" in line
    assert not (tmp_path / "out").exists()


def test_prepare_data_hub_error_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "require_hub", lambda names: None)

    def broken(*args, **kwargs):
        raise ConnectionError("Max retries exceeded\nmore detail")

    monkeypatch.setitem(sys.modules, "datasets", type(sys)("datasets"))
    sys.modules["datasets"].load_dataset = broken
    rc, _, err = erc_verl(capsys, "prepare-data", "--out", tmp_path, "--sets", "math500")
    line = one_error_line(err, "prepare-data")
    assert rc == 2 and "could not load HuggingFaceH4/MATH-500" in line and "ConnectionError: Max retries" in line


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("broken.json", '[{"problem": "1+1?", "answer": "2"},', "broken JSON at line 1"),
        ("corrupt.parquet", "PAR1 not really", "not a readable parquet file"),
        ("empty.jsonl", "", "has no rows"),
        ("blank.jsonl", "\n\n", "has no rows"),
        ("latin1.jsonl", b"\xff\xfe{", "not UTF-8 text"),
    ],
)
def test_prepare_data_bad_files_name_the_file(capsys, tmp_path, name, content, expected):
    bad = tmp_path / name
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    out_dir = tmp_path / "out"
    rc, _, err = erc_verl(capsys, "prepare-data", "--out", out_dir, "--sets", "math500", "--file", f"math500={bad}")
    line = one_error_line(err, "prepare-data")
    assert rc == 2 and name in line and expected in line
    assert not out_dir.exists()


def test_prepare_data_missing_file(capsys, tmp_path):
    rc, _, err = erc_verl(
        capsys, "prepare-data", "--out", tmp_path, "--sets", "math500", "--file", "math500=/no/such.jsonl"
    )
    assert rc == 2 and "no such file or folder: /no/such.jsonl" in one_error_line(err, "prepare-data")


def test_prepare_data_unknown_set_and_its_fix(capsys, tmp_path):
    rc, _, err = erc_verl(capsys, "prepare-data", "--out", tmp_path, "--sets", "aime2030")
    line = one_error_line(err, "prepare-data")
    assert rc == 2 and "unknown set(s) aime2030" in line and "--sets with some of" in line
    rc, _, _ = erc_verl(capsys, "prepare-data", "--out", tmp_path, "--sets", "aime2024")
    assert rc == 0


def test_prepare_data_failing_set_writes_no_other_set(capsys, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out_dir = tmp_path / "out"
    # aime2024 comes first and converts fine; amc23 fails: neither is written.
    rc, _, err = erc_verl(
        capsys, "prepare-data", "--out", out_dir, "--sets", "aime2024,amc23", "--file", f"amc23={empty}"
    )
    assert rc == 2 and "amc23" in one_error_line(err, "prepare-data")
    assert not out_dir.exists()


def test_prepare_data_failing_write_leaves_nothing(capsys, tmp_path, monkeypatch):
    real = data.write_parquet
    calls = []

    def second_write_fails(rows, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(rows, path)

    monkeypatch.setattr(data, "write_parquet", second_write_fails)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "aime2024.parquet").write_text("an older file stays as it was")
    rc, _, err = erc_verl(capsys, "prepare-data", "--out", out_dir, "--sets", "aime2024,aime2025")
    line = one_error_line(err, "prepare-data")
    assert rc == 2 and "No space left on device" in line and "nothing written" in line
    assert sorted(p.name for p in out_dir.iterdir()) == ["aime2024.parquet"]
    assert (out_dir / "aime2024.parquet").read_text() == "an older file stays as it was"
    # The fix it names: another --out.
    monkeypatch.setattr(data, "write_parquet", real)
    rc, _, _ = erc_verl(capsys, "prepare-data", "--out", tmp_path / "elsewhere", "--sets", "aime2024,aime2025")
    assert rc == 0 and len(list((tmp_path / "elsewhere").glob("*.parquet"))) == 2


# ---- erc-verl table / plot --------------------------------------------------------------------


def verl_log(path, benchmarks=("aime2024", "aime2025")):
    """A file in verl FileLogger's layout with one validation step."""
    rows = [
        {"step": 0, "data": {f"val-core/{b}/acc/mean@32": 0.5 for b in benchmarks}},
        {"step": 1, "data": {"actor/entropy": 0.7, "actor/grad_norm": 1.0, "actor/erc_keep_frac": 0.9}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def demo_output(folder):
    """A folder shaped like a demo run's: flat metric rows naming their run, and other files."""
    folder.mkdir()
    with open(folder / "metrics.jsonl", "w") as f:
        for run in ("vanilla", "dapo_erc"):
            for step in range(61):
                f.write(
                    json.dumps(
                        {
                            "run": run,
                            "step": step,
                            "actor/entropy": 0.5 + step / 100,
                            "actor/erc_keep_frac": 0.95,
                            "actor/grad_norm": 1.0,
                        }
                    )
                    + "\n"
                )
    (folder / "summary.md").write_text("# summary\n")
    (folder / "checks.json").write_text("{}")
    return folder


def test_table_unknown_benchmark(capsys, tmp_path):
    log = verl_log(tmp_path / "dapo_qwen7b.jsonl")
    rc, out, err = erc_verl(capsys, "table", log, "--benchmarks", "aime2024,aime2026")
    line = one_error_line(err, "table")
    assert rc == 2 and not out and "aime2026" in line and "fix: some of aime2024,aime2025" in line
    rc, out, _ = erc_verl(capsys, "table", log, "--benchmarks", "aime2025,aime2024")  # the fix
    assert rc == 0 and "| aime2025 | aime2024 |" in out


def test_table_and_plot_on_something_that_is_not_a_log(capsys, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "rows.jsonl").write_text("".join(json.dumps({"x": i}) + "\n" for i in range(122)))
    for command, extra in (("table", []), ("plot", ["--out", tmp_path / "p.png"])):
        rc, out, err = erc_verl(capsys, command, folder, *extra)
        line = one_error_line(err, command)
        assert rc == 2 and "no metrics record" in line and '{"step": N, "data": {metric: value}}' in line
    assert not (tmp_path / "p.png").exists()
    rc, _, err = erc_verl(capsys, "table", tmp_path / "missing")
    assert rc == 2 and "no such log file or folder" in one_error_line(err, "table")


def test_table_and_plot_read_the_demo_rows(capsys, tmp_path):
    demo = demo_output(tmp_path / "demo")
    runs = results.load_runs(demo)
    assert sorted(r.name for r in runs) == ["dapo_erc", "vanilla"]
    assert all(len(r.series("actor/entropy")[0]) == 61 for r in runs)
    rc, out, err = erc_verl(capsys, "plot", demo, "--out", tmp_path / "demo.png")
    assert rc == 0 and not err and (tmp_path / "demo.png").stat().st_size > 0
    # The demo validates nothing: table says so in one line (no empty table, no warnings).
    rc, out, err = erc_verl(capsys, "table", demo)
    assert rc == 2 and not out and "no validation metrics" in one_error_line(err, "table")


def test_plot_with_nothing_to_draw(capsys, tmp_path):
    log = tmp_path / "x.jsonl"
    log.write_text(json.dumps({"step": 1, "data": {"critic/score/mean": 0.1}}) + "\n")
    rc, _, err = erc_verl(capsys, "plot", log, "--out", tmp_path / "x.png")
    assert rc == 2 and "nothing to plot" in one_error_line(err, "plot")
    assert not (tmp_path / "x.png").exists()


def test_plot_without_matplotlib_names_the_extra(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    rc, _, err = erc_verl(capsys, "plot", verl_log(tmp_path / "a.jsonl"), "--out", tmp_path / "a.png")
    assert rc == 2 and "pip install 'erc-verl[plots]'" in one_error_line(err, "plot")


def test_partial_last_line_is_one_warning_per_file(capsys, tmp_path):
    log = verl_log(tmp_path / "dapo_qwen7b.jsonl")
    with open(log, "a") as f:
        f.write('{"step": 2, "data": {"actor/entr')
    rc, out, err = erc_verl(capsys, "table", log)
    assert rc == 0 and "| dapo_qwen7b |" in out
    assert err.strip() == f"warning: {log}: skipped 1 unreadable line(s) (line 3 first; JSONDecodeError)"


# ---- the handler itself -----------------------------------------------------------------------


def test_handler_keeps_the_traceback_of_a_bug(monkeypatch, tmp_path):
    def bug(args):
        raise ZeroDivisionError("a real bug")

    monkeypatch.setattr(results, "table_main", bug)
    with pytest.raises(ZeroDivisionError):
        cli.main(["table", str(tmp_path)])


def test_user_error_exit_status_is_2(capsys, monkeypatch, tmp_path):
    def user_mistake(args):
        raise UserError("something the user can fix; fix: do this")

    monkeypatch.setattr(results, "table_main", user_mistake)
    rc, _, err = erc_verl(capsys, "table", tmp_path)
    assert rc == 2 and one_error_line(err, "table") == "erc-verl table: error: something the user can fix; fix: do this"


# ---- fixes suggested by the plugin's own errors -----------------------------------------------


@pytest.mark.parametrize(
    "fix",
    [
        # erc_verl.losses.erc_band's message names both forms.
        ["actor_rollout_ref.actor.policy_loss._target_=erc_verl.ERCPolicyLossConfig"],
        ["hydra.searchpath=[pkg://erc_verl.conf]", "+policy_loss@actor_rollout_ref.actor.policy_loss=erc"],
    ],
)
def test_erc_band_hint_composes_on_plain_verl(fix):
    from verl.utils.config import omega_conf_to_dataclass

    from erc_verl.losses import erc_band

    base = [
        "actor_rollout_ref.actor.policy_loss.loss_mode=dapo_erc",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
    ]
    bare = omega_conf_to_dataclass(compose_verl_trainer(base).actor_rollout_ref.actor)
    with pytest.raises(ValueError) as err:
        erc_band(bare)
    for part in fix:  # the message spells each override of the fix as it is run here
        assert part in str(err.value)
    actor = omega_conf_to_dataclass(compose_verl_trainer([*fix, *base]).actor_rollout_ref.actor)
    assert erc_band(actor) == (0.95, 1.05)


def test_prepare_data_parquet_written_is_readable(capsys, tmp_path):
    rc, _, _ = erc_verl(capsys, "prepare-data", "--out", tmp_path, "--sets", "aime2025")
    assert rc == 0 and len(pd.read_parquet(tmp_path / "aime2025.parquet")) == 30
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_missing_current_entropy_hint_is_a_valid_override(capsys):
    """The plumbing's message for an engine without erc_verl's entropy names the FSDP engine erc_verl
    feeds, never verl's in-graph entropy; verl's config accepts the suggested override on an ERC recipe."""
    from omegaconf import OmegaConf

    from erc_verl.integration.verl_0_9_1 import _missing_entropy_error

    message = str(_missing_entropy_error("current", OmegaConf.create({"policy_loss": {"loss_mode": "dapo_erc"}})))
    fix = "actor_rollout_ref.actor.strategy=fsdp2"
    assert fix in message and "calculate_entropy=true" not in message
    check_passes(capsys, fix)
