"""patches/ and scripts/apply_patches.sh.

Fast: each folder applies to the pristine release wheel of its verl version (fetched with
`pip download`), all or nothing, idempotently, and reverts to the byte-identical tree; 3-way
merge and conflict handling in a git checkout. Slow: a venv with the patched release and
erc_verl (scripts/patched_env.sh) runs the ERC update through verl's own actor with the
runtime plumbing off: the 0.7.1 legacy FSDP actor, and the 0.9.1 engine TrainingWorker
compared with the runtime path of the stock .venv.
"""

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APPLY = ROOT / "scripts" / "apply_patches.sh"
VERSIONS = ("0.7.1", "0.9.1")
MARKER = "POLICY_LOSS_EXTENSIONS_API = "
CORE_ALGOS = Path("verl/trainer/ppo/core_algos.py")
WHEEL_CACHE = Path(os.environ.get("ERC_VERL_CACHE", Path.home() / ".cache" / "erc-verl")) / "verl-wheels"


def patch_files(version):
    return sorted((ROOT / "patches" / f"verl-{version}").glob("[0-9][0-9][0-9][0-9]-*.patch"))


def run_apply(*args, check=None):
    proc = subprocess.run(["bash", str(APPLY), *map(str, args)], capture_output=True, text=True, timeout=120)
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


def tree_digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.parts
    }


def under_ci() -> bool:
    """CI services set CI=true; there a missing input fails the run instead of skipping tests."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def release_wheel(version: str, cache: Path = WHEEL_CACHE) -> Path:
    """verl's release wheel from the cache, downloaded with `pip download` when absent. Without it
    the patch tests cannot run: under CI that fails the run (a skipped patch test would let a
    broken patch set pass); elsewhere they are skipped, saying how to provide the wheel."""
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / f"verl-{version}-py3-none-any.whl"
    if wheel.exists():
        return wheel
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"verl=={version}", "-d", str(cache)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode == 0 and wheel.exists():
        return wheel
    why = " ".join(proc.stderr.split())[-300:]
    message = (
        f"cannot download verl=={version} ({why}); the patch tests need it: put {wheel.name} into {cache} "
        "(ERC_VERL_CACHE=DIR puts the cache in DIR/verl-wheels) or give this machine access to PyPI"
    )
    if under_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def wheels():
    """The release wheels of verl, downloaded once (a few MB each) into a user cache."""
    return {version: release_wheel(version) for version in VERSIONS}


def test_a_wheel_that_cannot_be_downloaded_fails_under_ci_and_skips_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds nothing, at once
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="cannot download verl==0.9.1.*ERC_VERL_CACHE"):
        release_wheel("0.9.1", tmp_path)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="cannot download verl==0.9.1"):
        release_wheel("0.9.1", tmp_path)


@pytest.fixture
def pristine(wheels, tmp_path):
    """unpack(version) -> a fresh directory holding the release's verl/ (an unpacked wheel)."""

    def unpack(version, name="tree"):
        dest = tmp_path / f"{name}-{version}"
        with zipfile.ZipFile(wheels[version]) as zf:
            zf.extractall(dest)
        return dest

    return unpack


def git(cwd, *args):
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(Path(cwd).parent))
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


# ---------------------------------------------------------------------------------------------
# the patch files themselves
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_folder_is_a_numbered_format_patch_series_with_reasons(version):
    patches = patch_files(version)
    assert len(patches) >= 5
    assert [int(p.name[:4]) for p in patches] == list(range(1, len(patches) + 1))
    for p in patches:
        text = p.read_text()
        assert text.startswith("From 0000000000000000000000000000000000000000 "), p.name
        subject = re.search(r"^Subject: \[PATCH \d+/\d+\] (.+)$", text, re.M)
        assert subject, p.name
        body = text.split("\n\n", 1)[1].split("\n---\n", 1)[0]
        # every commit message says why the change exists, citing the method it serves
        assert len(body.split()) > 40 and "2512.05591" in body, p.name
        touched = re.findall(r"^diff --git a/(\S+) b/(\S+)$", text, re.M)
        assert touched and all(a == b and a.startswith("verl/") for a, b in touched), p.name
    # the marker erc_verl tests for comes with the last patch only
    assert MARKER in patches[-1].read_text()
    assert all(MARKER not in p.read_text() for p in patches[:-1])


