"""`erc-verl demo`: bad input fails in one line before anything is written; a shortened demo
runs end to end through the CLI, verl's main_ppo and the gate audit in the actor worker."""

import json

import pytest

from erc_verl import cli


@pytest.fixture
def demo_only(monkeypatch):
    # The parser imports every subcommand's module; these tests are about the demo alone.
    monkeypatch.setattr(cli, "SUBCOMMANDS", {"demo": cli.SUBCOMMANDS["demo"]})


BAD_INPUT = [
    (["--steps", "0"], "--steps"),
    (["--loss-modes", "dapo_ercc"], "--loss-modes"),
    (["--loss-modes", "vanilla,vanilla"], "--loss-modes"),
    (["--loss-modes", ","], "--loss-modes"),
    (["--threads", "0"], "--threads"),
    (["--micro-batch-size", "0"], "--micro-batch-size"),
    (["--micro-batch-size", "3"], "--micro-batch-size"),
    (["--prompts-per-step", "0"], "--prompts-per-step"),
    (["--updates-per-batch", "0"], "--updates-per-batch"),
    (["--updates-per-batch", "3"], "--updates-per-batch"),
    (["--responses-per-prompt", "1"], "--responses-per-prompt"),
    (["--band", "1.05", "0.95"], "--band"),
    (["--lr", "0"], "--lr"),
    (["--timeout", "-1"], "--timeout"),
    (["--hidden-size", "30"], "--hidden-size"),
]


@pytest.mark.parametrize("argv,flag", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_naming_the_flag_and_writes_nothing(argv, flag, demo_only, tmp_path, capsys):
    out = tmp_path / "nested" / "demo"
    rc = cli.main(["demo", "--out", str(out), *argv])
    assert rc != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("erc-verl demo: error: " + flag), err
    assert "Traceback" not in err[0]
    assert not (tmp_path / "nested").exists()  # validated before any folder is created


def test_unknown_loss_mode_suggests_the_close_one(demo_only, tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path / "d"), "--loss-modes", "vanilla,dapo_ercc"]) != 0
    assert "did you mean 'dapo_erc'" in capsys.readouterr().err


