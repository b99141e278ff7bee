"""The smoke's /dev/shm ledger (erc_verl/rehearsal/leftovers.py): it records and removes what the
run's own processes mapped, and never a file of another job on the same machine."""

import os
import subprocess
import sys
import time
import uuid

import pytest

from erc_verl.rehearsal.leftovers import ENV, SHM, ShmLedger

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM), reason="no /dev/shm on this machine")

# Maps a new /dev/shm file, says so, holds the mapping until its stdin closes, then exits without
# unlinking it: what a killed vLLM process leaves behind.
HOLD = r"""
import mmap, os, sys
fd = os.open("/dev/shm/" + sys.argv[1], os.O_CREAT | os.O_RDWR, 0o600)
os.ftruncate(fd, 4096)
held = mmap.mmap(fd, 4096)
print("mapped", flush=True)
sys.stdin.read()
"""


def _name():
    return f"psm_erc_verl_test_{uuid.uuid4().hex[:8]}"


class _Holder:
    def __init__(self, name, ledger_env):
        env = {k: v for k, v in os.environ.items() if k != ENV}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**env, **ledger_env},
        )
        assert self.proc.stdout.readline().strip() == "mapped"

    def release(self):
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0


def test_the_ledger_removes_what_its_run_mapped_and_nothing_else(tmp_path):
    ledger = ShmLedger(tmp_path / "run" / "shm.txt")
    ours, no_ledger, other_run = _name(), _name(), _name()
    holders = [
        _Holder(ours, ledger.env),
        _Holder(no_ledger, {}),  # another job of the same user
        _Holder(other_run, ShmLedger(tmp_path / "other" / "shm.txt").env),  # another smoke
    ]
    try:
        assert ledger.scan() == {ours}
        assert ledger.scan() == set()  # recorded once
        for holder in holders:
            holder.release()
        assert all(os.path.exists(SHM + n) for n in (ours, no_ledger, other_run))  # all three leaked
        assert ledger.recorded() == [ours]
        assert ledger.remove() == (1, 4096)
        assert not os.path.exists(SHM + ours)
        assert os.path.exists(SHM + no_ledger) and os.path.exists(SHM + other_run)
    finally:
        for holder in holders:
            if holder.proc.poll() is None:
                holder.proc.kill()
        for name in (ours, no_ledger, other_run):  # this test's own files
            if os.path.exists(SHM + name):
                os.unlink(SHM + name)


def test_the_ledgers_thread_records_while_the_run_goes(tmp_path):
    name = _name()
    try:
        with ShmLedger(tmp_path / "shm.txt") as ledger:
            holder = _Holder(name, ledger.env)
            deadline = time.monotonic() + 30
            while name not in ledger.recorded() and time.monotonic() < deadline:
                time.sleep(0.05)
            holder.release()
        assert ledger.recorded() == [name]
        assert ledger.remove() == (1, 4096) and not os.path.exists(SHM + name)
    finally:
        if os.path.exists(SHM + name):
            os.unlink(SHM + name)