# ---------------------------------------------------------------------------------------------
# apply_patches.sh on unpacked release wheels
# ---------------------------------------------------------------------------------------------


def test_help_prints_usage_and_exits_0_and_a_usage_error_exits_2():
    out = run_apply("--help", check=0)
    assert out.stdout.startswith("Apply (or --revert)") and "usage: scripts/apply_patches.sh" in out.stdout
    assert out.stderr == ""
    assert run_apply("-h", check=0).stdout == out.stdout
    wrong = run_apply("--no-such-option", check=2)
    assert "unknown option --no-such-option" in wrong.stderr and "usage:" in wrong.stderr
    assert run_apply(check=2).stdout == ""


@pytest.mark.parametrize("version", VERSIONS)
def test_every_patch_in_a_folder_is_guarded_by_the_extension_api(version):
    # The hooks the patched actor paths call exist from the first patch on and answer "no" with
    # nothing registered, so the tree behaves as the release until a plugin registers an extension.
    text = patch_files(version)[0].read_text()
    for name in (
        "register_policy_loss_extension",
        "policy_loss_wants_entropy",
        "policy_loss_entropy_fn",
        "policy_loss_extra_terms",
        "policy_loss_extensions_active",
        "policy_loss_entropy_kwargs",
    ):
        assert f"+def {name}(" in text, name


@pytest.mark.parametrize("version", VERSIONS)
def test_applies_is_idempotent_and_reverts_byte_for_byte(pristine, version):
    tree = pristine(version)
    before = tree_digest(tree)

    out = run_apply(tree, check=0).stdout
    assert "applied to" in out
    assert MARKER in (tree / CORE_ALGOS).read_text()
    changed = {k for k, v in tree_digest(tree).items() if before.get(k) != v}
    assert changed and all(k.startswith("verl/") for k in changed)
    for f in changed:  # every patched file still compiles
        compile((tree / f).read_text(), f, "exec")

    again = run_apply(tree, check=0)
    assert "already applied" in again.stdout

    assert "reverted" in run_apply("--revert", tree, check=0).stdout
    assert tree_digest(tree) == before
    assert "nothing to revert" in run_apply("--revert", tree, check=0).stdout
    assert tree_digest(tree) == before


def test_accepts_the_package_dir_and_check_mode(pristine):
    tree = pristine("0.9.1")
    before = tree_digest(tree)
    assert "applies cleanly" in run_apply("--check", tree / "verl", check=0).stdout
    assert tree_digest(tree) == before
    run_apply(tree / "verl", check=0)
    assert MARKER in (tree / CORE_ALGOS).read_text()


def test_unsupported_version_is_refused_untouched(pristine):
    tree = pristine("0.9.1")
    (tree / "verl/version/version").write_text("0.8.0\n")
    before = tree_digest(tree)
    proc = run_apply(tree, check=2)
    assert "0.8.0 has no patch set" in proc.stderr
    assert tree_digest(tree) == before
    run_apply(tree / "verl" / "trainer", check=2)  # not a directory holding verl/


def test_conflict_in_a_plain_tree_changes_nothing(pristine):
    tree = pristine("0.9.1")
    trainer = tree / "verl/trainer/ppo/ray_trainer.py"
    trainer.write_text(trainer.read_text().replace('old_log_prob.batch.pop("entropys")', "pass  # local edit"))
    before = tree_digest(tree)
    proc = run_apply(tree, check=1)
    assert "does not apply" in proc.stderr and "nothing was touched" in proc.stderr
    assert tree_digest(tree) == before


def test_partly_patched_tree_is_refused_both_ways(pristine):
    tree = pristine("0.7.1")
    for p in patch_files("0.7.1")[:3]:
        git(tree, "apply", str(p))
    before = tree_digest(tree)
    assert run_apply(tree, check=1).returncode == 1
    assert run_apply("--revert", tree, check=1).returncode == 1
    assert tree_digest(tree) == before


# ---------------------------------------------------------------------------------------------
# git checkouts (a fork): 3-way merge, and restore on conflict
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def fork(pristine):
    """A git repository holding the 0.9.1 release as one commit, on a branch `fork`."""
    tree = pristine("0.9.1", name="fork")
    git(tree, "init", "-q")
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "verl 0.9.1")
    git(tree, "checkout", "-q", "-b", "fork")
    return tree


def commit_edit(tree, path, old, new):
    f = tree / path
    text = f.read_text()
    assert text.count(old) == 1
    f.write_text(text.replace(old, new))
    git(tree, "commit", "-q", "-am", "fork change")


