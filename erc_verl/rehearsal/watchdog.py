"""Ends a smoke run fast when a vLLM engine or worker fails, with one line naming the component.

When a vLLM worker process fails (a weight load that does not fit, a crashed engine), verl's
trainer does not always notice: verl's weight-sync sender waits on its socket for a reply that
never comes, and main_ppo hung for minutes instead of exiting. The smoke reads main_ppo's console
anyway (runner.py); this watch looks at every line for the errors vLLM's and verl's components
log when they fail, and when main_ppo has not exited `grace` seconds after the first one, it stops
main_ppo's process group. Either way the smoke ends with one line: which component failed, and
its error line.
"""

from __future__ import annotations

import re
import threading
import time

# (component, pattern of the line it logs when it fails), most specific first.
FATAL = (
    (
        "vLLM worker process (WorkerProc)",
        re.compile(r"WorkerProc hit an exception|WorkerProc failed|Worker proc \S+ died"),
    ),
    (
        "vLLM engine (EngineCore)",
        re.compile(r"EngineCore (?:encountered a fatal error|failed to start)|EngineDeadError"),
    ),
    ("verl's weight sync into vLLM", re.compile(r"BufferError|Attempted to load weight")),
    ("verl's vLLM server (vLLMHttpServer)", re.compile(r"ray::vLLMHttpServer\.\S+\(\)")),
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class FailureWatch:
    """on_line(line) for every console line; start(stop) once main_ppo runs; failure() afterwards."""

    def __init__(self, grace: float = 20.0, log=print):
        self.grace = grace
        self.log = log
        self.component: str | None = None
        self.line: str | None = None
        self.stopped = False
        self._seen_at: float | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def on_line(self, line: str) -> None:
        if self.component is not None:
            return
        text = _ANSI.sub("", line).strip()
        for component, pattern in FATAL:
            if pattern.search(text):
                self.component, self.line, self._seen_at = component, text[-300:], time.monotonic()
                return

    def start(self, stop) -> None:
        """stop(): stops main_ppo (its process group); called at most once, from a thread."""

        def run() -> None:
            while not self._done.wait(1.0):
                if self._seen_at is not None and time.monotonic() - self._seen_at >= self.grace:
                    self.stopped = True
                    self.log(
                        f"[smoke] {self.component} failed {self.grace:.0f}s ago and main_ppo has not exited: stopping it"
                    )
                    stop()
                    return

        self._thread = threading.Thread(target=run, name="erc-failure-watch", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def failure(self) -> str | None:
        """The one line naming the failed component, or None when none failed."""
        if self.component is None:
            return None
        return f"{self.component} failed: {self.line}"
