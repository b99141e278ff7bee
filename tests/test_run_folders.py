"""Smoke run folders: nothing is removed, a dry run writes nothing, a failed run is marked and
skipped by `erc-verl table`, `latest` is followed, and the smoke never joins a Ray cluster it
did not start. No Ray here: the failed run fails in Hydra, before main_ppo starts Ray.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from erc_verl.rehearsal import layout_probe, smoke
from erc_verl.rehearsal.overrides import Layout, pick_ulysses
from erc_verl.rehearsal.ray_cluster import LocalRayCluster
from erc_verl.rehearsal.run_folder import MARKER, new_run_dir, point_latest, read_marker
from erc_verl.repro import results
from erc_verl.repro.errors import UserError

ROOT = smoke.ROOT
RECIPE = "dapo_erc_qwen1.5b"


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _smoke(args, cwd, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "erc_verl.rehearsal.smoke", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_dry_run_writes_nothing_and_never_joins_a_stray_cluster(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": "10.9.8.7:6379"}  # a cluster someone else runs
    env.pop("NNODES", None)
    env.pop("GPUS_PER_NODE", None)
    out = _smoke(["--dry-run", RECIPE], tmp_path, env)
    assert out.returncode == 0, out.stderr
    assert _tree(tmp_path) == []  # not even the model cache
    assert "dry run: nothing written" in out.stdout
    assert f"runs/smoke/{RECIPE}/" in out.stdout  # the new <time> folder it would use
    assert "++ray_kwargs.ray_init.address=local" in out.stdout
    assert "10.9.8.7" not in out.stdout
    assert "_temp_dir=/tmp/erc-ray-" in out.stdout and "/tmp/ray " not in out.stdout
    assert "# layout: 1 node(s) x 1 CPU worker(s) = world size 1" in out.stdout
    assert "Ulysses sequence parallel: 1 (the recipe's 4 does not divide world size 1" in out.stdout
    assert "# rollout: vllm, tensor parallel 1, 1 replica(s), one per worker" in out.stdout


def test_plan_env_and_ray_init_kwargs_ignore_ray_address(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.9.8.7:6379")
    plan = smoke.build_smoke(RECIPE, tmp_path, prepare=False, ray_temp_dir=Path("/tmp/erc-ray-x"))
    assert "RAY_ADDRESS" not in plan.env
    assert "++ray_kwargs.ray_init.address=local" in plan.cmd
    assert "++ray_kwargs.ray_init._temp_dir=/tmp/erc-ray-x" in plan.cmd
    assert _tree(tmp_path) == []
    # attached to the smoke's own multi-node cluster: num_cpus must be null (ray.init refuses it)
    plan = smoke.build_smoke(RECIPE, tmp_path, prepare=False, ray_address="127.0.0.1:1234", layout=Layout(2, 1, 1, 4))
    assert "++ray_kwargs.ray_init.address=127.0.0.1:1234" in plan.cmd
    assert "ray_kwargs.ray_init.num_cpus=null" in plan.cmd
    assert "trainer.nnodes=2" in plan.cmd and "trainer.n_gpus_per_node=1" in plan.cmd


def test_out_is_documented_and_accepted_before_or_after_the_recipe(tmp_path):
    help_text = _smoke(["--help"], tmp_path).stdout
    assert "--out DIR" in help_text and "--resume DIR" in help_text
    for args in (
        ["--dry-run", "--out", str(tmp_path / "a"), RECIPE],
        ["--dry-run", RECIPE, "--out", str(tmp_path / "a")],
    ):
        out = _smoke(args, tmp_path)
        assert out.returncode == 0, out.stderr
        assert f"# run folder: {tmp_path / 'a'} " in out.stdout
    launch = subprocess.run(
        ["bash", str(ROOT / "scripts" / "launch.sh"), "--smoke", "--dry-run", "--out", str(tmp_path / "b"), RECIPE],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert launch.returncode == 0, launch.stderr
    assert f"# run folder: {tmp_path / 'b'} " in launch.stdout
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_out_refuses_a_folder_that_is_not_a_smoke_run(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me\n")
    out = _smoke(["--out", str(tmp_path / "mine"), RECIPE], tmp_path)
    assert out.returncode == 2
    assert "not a smoke run folder" in out.stderr and "fix:" in out.stderr
    assert _tree(tmp_path / "mine") == ["notes.txt"]


def test_a_run_that_fails_before_its_first_step_is_marked_and_keeps_everything_else(tmp_path):
    """Hydra refuses a misspelt key inside main_ppo, before Ray starts."""
    cache = tmp_path / "cache"
    # A stand-in for the cached tiny model and data: main_ppo stops at Hydra, before reading them.
    from erc_verl.rehearsal.tiny_model import asset_paths

    model_dir, data = asset_paths(cache)
    model_dir.mkdir(parents=True)
    (model_dir / "erc_verl_smoke.json").write_text("{}\n")
    for path in data.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    recipe_dir = tmp_path / "runs" / "smoke" / RECIPE
    # An earlier run and a note of the user's, which a new run must leave alone.
    old = recipe_dir / "20200101-000000"
    (old / "logs").mkdir(parents=True)
    (old / MARKER).write_text(json.dumps({"recipe": RECIPE, "status": "done", "trained_steps": [1]}))
    (old / "logs" / "metrics-20200101-000000.jsonl").write_text(
        json.dumps({"step": 1, "data": {"val-core/arith/acc/mean@2": 0.5, "timing_s/update_actor": 1.0}}) + "\n"
    )
    (recipe_dir / "notes.txt").write_text("my notes\n")
    point_latest(old)
    before = {p: p.read_bytes() for p in old.rglob("*") if p.is_file()}

    out = _smoke(["--cache", str(cache), RECIPE, "trainer.total_training_stepz=1"], tmp_path)
    assert out.returncode not in (0, None), out.stdout[-3000:]
    assert "before its first training step" in out.stderr
    new = [p for p in recipe_dir.iterdir() if p.is_dir() and not p.is_symlink() and p != old]
    assert len(new) == 1, _tree(recipe_dir)
    marker = read_marker(new[0])
    assert marker["status"] == "failed" and marker["trained_steps"] == []
    consoles = list((new[0] / "logs").glob("console-*.log"))
    assert consoles and "total_training_stepz" in consoles[0].read_text()  # the driver's output, saved
    # nothing else touched; `latest` still names the run that trained
    assert (recipe_dir / "notes.txt").read_text() == "my notes\n"
    assert {p: p.read_bytes() for p in old.rglob("*") if p.is_file()} == before
    assert os.readlink(recipe_dir / "latest") == old.name

    # table: the failed run is skipped with a note; the earlier one is read, once
    runs = results.load_runs(recipe_dir)
    assert [r.name for r in runs] == [f"{RECIPE}/{old.name}"]
    with pytest.raises(UserError, match="before its first training step"):
        results.load_runs(new[0])


def test_table_and_plot_follow_latest_and_count_each_run_once(tmp_path, capsys):
    recipe_dir = tmp_path / RECIPE
    for stamp, acc in (("20260101-000000", 0.25), ("20260102-000000", 0.75)):
        run = recipe_dir / stamp
        (run / "logs").mkdir(parents=True)
        (run / MARKER).write_text(json.dumps({"recipe": RECIPE, "status": "done", "trained_steps": [1]}))
        (run / "logs" / f"metrics-{stamp}.jsonl").write_text(
            json.dumps({"step": 1, "data": {"val-core/arith/acc/mean@2": acc, "actor/entropy": 1.0}}) + "\n"
        )
        point_latest(run)
    assert sorted(r.name for r in results.load_runs(recipe_dir)) == [
        f"{RECIPE}/20260101-000000",
        f"{RECIPE}/20260102-000000",
    ]
    (latest,) = results.load_runs(recipe_dir / "latest")
    assert latest.name == f"{RECIPE}/20260102-000000" and latest.smoke
    # plot: a default output in the run folder, never over an existing file
    from erc_verl.cli import main as cli

    assert cli(["plot", str(recipe_dir / "latest")]) == 0
    assert (recipe_dir / "20260102-000000" / "plot.png").stat().st_size > 0
    assert cli(["plot", str(recipe_dir / "latest")]) == 0
    assert (recipe_dir / "20260102-000000" / "plot-2.png").exists()
    assert cli(["table", str(recipe_dir / "latest")]) == 0
    assert f"| {RECIPE}/20260102-000000 |" in capsys.readouterr().out


def test_new_run_folders_are_new():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        a = new_run_dir(Path(d), "20260101-000000")
        b = new_run_dir(Path(d), "20260101-000000")
        assert a != b and a.is_dir() and b.is_dir() and not any(a.iterdir())


def test_ulysses_size_is_the_recipes_when_it_divides_the_world():
    assert pick_ulysses(4, 1) == 1
    assert pick_ulysses(4, 2) == 2
    assert pick_ulysses(4, 4) == 4
    assert pick_ulysses(4, 8) == 4
    assert pick_ulysses(4, 6) == 3
    assert pick_ulysses(4, 6, heads=4) == 2  # 3 would not split 4 heads
    assert pick_ulysses(None, 4) == 1


def test_the_multi_node_cluster_uses_ray_start_with_a_private_temp_dir(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.9.8.7:6379")
    cluster = LocalRayCluster(3, 16, resources={layout_probe.SLOT_RESOURCE: 2})
    # never the stray cluster; one auth mode for head, worker nodes and driver
    assert "RAY_ADDRESS" not in cluster.env and cluster.env["RAY_AUTH_MODE"] == "disabled"
    cmds = cluster.node_commands()
    assert len(cmds) == 3
    assert cmds[0][1:3] == ["start", "--head"] and f"--port={cluster.port}" in cmds[0]
    for i, cmd in enumerate(cmds):
        assert "--block" in cmd and "--num-cpus=16" in cmd
        assert f"--temp-dir={cluster.temp_dir}/n{i}" in cmd and str(cluster.temp_dir).startswith("/tmp/erc-ray-")
        assert '--resources={"erc_verl_worker_slot":2}' in cmd
    for cmd in cmds[1:]:
        assert f"--address={cluster.address}" in cmd
    assert not cluster.temp_dir.exists()  # made only when it starts


def test_layout_summary_groups_ranks_by_the_ray_node_they_reported(tmp_path):
    probe = tmp_path / "probe.ndjson"
    rows = [
        {"rank": r, "world_size": 2, "node_id": n, "hostname": "h", "pid": 1, "micro_batches": 2}
        for r, n in ((0, "aa"), (1, "bb"), (0, "aa"), (1, "bb"))
    ]
    probe.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = layout_probe.summarize(probe)
    assert [(n["node_id"], n["ranks"]) for n in seen["nodes"]] == [("aa", [0]), ("bb", [1])]
    assert seen["micro_batches_per_mini_batch"] == 2 and seen["mini_batches_recorded"] == 4
