"""The demo's argument checks: all of them before anything is created, one `UserError` line each."""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path

from erc_verl.repro.errors import UserError

from .demo_runs import MODES


def _fix(flag: str, problem: str, fix: str) -> UserError:
    return UserError(f"{flag}: {problem}; {fix}")


def validate(args) -> list[str]:
    """All argument checks, before anything is created. Returns the loss modes."""
    modes = [m.strip() for m in str(args.loss_modes).split(",") if m.strip()]
    if not modes:
        raise _fix(
            "--loss-modes",
            "no loss mode given",
            f"give one or more of {','.join(MODES)}, e.g. --loss-modes vanilla,dapo_erc",
        )
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], list(MODES), n=1)
        raise _fix(
            "--loss-modes",
            f"unknown loss mode {unknown[0]!r}",
            (f"did you mean {hint[0]!r}? " if hint else "") + f"choose from {', '.join(MODES)}",
        )
    if len(set(modes)) != len(modes):
        raise _fix("--loss-modes", "a mode is listed twice", "list each mode once")

    def at_least(flag: str, value, low, why: str = "") -> None:
        if value is None or not value >= low or (isinstance(value, float) and not math.isfinite(value)):
            raise _fix(flag, f"{value} is not allowed{why}", f"give a value >= {low}")

    at_least("--steps", args.steps, 1, " (training steps per run)")
    at_least("--seed", args.seed, 0)
    at_least("--threads", args.threads, 1, " (CPU threads per process)")
    at_least("--prompts-per-step", args.prompts_per_step, 1)
    at_least("--responses-per-prompt", args.responses_per_prompt, 2, " (GRPO compares responses to the same prompt)")
    at_least("--updates-per-batch", args.updates_per_batch, 1)
    at_least("--micro-batch-size", args.micro_batch_size, 1)
    at_least("--max-new-tokens", args.max_new_tokens, 4, " (`</think>`, the digits and the end token must fit)")
    at_least("--max-operand", args.max_operand, 1)
    at_least("--hidden-size", args.hidden_size, 8)
    at_least("--layers", args.layers, 1)
    at_least("--heads", args.heads, 1)
    at_least("--sft-steps", args.sft_steps, 0)
    at_least("--sft-batch-size", args.sft_batch_size, 1)
    for flag, value in (
        ("--lr", args.lr),
        ("--sft-lr", args.sft_lr),
        ("--temperature", args.temperature),
        ("--timeout", args.timeout),
    ):
        if not (value > 0 and math.isfinite(value)):
            raise _fix(flag, f"{value} is not allowed", "give a positive number")
    if args.max_operand > 999:
        raise _fix(
            "--max-operand", f"{args.max_operand} is too large for the prompt and response lengths", "give at most 999"
        )
    if args.hidden_size % args.heads or (args.hidden_size // args.heads) % 2:
        raise _fix(
            "--hidden-size",
            f"{args.hidden_size} is not HEADS ({args.heads}) x an even head size",
            "e.g. --hidden-size 64 --heads 4",
        )
    low, high = args.band
    if not 0 < low < 1 < high:
        raise _fix(
            "--band", f"({low}, {high}) is not a band around 1", "give 0 < LOW < 1 < HIGH, e.g. --band 0.95 1.05"
        )
    if args.prompts_per_step % args.updates_per_batch:
        raise _fix(
            "--updates-per-batch",
            f"{args.updates_per_batch} does not divide --prompts-per-step {args.prompts_per_step}",
            "verl splits a step's prompts into equal mini-batches; pick a divisor",
        )
    mini = args.prompts_per_step // args.updates_per_batch * args.responses_per_prompt
    if mini % args.micro_batch_size:
        raise _fix(
            "--micro-batch-size",
            f"{args.micro_batch_size} does not divide the mini-batch of {mini} sequences "
            f"(PROMPTS_PER_STEP / UPDATES_PER_BATCH x RESPONSES_PER_PROMPT)",
            "pick a divisor",
        )
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise _fix("--out", f"{out} exists and is not a folder", "name a folder")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise _fix("--out", f"cannot write under {probe}", "name a writable folder")
    return modes