def test_fork_with_changed_context_gets_a_clean_3way_merge(fork):
    # Three lines above a hunk: plain `git apply` refuses, a 3-way merge does not.
    commit_edit(
        fork,
        "verl/trainer/ppo/ray_trainer.py",
        '"perf/mfu/actor_infer": old_log_prob_mfu,\n',
        '"perf/mfu/actor_infer": old_log_prob_mfu,  # fork\n',
    )
    out = run_apply(fork, check=0).stdout
    assert "3-way merge" in out
    assert MARKER in (fork / CORE_ALGOS).read_text()
    assert "# fork" in (fork / "verl/trainer/ppo/ray_trainer.py").read_text()
    assert (
        'old_log_prob.batch["entropy"] = old_log_prob.batch.pop("entropys")'
        in (fork / "verl/trainer/ppo/ray_trainer.py").read_text()
    )
    assert "already applied" in run_apply(fork, check=0).stdout


def test_fork_with_a_real_conflict_is_restored_exactly(fork):
    commit_edit(
        fork,
        "verl/trainer/ppo/ray_trainer.py",
        'old_log_prob.batch.pop("entropys")',
        'old_log_prob.batch.pop("entropys", None)  # fork',
    )
    index = Path(git(fork, "rev-parse", "--git-path", "index").strip())
    index = index if index.is_absolute() else fork / index
    before, index_before = tree_digest(fork), index.read_bytes()
    proc = run_apply(fork, check=1)
    assert "conflicts" in proc.stderr and "restored" in proc.stderr
    assert tree_digest(fork) == before
    assert index.read_bytes() == index_before
    assert git(fork, "status", "--porcelain") == ""


# ---------------------------------------------------------------------------------------------
# slow: the patched releases, installed, running ERC through verl's own actor
# ---------------------------------------------------------------------------------------------


def patched_python(version) -> str:
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "patched_env.sh"), version], capture_output=True, text=True, timeout=1500
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout.strip().splitlines()[-1]