def test_out_must_be_a_folder(demo_only, tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert cli.main(["demo", "--out", str(target)]) != 0
    assert "--out" in capsys.readouterr().err
    assert target.read_text() == "x"


def parse_demo_args(argv):
    import argparse

    from erc_verl.rehearsal import demo

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    return parser.parse_args(argv)


def test_options_reach_main_ppo_and_the_warm_start(tmp_path):
    from erc_verl.rehearsal import demo_runs

    args = parse_demo_args(
        [
            "--out",
            str(tmp_path),
            "--steps",
            "3",
            "--seed",
            "7",
            "--prompts-per-step",
            "6",
            "--updates-per-batch",
            "3",
            "--responses-per-prompt",
            "2",
            "--micro-batch-size",
            "2",
            "--lr",
            "0.01",
            "--band",
            "0.9",
            "1.1",
            "--max-new-tokens",
            "5",
            "--temperature",
            "0.7",
            "--hidden-size",
            "32",
            "--heads",
            "2",
            "--sft-steps",
            "5",
        ]
    )
    overrides = dict(o.split("=", 1) for o in demo_runs.demo_overrides(args, "dapo_erc", tmp_path / "a.ndjson"))
    A, R = "actor_rollout_ref.actor", "actor_rollout_ref.rollout"
    expected = {
        "data.train_batch_size": "6",
        f"{R}.n": "2",
        f"{A}.ppo_mini_batch_size": "2",  # 6 prompts / 3 updates
        f"{A}.ppo_micro_batch_size_per_gpu": "2",
        f"{A}.optim.lr": "0.01",
        f"{R}.temperature": "0.7",
        f"{A}.policy_loss.entropy_ratio_low": "0.9",
        f"{A}.policy_loss.entropy_ratio_high": "1.1",
        f"{R}.response_length": "5",
        "data.seed": "7",
        f"{R}.seed": "7",
        "trainer.test_freq": "3",
    }
    assert {k: overrides.get(k) for k in expected} == expected
    spec = demo_runs.model_spec(args)
    assert (spec.hidden_size, spec.heads, spec.kv_heads, spec.sft_steps, spec.seed) == (32, 2, 1, 5, 7)


def test_demo_overrides_route_the_gate_audit_to_the_workers(tmp_path):
    from erc_verl.rehearsal import demo_runs

    args = parse_demo_args(["--out", str(tmp_path)])
    overrides = demo_runs.demo_overrides(args, "dapo_erc", tmp_path / "gate_audit.ndjson")
    env = "ray_kwargs.ray_init.runtime_env.env_vars."
    assert f"{env}VERL_USE_EXTERNAL_MODULES='erc_verl,erc_verl.cpu,erc_verl.rehearsal.gate_audit'" in overrides
    assert f"++{env}ERC_VERL_GATE_AUDIT='{tmp_path / 'gate_audit.ndjson'}'" in overrides
    assert "actor_rollout_ref.actor.policy_loss.entropy_ratio_low=0.95" in overrides


def test_gate_audit_spy_counts_gradient_per_band(tmp_path):
    """The spy the demo installs in verl's workers, called in-process on the real registered losses."""
    import torch
    from verl.trainer.ppo import core_algos
    from verl.workers.config import ActorConfig

    from erc_verl import ERCPolicyLossConfig
    from erc_verl.rehearsal import gate_audit

    g = torch.Generator().manual_seed(0)
    bsz, length = 4, 6
    old_log_prob = -torch.rand(bsz, length, generator=g) * 2
    log_prob = (old_log_prob + torch.randn(bsz, length, generator=g) * 0.05).requires_grad_()
    advantages = torch.randn(bsz, 1, generator=g).expand(bsz, length).clone()
    mask = torch.ones(bsz, length)
    old_entropy = torch.rand(bsz, length, generator=g) + 0.5
    entropy = old_entropy * torch.where(torch.rand(bsz, length, generator=g) < 0.4, 1.2, 1.0)
    outside = int(((entropy / old_entropy) >= 1.05).sum())
    assert 0 < outside < bsz * length

    def config(mode, **extra):
        return ActorConfig(
            strategy="fsdp",
            rollout_n=1,
            ppo_mini_batch_size=1,
            ppo_micro_batch_size_per_gpu=1,
            clip_ratio_low=0.2,
            clip_ratio_high=0.28,
            clip_ratio_c=10.0,
            policy_loss=ERCPolicyLossConfig(loss_mode=mode, **extra),
        )

    path = tmp_path / "audit.ndjson"
    kwargs = dict(
        old_log_prob=old_log_prob,
        log_prob=log_prob,
        advantages=advantages,
        response_mask=mask,
        loss_agg_mode="token-mean",
    )
    erc = gate_audit.make_spy("dapo_erc", core_algos.POLICY_LOSS_REGISTRY["dapo_erc"], str(path))
    erc(**kwargs, config=config("dapo_erc"), entropy=entropy, old_entropy=old_entropy)
    vanilla = gate_audit.make_spy("vanilla", core_algos.POLICY_LOSS_REGISTRY["vanilla"], str(path))
    token = gate_audit._MONITOR_ENTROPIES.set((entropy, old_entropy))  # what the ppo_loss wrapper hands it
    try:
        vanilla(**kwargs, config=config("vanilla", entropy_ratio_monitor=True))
    finally:
        gate_audit._MONITOR_ENTROPIES.reset(token)
    vanilla(**kwargs, config=config("vanilla"))  # no monitor, no entropies: recorded as unchecked

    totals = gate_audit.read_audit(path)
    assert totals["dapo_erc"]["checked"] == 1 and totals["dapo_erc"]["out_of_band"] == outside
    assert totals["dapo_erc"]["out_of_band_with_grad"] == 0
    assert totals["dapo_erc"]["in_band_with_grad"] == bsz * length - outside
    assert totals["vanilla"]["checked"] == 1 and totals["vanilla"]["unchecked"] == 1
    assert totals["vanilla"]["out_of_band_with_grad"] == outside  # small steps: nothing clipped
    assert "no entropies" in totals["vanilla"]["why_unchecked"][0]


def test_a_failed_main_ppo_run_stops_the_demo_and_exits_1(demo_only, tmp_path, monkeypatch, capsys):
    from erc_verl.rehearsal import demo, smoke

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "erc_verl_smoke.json").write_text(json.dumps({"sft_final_loss": 0.5}))
    monkeypatch.setattr(smoke, "prepare_assets", lambda *a, **k: (model_dir, {}))
    log = tmp_path / "main_ppo.log"
    log.write_text("Traceback (most recent call last):\nValueError: boom\n")
    called = []

    def failed_run(args, mode, out, spec, log_fn):
        called.append(mode)
        plan = type("Plan", (), {"run_dir": out / mode})()
        return {
            "mode": mode,
            "recipe": demo.MODES[mode][0],
            "plan": plan,
            "rc": 1,
            "wall_s": 1.0,
            "steps": {},
            "audit": {},
            "audit_path": out / "x",
            "log_path": log,
        }

    monkeypatch.setattr(demo, "run_mode", failed_run)
    rc = cli.main(["demo", "--out", str(tmp_path / "out"), "--no-plot"])  # no --strict: still an error
    assert rc == 1 and called == ["vanilla"]
    stdout = capsys.readouterr().out
    assert "ValueError: boom" in stdout and "not run: dapo_erc" in stdout
    checks = {c["name"]: c for c in json.loads((tmp_path / "out" / "latest" / "checks.json").read_text())}
    assert not checks["run_complete[vanilla]"]["ok"]


