"""The shared-memory files a smoke run's processes leave in /dev/shm, found and removed by the smoke.

vLLM's engine and worker processes and verl's weight sync create POSIX shared memory in /dev/shm
(Python's `SharedMemory`, `psm_*`; multiprocessing's semaphores, `sem.mp-*`). A process that is
killed (a failed step, Ctrl-C, an engine stopped without its shutdown) leaves them there, and they
hold memory until the machine reboots: a vLLM smoke left two `psm_*` files of 160 and 240 MiB
after every run. /dev/shm is shared by every job on the machine, so the smoke removes only what its
own processes mapped.

Which processes are the run's: every process of the run carries `ERC_VERL_RUN_LEDGER=<file>` in its
environment (the smoke sets it for main_ppo and in Ray's runtime env; vLLM's spawned engine and
worker processes inherit it), and no other process has that value. While the run goes, a thread
reads /proc/<pid>/environ and /proc/<pid>/maps of those processes five times a second and appends
each /dev/shm name they map to the ledger file in the run folder. This needs no hook inside vLLM: its
engine-core process never imports verl, so a hook could not see what it creates. At the end (done,
failed or interrupted) `remove()` unlinks the recorded names that still exist.

Sockets need no ledger: vLLM's and verl's (erc_verl/cpu/vllm_hooks.py moves verl's) go under
TMPDIR, the run's private temp dir, which the smoke removes.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

ENV = "ERC_VERL_RUN_LEDGER"
SHM = "/dev/shm/"


def _run_pids(needle: bytes) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def _shm_maps(pid: int) -> set[str]:
    names = set()
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                path = line.rstrip("\n").split(None, 5)[-1] if line.count(" ") >= 5 else ""
                if path.startswith(SHM) and not path.endswith("(deleted)"):
                    names.add(path[len(SHM) :])
    except OSError:
        pass
    return names


class ShmLedger:
    """`with ShmLedger(path):` records what the run maps in /dev/shm; `remove()` unlinks it afterwards."""

    # vLLM's worker maps one multiprocessing semaphore only while it starts (about 1.5 s seen on
    # 2 cores), and nobody maps it afterwards; a scan takes under 1 ms.
    def __init__(self, path: Path, interval: float = 0.2):
        self.path = Path(path)
        self.interval = interval
        self._needle = f"{ENV}={self.path}".encode()
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def env(self) -> dict[str, str]:
        return {ENV: str(self.path)}

    def scan(self) -> set[str]:
        """Record what the run's processes map now; returns the names new to the ledger."""
        found = set()
        for pid in _run_pids(self._needle):
            found |= _shm_maps(pid)
        new = found - self._seen
        if new:
            self._seen |= new
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.writelines(f"{name}\n" for name in sorted(new))
        return new

    def recorded(self) -> list[str]:
        try:
            return [n for n in self.path.read_text().splitlines() if n and "/" not in n]
        except OSError:
            return []

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.scan()

    def start(self) -> ShmLedger:
        self._thread = threading.Thread(target=self._loop, name="erc-shm-ledger", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.scan()  # anything still mapped by a process that outlived the run

    def remove(self) -> tuple[int, int]:
        """Unlink every recorded /dev/shm name that still exists: (files, bytes) removed."""
        files = size = 0
        for name in self.recorded():
            path = Path(SHM) / name
            try:
                n = path.stat().st_size
                path.unlink()
            except OSError:
                continue
            files, size = files + 1, size + n
        return files, size

    def __enter__(self) -> ShmLedger:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
