"""Long-CoT math reward of the paper's runs (docs/algorithm.md, "The paper's runs"), as verl's custom reward.

    score = +1   the answer after the last `</think>` is equivalent to the gold answer
            -1   it is not (or cannot be parsed, or checking it timed out)
            -0.5 the response never closes its `</think>` block
    acc   = 1.0 when correct, else 0.0 (DAPO dynamic sampling filters groups on it)

Configure it with `reward.custom_reward_function.path=pkg://erc_verl.repro.reward` and
`reward.custom_reward_function.name=compute_score` (the recipes do).

Why a helper process: math_verify bounds its parse/verify time with SIGALRM, which only works
in a process's main thread, and verl 0.9.1 calls reward functions from executor threads
(`loop.run_in_executor`), where a pathological expression could block a reward worker forever.
So every check runs in a small pool of long-lived helper processes that import nothing but
math_verify; the caller waits at most `timeout_s` and kills (then replaces) a helper that
overruns. Inside the helper, math_verify's own signal timeouts work as a first line.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import subprocess
import sys
import threading

THINK_CLOSE = "</think>"

# Score values of the paper's reward (docs/algorithm.md, "The paper's runs").
SCORE_CORRECT = 1.0
SCORE_WRONG = -1.0
SCORE_UNCLOSED_THINK = -0.5

# Only the tail of the answer is parsed: the final answer sits at the end, and sympy/regex
# time grows with input size. 4096 characters hold any real final answer with its wording.
MAX_ANSWER_CHARS = 4096
# Gold answers are short; a longer one is a data error, cut for the same reason.
MAX_GOLD_CHARS = 1024

# Hard wall-clock bound for one check, including the IPC round trip (seconds). Override with the
# reward kwarg `timeout_s` (reward.custom_reward_function.reward_kwargs) or ERC_VERL_REWARD_TIMEOUT.
DEFAULT_TIMEOUT_S = float(os.environ.get("ERC_VERL_REWARD_TIMEOUT", "10"))
# Helper processes. verl's reward workers call from several threads; each call holds one helper.
POOL_SIZE = int(os.environ.get("ERC_VERL_REWARD_PROCS", str(max(1, min(4, os.cpu_count() or 1)))))
# Seconds a new helper may take to import math_verify and answer its first request.
_STARTUP_S = 60.0

# The helper: reads one JSON request per line on stdin, answers one JSON line on fd 3's
# duplicate of stdout. Its own stdout is pointed at stderr so stray prints cannot corrupt replies.
_HELPER_SRC = r"""
import json, os, sys
out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
from math_verify import parse, verify

def parse_gold(gold):
    if "\\boxed" in gold or "$" in gold:
        parsed = parse(gold, parsing_timeout=T)
    else:
        parsed = parse("$" + gold + "$", parsing_timeout=T) or parse("\\boxed{" + gold + "}", parsing_timeout=T)
    return parsed

T = None
for line in sys.stdin:
    req = json.loads(line)
    T = req.get("inner_timeout")
    T = int(T) if T else None
    try:
        gold = parse_gold(req["gold"])
        pred = parse(req["answer"], parsing_timeout=T)
        ok = bool(gold) and bool(pred) and bool(verify(gold, pred, timeout_seconds=T))
        reply = {"ok": ok, "parsed": bool(pred)}
    except Exception as e:  # a math_verify failure is a wrong answer, never a crash of the reward
        reply = {"ok": False, "parsed": False, "error": repr(e)[:200]}
    out.write(json.dumps(reply) + "\n")
    out.flush()
"""


class _Helper:
    """One helper process and its pipes."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HELPER_SRC],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self.started = False

    def ask(self, request: dict, timeout_s: float) -> dict | None:
        """The helper's reply, or None when it did not answer within timeout_s (then it is dead)."""
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        # The first request also pays for importing math_verify: it may take longer.
        wait = timeout_s if self.started else max(timeout_s, _STARTUP_S)
        ready, _, _ = select.select([self.proc.stdout], [], [], wait)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        if not line:
            return None
        self.started = True
        return json.loads(line)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


