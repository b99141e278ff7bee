"""Starting verl's main_ppo: its own process group, stopped as a whole, its console captured."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
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


class OutputError(RuntimeError):
    """main_ppo ran (drained, never blocked), but its output could not be handled: the on_line
    callback or the capture file raised, or the pipe could not be read."""


def _pump(proc, fh, on_line, failures: list) -> None:
    """Read main_ppo's output to the end, whatever the callback does: a reader that stopped would
    leave main_ppo blocked on a full pipe. After the first failure the lines are still read,
    and dropped."""
    try:
        for line in proc.stdout:
            if failures:
                continue
            try:
                if fh is not None:
                    fh.write(line)
                    fh.flush()  # a killed run still leaves its console log
                if on_line is not None:
                    on_line(line)
            except Exception as exc:
                failures.append(exc)
    except Exception as exc:  # the pipe itself: _wait sees the reader gone and stops the run
        failures.append(exc)


# How often the wait looks at the reader.
_POLL_S = 1.0


def _wait(proc, timeout: float | None, reader, failures: list) -> int | None:
    """proc's exit code, or None after `timeout` (proc stopped). Never waits on a run whose output
    nobody reads: if reading the pipe failed while proc runs, proc is stopped."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = _POLL_S if deadline is None else max(0.0, min(_POLL_S, deadline - time.monotonic()))
        try:
            return proc.wait(timeout=step)
        except subprocess.TimeoutExpired:
            pass
        if failures and reader is not None and not reader.is_alive() and proc.poll() is None:
            _stop(proc)  # the pipe could not be read: main_ppo would block on it
            return proc.poll()
        if deadline is not None and time.monotonic() >= deadline:
            _stop(proc)
            return None


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
    capture file before the command. If on_line or the capture file raises, the output is still
    read to the end (main_ppo never blocks on a full pipe) and OutputError is raised once main_ppo
    has exited. on_start(stop): called once main_ppo runs, with a function that stops its process
    group (for a watchdog thread).
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
    failures: list[BaseException] = []  # what went wrong with the output (callback, capture file, pipe)
    try:
        proc = subprocess.Popen(
            plan.cmd,
            env=plan.env if env is None else env,
            cwd=str(ROOT),
            stdout=subprocess.PIPE if piped else None,
            stderr=subprocess.STDOUT if piped else None,
            text=True,
            errors="replace",  # a stray byte must not stop the reader
            bufsize=1,
            start_new_session=True,
        )
        reader = threading.Thread(target=_pump, args=(proc, fh, on_line, failures), daemon=True) if piped else None
        if reader is not None:
            reader.start()
        if on_start is not None:
            on_start(lambda: _stop(proc))
        try:
            rc = _wait(proc, timeout, reader, failures)
        except BaseException:  # Ctrl-C or any error here: never leave a trainer and its Ray cluster behind
            _stop(proc)
            raise
        if reader is not None:
            reader.join(timeout=10)
    finally:
        if fh is not None:
            fh.close()
    if failures:
        raise OutputError(f"main_ppo's output could not be handled ({failures[0]!r}); exit code {rc}") from failures[0]
    return rc