def run_script(python, script, *args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "PYTHONPATH")}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    proc = subprocess.run(
        [python, str(ROOT / "tests" / "patched" / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])
    return proc


def load(path):
    import torch

    return torch.load(path, weights_only=False)


def max_change(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
def test_legacy_fsdp_actor_of_071_runs_erc_from_the_patched_tree(tmp_path):
    import torch

    out = tmp_path / "legacy_071.pt"
    run_script(patched_python("0.7.1"), "legacy_dp_actor_071.py", out)
    res = load(out)
    assert res["plumbing"] == "patched"
    cases = res["cases"]
    for name, case in cases.items():
        assert "error" not in case, (name, case)
        # ERCPolicyLossConfig came in through the policy_loss _target_, as in fsdp_workers
        assert case["policy_loss_config"] == "ERCPolicyLossConfig", name

    vanilla, open_band, shut = cases["vanilla"], cases["open_band"], cases["shut_band"]
    assert max_change(vanilla["before"], vanilla["after"]) > 0
    for k in vanilla["after"]:
        torch.testing.assert_close(open_band["after"][k], vanilla["after"][k], rtol=0, atol=0, msg=k)
    assert open_band["metrics"]["actor/grad_norm"] == vanilla["metrics"]["actor/grad_norm"]
    assert all(f == 1.0 for f in open_band["metrics"]["actor/erc_keep_frac"])

    assert shut["metrics"]["actor/grad_norm"] == [0.0]
    assert max_change(shut["before"], shut["after"]) == 0.0
    assert all(f == 0.0 for f in shut["metrics"]["actor/erc_keep_frac"])
    assert shut["metrics"]["actor/pg_loss"] == vanilla["metrics"]["actor/pg_loss"]  # value kept, gradient cut

    for name in ("paper_band", "paper_band_gppo", "paper_band_entropy_bonus", "vanilla_monitor"):
        m = cases[name]["metrics"]
        keep, low, high = (m[f"actor/erc_{k}"] for k in ("keep_frac", "clip_frac_low", "clip_frac_high"))
        assert len(keep) == 4, name  # one per micro-batch
        for k, lo, hi in zip(keep, low, high, strict=False):
            assert k + lo + hi == pytest.approx(1.0), name
        assert keep[0] == 1.0 and min(keep[1:]) < 1.0, name  # on-policy first step, off-policy after
        assert all(a <= b for a, b in zip(m["actor/entropy_ratio_min"], m["actor/entropy_ratio_max"], strict=False)), (
            name
        )
    assert "actor/erc_keep_frac" not in vanilla["metrics"]

    # the gate's current entropy: erc_verl's function, without autograd; verl's own only for the bonus
    for name in ("paper_band", "paper_band_gppo", "vanilla_monitor"):
        assert cases[name]["entropy_grad_modes"] == [False] * 4, name
        assert cases[name]["verl_entropy_grad_modes"] == [], name
    assert cases["paper_band_entropy_bonus"]["entropy_grad_modes"] == [False] * 4
    assert cases["paper_band_entropy_bonus"]["verl_entropy_grad_modes"] == [True] * 4
    assert vanilla["entropy_grad_modes"] == vanilla["verl_entropy_grad_modes"] == []
    # the old-log-prob pass's entropy comes from the same function, under no_grad, where the loss
    # wants the entropy; elsewhere verl's own, as in the release
    for name, case in cases.items():
        wants = name not in ("vanilla", "vanilla_rewards", "vanilla_positive_nll")
        used, unused = ("erc", "verl") if wants else ("verl", "erc")
        assert case["old_pass_entropy_modes"][unused] == [], name
        assert case["old_pass_entropy_modes"][used] and not any(case["old_pass_entropy_modes"][used]), name

    # the authors' positive-sample NLL term: per micro-batch value and gradient against the reference
    plain, nll, shut_nll = cases["vanilla_rewards"], cases["vanilla_positive_nll"], cases["shut_band_positive_nll"]
    values, ref_grads = nll["reference_positive_nll"]
    assert nll["metrics"]["actor/positive_nll"] == pytest.approx(values, rel=1e-5, abs=1e-7)
    assert values[3] == 0.0 and min(values[:3]) > 0  # the last micro-batch has no correct response
    assert "actor/positive_nll" not in plain["metrics"]
    assert nll["metrics"]["actor/pg_loss"] == pytest.approx(plain["metrics"]["actor/pg_loss"], rel=1e-6)
    for k, ref in ref_grads.items():
        torch.testing.assert_close(nll["grads"][0][k] - plain["grads"][0][k], 0.1 * ref, rtol=1e-4, atol=1e-6, msg=k)
        # ERC cut every token's policy gradient; the NLL term's gradient is untouched
        torch.testing.assert_close(shut_nll["grads"][0][k], 0.1 * ref, rtol=1e-4, atol=1e-6, msg=k)
    assert all(f == 0.0 for f in shut_nll["metrics"]["actor/erc_keep_frac"])

    # loss_mode=erc over gppo is gppo_erc, update for update
    over, named = cases["paper_band_erc_over_gppo"], cases["paper_band_gppo"]
    assert over["metrics"] == named["metrics"]
    for k in named["after"]:
        assert torch.equal(over["after"][k], named["after"][k]), k

    assert "dapo_erc" in (res["engine_ppo_loss_refusal"] or "")
    assert "vanilla" in (res["engine_ppo_loss_refusal_nll"] or "")


@pytest.mark.slow
def test_engine_091_patched_path_matches_runtime_path(tmp_path):
    import torch

    runtime_python = os.environ.get("ERC_VERL_PYTHON", sys.executable)
    models = (tmp_path / "base", tmp_path / "peaked")
    run_script(runtime_python, "engine_091.py", "make-models", *models)
    run_script(runtime_python, "engine_091.py", *models, tmp_path / "runtime.pt")
    run_script(patched_python("0.9.1"), "engine_091.py", *models, tmp_path / "patched.pt")
    runtime, patched = load(tmp_path / "runtime.pt"), load(tmp_path / "patched.pt")
    assert (runtime["plumbing"], patched["plumbing"]) == ("runtime", "patched")

    for name, rt in runtime["cases"].items():
        pt = patched["cases"][name]
        assert "error" not in rt and "error" not in pt, (name, rt.get("error"), pt.get("error"))
        assert set(pt["metrics"]) == set(rt["metrics"]), name
        # both paths compute H_old and H_cur with erc_verl's entropy function: the same numbers,
        # entropy metrics included
        assert torch.equal(pt["old_entropy"], rt["old_entropy"]), name
        for key, value in rt["metrics"].items():
            assert pt["metrics"][key] == value, (name, key)
        for k in rt["params"]:
            assert (pt["params"][k] == rt["params"][k]).all(), (name, k)
    assert patched["stock_losses_untouched"] and runtime["stock_losses_untouched"]

    def flags(name):
        return patched["cases"][name]["trainer_flags"]

    # what the patched V1 and v0 trainers send with the update (they agree; checked in the script)
    assert flags("dapo_erc") == {"calculate_entropy": False, "policy_loss_entropy": True}
    assert flags("vanilla_monitor") == {"calculate_entropy": False, "policy_loss_entropy": True}
    assert flags("dapo_erc_entropy_bonus") == {"calculate_entropy": True, "policy_loss_entropy": True}
    no_entropy = {"calculate_entropy": False, "policy_loss_entropy": False}
    assert flags("vanilla") == flags("vanilla_positive_nll") == no_entropy
    # and the patched FSDP engine computes the gate's entropy with erc_verl's function, without a
    # graph; verl's own (with its graph) only for the entropy bonus
    for side in (patched, runtime):
        assert side["cases"]["dapo_erc"]["entropy_grad_modes"] == [False] * 4
        assert side["cases"]["dapo_erc"]["verl_entropy_grad_modes"] == []
        assert side["cases"]["dapo_erc_entropy_bonus"]["entropy_grad_modes"] == [False] * 4
        assert side["cases"]["dapo_erc_entropy_bonus"]["verl_entropy_grad_modes"] == [True] * 4
    for name in ("vanilla_positive_nll", "dapo_erc_positive_nll"):
        assert patched["cases"][name]["metrics"]["actor/positive_nll"] > 0, name
    # the old-log-prob pass gets the same request, so H_old comes from the same function
    for name, case in patched["cases"].items():
        assert case["old_pass_flags"] == {
            "calculate_entropy": True,
            "policy_loss_entropy": case["trainer_flags"]["policy_loss_entropy"],
        }, name
    assert "actor/erc_keep_frac" in patched["cases"]["dapo_erc"]["metrics"]
    assert 0.0 < patched["cases"]["dapo_erc"]["metrics"]["actor/erc_keep_frac"] < 1.0
    # loss_mode=erc over gppo is gppo_erc on the patched tree too
    over, named = patched["cases"]["erc_over_gppo"], patched["cases"]["gppo_erc"]
    assert over["metrics"] == named["metrics"]
    for k in named["params"]:
        assert (over["params"][k] == named["params"][k]).all(), k


@pytest.mark.slow
def test_a_recipe_runs_through_main_ppo_on_the_patched_tree(tmp_path):
    """The fork user's path: the smoke through verl's trainer on verl 0.9.1 with patches/ applied.

    The patched environment (scripts/patched_env.sh) has erc_verl installed with its dependencies;
    on a patched tree the runtime wrappers stay off and the patches carry the plumbing. The run
    logs the same ERC metrics as on stock verl.
    """
    python = patched_python("0.9.1")
    plumbing = subprocess.run(
        [python, "-c", "from erc_verl.integration import plumbing; print(plumbing())"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert plumbing.stdout.strip().splitlines()[-1] == "patched", plumbing.stderr[-2000:]
    out = tmp_path / "run"
    drop = ("VERL_PLATFORM", "PYTHONPATH", "NNODES", "GPUS_PER_NODE", "RAY_ADDRESS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    proc = subprocess.run(
        [
            python,
            "-m",
            "erc_verl.rehearsal.smoke",
            "dapo_erc_qwen1.5b",
            "--out",
            str(out),
            "--steps",
            "2",
            "--cache",
            str(ROOT / "runs" / "smoke" / ".cache"),
            "--rollout",
            "hf",  # the patch plumbing is under test, not the rollout engine
        ],
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    from erc_verl.rehearsal.smoke import read_file_log

    (log,) = sorted((out / "logs").glob("metrics-*.jsonl"))
    steps = {s: m for s, m in read_file_log(log).items() if "actor/erc_keep_frac" in m}
    assert sorted(steps) == [1, 2]
    for step, m in steps.items():
        assert 0.0 < m["actor/erc_keep_frac"] <= 1.0, step
        for key in (
            "actor/entropy_ratio_mean",
            "actor/entropy_ratio_min",
            "actor/entropy_ratio_max",
            "actor/positive_nll",
            "critic/score/mean",
        ):
            assert key in m, (step, key)