class _HelperPool:
    """Up to POOL_SIZE helpers, created on demand, shared by all threads of this process."""

    def __init__(self, size: int):
        self.size = size
        self.idle: queue.LifoQueue[_Helper] = queue.LifoQueue()
        self.lock = threading.Lock()
        self.created = 0
        self.all: list[_Helper] = []
        self.pid = os.getpid()

    def acquire(self) -> _Helper:
        try:
            return self.idle.get_nowait()
        except queue.Empty:
            pass
        with self.lock:
            if self.created < self.size:
                self.created += 1
                helper = _Helper()
                self.all.append(helper)
                return helper
        return self.idle.get()

    def release(self, helper: _Helper) -> None:
        self.idle.put(helper)

    def discard(self, helper: _Helper) -> None:
        """Kill an overrunning helper and let a fresh one take its slot."""
        helper.kill()
        with self.lock:
            self.created -= 1
            if helper in self.all:
                self.all.remove(helper)

    def close(self) -> None:
        for helper in list(self.all):
            helper.kill()
        self.all.clear()


_POOL: _HelperPool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _HelperPool:
    global _POOL
    with _POOL_LOCK:
        # A forked child must not share its parent's pipes: start its own pool.
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = _HelperPool(POOL_SIZE)
        return _POOL


@atexit.register
def _close_pool() -> None:
    if _POOL is not None and _POOL.pid == os.getpid():
        _POOL.close()


# Counters of this process, for tests and diagnostics: how many checks timed out.
STATS = {"checks": 0, "timeouts": 0}


def _say_timeout(timeout_s: float) -> None:
    """One stderr line at this process's 1st, 2nd, 4th, 8th, ... timeout: a timed-out check is
    scored wrong, and a bound too tight for the data would otherwise pass for a weak policy."""
    n = STATS["timeouts"]
    if n & (n - 1) == 0:
        print(
            f"erc_verl reward: {n} of {STATS['checks']} answer checks in this process took over "
            f"{timeout_s:g} s and were scored wrong; if this repeats, raise "
            "reward.custom_reward_function.reward_kwargs.timeout_s (or ERC_VERL_REWARD_TIMEOUT)",
            file=sys.stderr,
            flush=True,
        )


def extract_answer(solution_str: str) -> str | None:
    """The text after the last `</think>` (its last MAX_ANSWER_CHARS), or None if never closed."""
    cut = solution_str.rfind(THINK_CLOSE)
    if cut < 0:
        return None
    return solution_str[cut + len(THINK_CLOSE) :][-MAX_ANSWER_CHARS:]


def is_equivalent(answer: str, gold: str, timeout_s: float | None = None, inner_timeout_s: int | None = None) -> bool:
    """math_verify equivalence of `answer` (free text, boxed or not) and `gold`, bounded in time.

    timeout_s: hard wall-clock bound (helper killed past it). inner_timeout_s: math_verify's own
    signal-based bound for parse and for verify inside the helper (default: half the hard bound;
    0 disables it, which leaves only the hard bound). A timeout counts as not equivalent.
    """
    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)
    if inner_timeout_s is None:
        inner_timeout_s = max(1, int(timeout_s / 2))
    request = {"answer": answer, "gold": gold[:MAX_GOLD_CHARS], "inner_timeout": int(inner_timeout_s) or None}
    pool = _pool()
    helper = pool.acquire()
    STATS["checks"] += 1
    reply = helper.ask(request, timeout_s)
    if reply is None:
        STATS["timeouts"] += 1
        pool.discard(helper)
        _say_timeout(timeout_s)
        return False
    pool.release(helper)
    return bool(reply.get("ok", False))


def compute_score(data_source=None, solution_str=None, ground_truth=None, extra_info=None, **kwargs) -> dict:
    """verl custom reward: {"score": +1 / -1 / -0.5, "acc": 1.0 / 0.0} for one response.

    `data_source` and `extra_info` are accepted for verl's calling convention and not used.
    Extra kwargs (from reward_kwargs): `timeout_s`, the hard bound of one check in seconds, and
    `inner_timeout_s`, math_verify's own bound inside the helper (see is_equivalent).
    """
    if not isinstance(solution_str, str):
        return {"score": SCORE_WRONG, "acc": 0.0}
    answer = extract_answer(solution_str)
    if answer is None:
        return {"score": SCORE_UNCLOSED_THINK, "acc": 0.0}
    if isinstance(ground_truth, list | tuple):  # some data sets store a list of gold answers
        golds = [str(g) for g in ground_truth]
    else:
        golds = [str(ground_truth)] if ground_truth is not None else []
    if not answer.strip() or not golds:
        return {"score": SCORE_WRONG, "acc": 0.0}
    correct = any(
        is_equivalent(answer, g, kwargs.get("timeout_s"), kwargs.get("inner_timeout_s")) for g in golds if g.strip()
    )
    return {"score": SCORE_CORRECT if correct else SCORE_WRONG, "acc": 1.0 if correct else 0.0}