STEPS = 2


@pytest.mark.slow
def test_short_demo_through_main_ppo(tmp_path, demo_only, capsys):
    base = tmp_path / "demo"
    out = base / "latest"
    rc = cli.main(
        [
            "demo",
            "--out",
            str(base),
            "--steps",
            str(STEPS),
            "--prompts-per-step",
            "4",
            "--updates-per-batch",
            "2",
            "--quiet",
            "--strict",
        ]
    )
    stdout = capsys.readouterr().out
    assert rc == 0, stdout[-4000:]
    for name in ("demo.png", "summary.md", "checks.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name

    from erc_verl.rehearsal.smoke import read_file_log

    # Both runs went through verl's main_ppo: its file logger wrote every training step.
    for recipe, run_is_erc in (("dapo_qwen1.5b", False), ("dapo_erc_qwen1.5b", True)):
        logs = sorted((out / recipe / "logs").glob("metrics-*.jsonl"))
        assert len(logs) == 1, logs
        steps = read_file_log(logs[0])
        train = {s: m for s, m in steps.items() if "critic/score/mean" in m}
        assert sorted(train) == list(range(1, STEPS + 1)), sorted(steps)
        for m in train.values():
            for key in (
                "critic/score/mean",
                "actor/entropy",
                "actor/erc_keep_frac",
                "actor/grad_norm",
                "actor/entropy_ratio_mean",
                "timing_s/gen",
                "timing_s/update_actor",
            ):
                assert key in m, (recipe, key)
            assert 0 < m["actor/erc_keep_frac"] <= 1
        # The gate audit ran inside the actor worker (another process), on real update calls.
        records = [json.loads(line) for line in (out / recipe / "gate_audit.ndjson").read_text().splitlines()]
        checked = [r for r in records if r["checked"]]
        assert checked and len(checked) == len(records), records[:3]
        assert {r["mode"] for r in records} == {"dapo_erc" if run_is_erc else "vanilla"}
        assert all(r["pid"] != __import__("os").getpid() for r in records)
        out_of_band = sum(r["out_of_band"] for r in checked)
        with_grad = sum(r["out_of_band_with_grad"] for r in checked)
        assert sum(r["in_band_with_grad"] for r in checked) > 0
        if run_is_erc:
            assert with_grad == 0 and out_of_band > 0, (with_grad, out_of_band)
        else:
            assert with_grad > 0  # the contrast: nothing gates the baseline

    checks = {c["name"]: c for c in json.loads((out / "checks.json").read_text())}
    for name in ("run_complete[vanilla]", "run_complete[dapo_erc]", "erc_gate[dapo_erc]", "gate_contrast[vanilla]"):
        assert checks[name]["ok"] and checks[name]["gating"], checks[name]
    assert not checks["reward_trend[vanilla]"]["gating"]
    summary = (out / "summary.md").read_text()
    assert "| vanilla" in summary and "| dapo_erc (ERC)" in summary and "## Self-checks" in summary
    assert "self-checks: all passed" in stdout
