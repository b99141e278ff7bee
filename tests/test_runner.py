"""erc_verl/rehearsal/runner.py: main_ppo's output is read to the end whatever its consumer does."""

import os
import sys

import pytest

from erc_verl.rehearsal.runner import OutputError, run_main_ppo
from erc_verl.rehearsal.smoke import SmokePlan

# About 2 MB of output, far more than a pipe holds (64 KiB on Linux): a writer nobody reads blocks.
# The text layer is flushed before the raw byte, so the byte is the last line whatever the buffering.
LOUD = (
    "import sys\nfor i in range(40000):\n    print('x' * 48, i)\n"
    "sys.stdout.flush()\nsys.stdout.buffer.write(b'\\xff\\n')\n"
)


def _plan(tmp_path, script):
    return SmokePlan("none", tmp_path, tmp_path / "log.jsonl", [sys.executable, "-c", script], dict(os.environ))


def test_a_raising_callback_neither_blocks_the_run_nor_goes_unreported(tmp_path):
    seen = []

    def on_line(line):
        seen.append(line)
        raise BrokenPipeError("stdout closed")

    with pytest.raises(OutputError, match="BrokenPipeError.*exit code 0"):
        # A blocked writer would outlive this timeout (run_main_ppo would then return None).
        run_main_ppo(_plan(tmp_path, LOUD), timeout=60, capture=tmp_path / "out.log", on_line=on_line)
    assert len(seen) == 1  # called once; the rest was read and dropped


def test_a_capture_that_fails_is_reported_after_the_run(tmp_path, monkeypatch):
    lines = []
    with pytest.raises(OutputError, match="exit code 3"):
        run_main_ppo(
            _plan(tmp_path, LOUD + "sys.exit(3)\n"),
            timeout=60,
            on_line=lambda line: lines.append(line) if len(lines) < 5 else 1 / 0,
        )
    assert len(lines) == 5


def test_every_line_reaches_the_callback_and_the_capture(tmp_path):
    lines = []
    rc = run_main_ppo(_plan(tmp_path, LOUD), timeout=60, capture=tmp_path / "out.log", on_line=lines.append)
    assert rc == 0 and len(lines) == 40001
    assert lines[-1] == "\ufffd\n"  # a byte that is not UTF-8 is replaced, not fatal
    log = (tmp_path / "out.log").read_text()
    assert log.startswith("$ ") and log.endswith("".join(lines))  # the command line, then the output
