"""The demo's ERC gate audit: a real gradient check inside verl's actor worker processes.

Loaded like any verl plugin (the demo lists it in `VERL_USE_EXTERNAL_MODULES` and names the
output file in `ERC_VERL_GATE_AUDIT`); without that variable, importing it installs nothing.
It wraps the registered losses (d pg_loss / d log_prob per token, split by the entropy-ratio
band) and verl's `ppo_loss` (a monitored baseline's entropies for the spy); docs/demo.md, "How
the gate check stays a gradient check", says how and why.

Each loss call appends one JSON line to the file:
{"pid", "mode", "erc", "low", "high", "checked", "tokens", "out_of_band", "out_of_band_with_grad",
"in_band", "in_band_with_grad", "max_abs_grad_out_of_band"}; "checked": false (with a "why")
marks a call that could not be checked (no graph, no entropies). `read_audit` sums a file.
"""

from __future__ import annotations

import contextvars
import os

from erc_verl.integration.hooks import after_import, wrap

from .records import append_record, read_records

ENV = "ERC_VERL_GATE_AUDIT"
# Baselines and ERC modes the demo can run (verl's vanilla + erc_verl's registered modes).
AUDITED_MODES = ("vanilla", "dapo_erc", "gppo", "gppo_erc")
_SPY = "_erc_verl_gate_audit"
COUNT_KEYS = ("tokens", "out_of_band", "out_of_band_with_grad", "in_band", "in_band_with_grad")

# (entropy, old_entropy) of the micro-batch whose ppo_loss is running, for monitored baselines.
_MONITOR_ENTROPIES: contextvars.ContextVar = contextvars.ContextVar("erc_gate_audit_entropies", default=None)


def gradient_counts(pg_loss, log_prob, response_mask, entropy, old_entropy, low: float, high: float) -> dict:
    """Per-token gradient of pg_loss w.r.t. log_prob, split by the entropy-ratio band."""
    import torch

    from erc_verl.losses import entropy_ratio

    (grad,) = torch.autograd.grad(pg_loss, log_prob, retain_graph=True, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(log_prob)
    mask = response_mask.bool()
    rho = entropy_ratio(entropy, old_entropy)
    inside = mask & (rho > low) & (rho < high)
    outside = mask & ~inside
    moved = grad != 0
    return {
        "tokens": int(mask.sum()),
        "out_of_band": int(outside.sum()),
        "out_of_band_with_grad": int((outside & moved).sum()),
        "in_band": int(inside.sum()),
        "in_band_with_grad": int((inside & moved).sum()),
        "max_abs_grad_out_of_band": float(grad[outside].abs().max()) if bool(outside.any()) else 0.0,
    }


def make_spy(mode: str, real, path: str):
    """The registered loss `mode`, counting which tokens its pg_loss sends gradient to."""
    import functools

    from erc_verl.losses import erc_band
    from erc_verl.modes import ERC_LOSS_MODES

    erc = mode in ERC_LOSS_MODES

    @functools.wraps(real)
    def spy(*args, **kwargs):
        pg_loss, metrics = real(*args, **kwargs)
        config = kwargs.get("config")
        record = {"pid": os.getpid(), "mode": mode, "erc": erc, "checked": False}
        log_prob, response_mask = kwargs.get("log_prob"), kwargs.get("response_mask")
        if erc:
            entropy, old_entropy = kwargs.get("entropy"), kwargs.get("old_entropy")
        else:
            entropy, old_entropy = _MONITOR_ENTROPIES.get() or (None, None)
        if log_prob is None or response_mask is None:
            record["why"] = "called without log_prob/response_mask keywords"
        elif not (log_prob.requires_grad and pg_loss.requires_grad):
            record["why"] = "no graph (forward-only call)"
        elif entropy is None or old_entropy is None:
            record["why"] = "no entropies (neither an ERC loss nor entropy_ratio_monitor)"
        else:
            low, high = erc_band(config)
            record.update(low=low, high=high, checked=True)
            record.update(gradient_counts(pg_loss, log_prob, response_mask, entropy, old_entropy, low, high))
        append_record(path, record)
        return pg_loss, metrics

    setattr(spy, _SPY, True)
    return spy


def _wrap_registry(core_algos) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    for mode in AUDITED_MODES:
        real = core_algos.POLICY_LOSS_REGISTRY.get(mode)
        if real is not None and not getattr(real, _SPY, False):
            core_algos.POLICY_LOSS_REGISTRY[mode] = make_spy(mode, real, path)


def make_ppo_loss(inner):
    """verl's ppo_loss (already wrapped by erc_verl): hands a monitored baseline's entropies to the spy."""
    import functools

    @functools.wraps(inner)
    def ppo_loss(config, model_output, data, dp_group=None):
        from erc_verl.settings import settings

        if not settings(config.policy_loss).monitor:
            return inner(config, model_output, data, dp_group)
        from verl.workers.utils.padding import no_padding_2_padding

        from erc_verl.integration.verl_0_9_1 import GATE_KEY, _padded_response_field

        current = model_output.get(GATE_KEY, None)
        if current is None:
            current = model_output.get("entropy", None)
        old = _padded_response_field(data, "entropy")
        entropies = None if current is None or old is None else (no_padding_2_padding(current, data), old)
        token = _MONITOR_ENTROPIES.set(entropies)
        try:
            return inner(config, model_output, data, dp_group)
        finally:
            _MONITOR_ENTROPIES.reset(token)

    return ppo_loss


def _wrap_ppo_loss(losses) -> None:
    if os.environ.get(ENV):
        wrap(losses, "ppo_loss", make_ppo_loss, _SPY)


def _rebind_engine_workers(engine_workers) -> None:
    # engine_workers binds `ppo_loss` by name when it builds the actor's loss function.
    losses = __import__("sys").modules.get("verl.workers.utils.losses")
    if os.environ.get(ENV) and losses is not None and getattr(losses.ppo_loss, _SPY, False):
        engine_workers.ppo_loss = losses.ppo_loss


def install() -> None:
    """Idempotent. Registered after erc_verl's hooks on the same modules, so it runs after them."""
    import erc_verl  # noqa: F401  (its hooks first: loss registration and plumbing)

    after_import("verl.trainer.ppo.core_algos", _wrap_registry)
    after_import("verl.workers.utils.losses", _wrap_ppo_loss)
    after_import("verl.workers.engine_workers", _rebind_engine_workers)


def read_audit(path) -> dict:
    """{mode: totals} over the audit file: calls, checked, unchecked, the COUNT_KEYS, max |grad| out of band, pids."""
    totals: dict[str, dict] = {}
    for rec in read_records(path):
        t = totals.setdefault(
            rec["mode"],
            {
                "calls": 0,
                "checked": 0,
                "unchecked": 0,
                **{k: 0 for k in COUNT_KEYS},
                "max_abs_grad_out_of_band": 0.0,
                "pids": set(),
                "why_unchecked": set(),
            },
        )
        t["calls"] += 1
        t["pids"].add(rec["pid"])
        if not rec.get("checked"):
            t["unchecked"] += 1
            t["why_unchecked"].add(rec.get("why", "?"))
            continue
        t["checked"] += 1
        for k in COUNT_KEYS:
            t[k] += int(rec[k])
        t["max_abs_grad_out_of_band"] = max(t["max_abs_grad_out_of_band"], float(rec["max_abs_grad_out_of_band"]))
    for t in totals.values():
        t["pids"] = sorted(t["pids"])
        t["why_unchecked"] = sorted(t["why_unchecked"])
    return totals


if os.environ.get(ENV):  # verl imports this module in every process; only the demo's runs set the file
    install()
