"""Starting verl's main_ppo: its own process group, stopped as a whole, its console captured."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def stop_process_group(proc, ladder) -> None:
    """Signal proc's process group with each (signal, seconds to wait) of ladder until proc exits."""
    for sig, grace in ladder:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _stop(proc) -> None:
    """Stop main_ppo's process group: SIGINT first (its atexit shuts Ray down), then harder."""
    stop_process_group(proc, ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)))


def run_main_ppo(
    plan,  # a smoke.SmokePlan
    *,
    timeout: float | None = None,
    capture: Path | None = None,
    on_line=None,
    env: dict | None = None,
    header: str | None = None,
    on_start=None,
) -> int | None:
    """Run the plan's main_ppo; returns its exit code, or None when `timeout` stopped it.

    capture: also write the command and its output there; on_line(line): called for every output
    line (both pipe the output; else it goes to this process's stdout). main_ppo runs in its own
    process group, and on a timeout, Ctrl-C or any error here the whole group is stopped, so no
    trainer or Ray cluster outlives the call. env: replaces plan.env. header: written to the
    capture file before the command. on_start(stop): called once main_ppo runs, with a function
    that stops its process group (for a watchdog thread).
    """
    piped = capture is not None or on_line is not None
    fh = None
    if capture is not None:
        capture.parent.mkdir(parents=True, exist_ok=True)
        fh = open(capture, "w")
        if header:
            fh.write(header.rstrip("\n") + "\n")
        fh.write("$ " + " ".join(shlex.quote(c) for c in plan.cmd) + "\n")
        fh.flush()
    try:
        proc = subprocess.Popen(
            plan.cmd,
            env=plan.env if env is None else env,
            cwd=str(ROOT),
            stdout=subprocess.PIPE if piped else None,
            stderr=subprocess.STDOUT if piped else None,
            text=True,
            bufsize=1,
            start_new_session=True,
        )

        def pump() -> None:
            for line in proc.stdout:
                if fh is not None:
                    fh.write(line)
                    fh.flush()  # a killed run still leaves its console log
                if on_line is not None:
                    on_line(line)

        reader = threading.Thread(target=pump, daemon=True) if piped else None
        if reader is not None:
            reader.start()
        if on_start is not None:
            on_start(lambda: _stop(proc))
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            rc = None
        except BaseException:  # Ctrl-C or any error here: never leave a trainer and its Ray cluster behind
            _stop(proc)
            raise
        if reader is not None:
            reader.join(timeout=10)
    finally:
        if fh is not None:
            fh.close()
    return rc
