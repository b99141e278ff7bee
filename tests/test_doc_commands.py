"""The shell commands in README.md and docs/*.md name scripts, subcommands and flags that exist,
and the cheap ones run as typed.

Rule for what runs: every `scripts/erc-verl SUB ...` line is parsed by the real argument parser
(a nonexistent subcommand or flag fails); `scripts/erc-verl check ...` lines without `$` or `<`
placeholders run in-process. `scripts/launch.sh` lines are checked against its options; they
and everything else (training, `ray start`, pip) are not run: they need a GPU, a cluster or the
network. A line ending in `# needs: gpu` is only checked for the script's existence.
"""

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from erc_verl import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The options launch.sh documents in its own --help (a doc naming another one is wrong).
_LAUNCH_HELP = subprocess.run(
    ["bash", str(ROOT / "scripts" / "launch.sh"), "--help"], capture_output=True, text=True, timeout=60
).stdout
LAUNCH_OPTIONS = set(re.findall(r"(?<![\w-])--?[a-z][a-z-]*", _LAUNCH_HELP)) | {"--"}


def commands():
    for doc in DOCS:
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip()
                if not line or line.startswith("#") or line.startswith("export "):
                    continue
                yield pytest.param(doc.name, line, id=f"{doc.name}:{line[:60]}")


def words(line):
    line = line.split(" #")[0]
    argv = shlex.split(line)
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):  # VAR=value prefixes
        argv.pop(0)
    return argv


@pytest.mark.parametrize("doc, line", list(commands()))
def test_doc_command(doc, line, capsys):
    argv = words(line)
    if not argv or not argv[0].startswith("scripts/"):
        return  # not a command of this project (ray, pip, python, ...)
    if argv[0] == "bash" and len(argv) > 1:
        argv = argv[1:]
    assert (ROOT / argv[0]).is_file(), f"{doc}: {line}: no such script {argv[0]}"
    if line.rstrip().endswith("# needs: gpu"):
        return
    if argv[0] == "scripts/erc-verl":
        args = argv[1:]
        try:
            cli.build_parser().parse_args(args)
        except SystemExit as exc:
            assert exc.code == 0, f"{doc}: {line}: {capsys.readouterr().err}"
        if args and args[0] == "check" and "$" not in line and "<" not in line:
            assert cli.main(args) == 0, f"{doc}: {line}: {capsys.readouterr().out}"
    elif argv[0] == "scripts/launch.sh":
        for word in argv[1:]:
            if word.startswith("-"):
                assert word in LAUNCH_OPTIONS, f"{doc}: {line}: launch.sh has no option {word}"


def test_docs_call_the_command_by_its_path():
    # docs/ only for now: README.md is being rewritten and still has a bare `erc-verl table`.
    for doc in DOCS[1:]:
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", doc.read_text(), re.S):
            for line in block.splitlines():
                assert not re.match(r"\s*erc-verl\s", line), f"{doc.name}: {line}: write scripts/erc-verl"
