"""What each update mini-batch of a smoke run saw: the entropy ratio, H_old and H_cur, recorded
inside verl's actor worker (tests/test_async_modes.py reads it to prove where H_old comes from).

Loaded like any verl plugin: a run adds this module to `VERL_USE_EXTERNAL_MODULES` in the
workers' runtime env and names an output folder in `ERC_VERL_MINI_BATCH_PROBE`. Without that
variable, importing it installs nothing. It wraps, after erc_verl's own wrappers:

* `TrainingWorker.infer_batch`: an old-log-prob pass (erc_verl flags it for H_old) starts a new
  pass; the update mini-batches that follow are counted from 0 within it;
* `FSDPEngine.forward_backward_batch` (forward_only false: one update mini-batch): writes one
  JSON line per mini-batch to `records.ndjson`: {"rank", "pid", "pass", "mini", "cycle",
  "local", "restored", "tokens", "max_abs_rho_minus_1", "keep_frac", "dump"};
* verl's `ppo_loss` (outermost): per micro-batch, rho = (H_cur + 1e-8) / (H_old + 1e-8) over
  the response tokens (erc_verl.losses.entropy_ratio), with the two entropies as the loss
  receives them; the mini-batch's micro-batches go to `mb-<pass>-<mini>-r<rank>.pt` (prompt
  and response token ids, H_old, H_cur, response mask, temperature);
* `DetachActorWorker.save_model_to_cpu` / `restore_model_from_cpu` (verl's separate_async
  trainer, verl/trainer/ppo/v1/trainer_separate_async.py `_compute_old_log_prob`): `save(0)`
  starts a parameter-sync cycle, and rank 0 writes the weights it saves, the cycle-start
  weights, to `weights-<cycle>.pt` (full tensors, the module's parameter names); `save(k)` is
  local update k of the cycle; a pass after `restore(0)` ran on the restored cycle-start weights.
"""

from __future__ import annotations

import contextvars
import functools
import os
import sys

from erc_verl.integration.hooks import after_import, wrap

from . import records
from .records import append_record

ENV = "ERC_VERL_MINI_BATCH_PROBE"
MODULE = "erc_verl.rehearsal.mini_batch_probe"
_MARK = "_erc_verl_mini_batch_probe"
_STATE = {"pass": -1, "mini": 0, "cycle": -1, "local": None, "restored": False, "pending_restore": False}
_MICRO: contextvars.ContextVar = contextvars.ContextVar("erc_mini_batch_probe", default=None)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def _make_infer_batch(inner):
    @functools.wraps(inner)
    def infer_batch(self, data, *args, **kwargs):
        out = inner(self, data, *args, **kwargs)
        from verl.utils import tensordict_utils as tu

        from erc_verl.integration.verl_0_9_1 import GATE_FLAG

        if tu.get_non_tensor_data(data=data, key=GATE_FLAG, default=None) == "old":
            _STATE.update({"pass": _STATE["pass"] + 1, "mini": 0, "restored": _STATE["pending_restore"]})
        return out

    return infer_batch


def _make_forward_backward_batch(inner, folder: str):
    @functools.wraps(inner)
    def forward_backward_batch(self, data, loss_function, forward_only=False):
        if forward_only:
            return inner(self, data, loss_function, forward_only=forward_only)
        micro: list[dict] = []
        token = _MICRO.set(micro)
        try:
            return inner(self, data, loss_function, forward_only=forward_only)
        finally:
            _MICRO.reset(token)
            _write_mini_batch(folder, micro)
            _STATE["mini"] += 1

    return forward_backward_batch


def _write_mini_batch(folder: str, micro: list[dict]) -> None:
    import torch

    rank = _rank()
    tokens = sum(m["tokens"] for m in micro)
    dump = f"mb-{_STATE['pass']}-{_STATE['mini']}-r{rank}.pt"
    if micro:
        torch.save([m["tensors"] for m in micro], os.path.join(folder, dump))
    append_record(
        os.path.join(folder, "records.ndjson"),
        {
            "rank": rank,
            "pid": os.getpid(),
            "pass": _STATE["pass"],
            "mini": _STATE["mini"],
            "cycle": _STATE["cycle"] if _STATE["cycle"] >= 0 else None,
            "local": _STATE["local"],
            "restored": _STATE["restored"],
            "micro_batches": len(micro),
            "tokens": tokens,
            "max_abs_rho_minus_1": max((m["max_abs_rho_minus_1"] for m in micro), default=None),
            "keep_frac": (sum(m["kept"] for m in micro) / tokens) if tokens else None,
            "dump": dump if micro else None,
        },
    )


def _make_ppo_loss(inner):
    @functools.wraps(inner)
    def ppo_loss(config, model_output, data, dp_group=None):
        box = _MICRO.get()
        if box is not None:
            _observe(box, config, model_output, data)
        return inner(config, model_output, data, dp_group)

    return ppo_loss


def _observe(box: list, config, model_output, data) -> None:
    import torch
    from verl.workers.utils.padding import no_padding_2_padding

    from erc_verl.integration.verl_0_9_1 import GATE_KEY, _padded_response_field
    from erc_verl.losses import entropy_ratio, erc_band

    current = model_output.get(GATE_KEY, None)
    old = _padded_response_field(data, "entropy")
    if current is None or old is None:
        return
    current = no_padding_2_padding(current, data).detach().float().cpu()
    old = old.detach().float().cpu()
    mask = _padded_response_field(data, "response_mask").bool().cpu()
    rho = entropy_ratio(current, old)
    low, high = erc_band(config)
    temperature = data["temperature"] if "temperature" in data.keys() else None
    if isinstance(temperature, torch.Tensor) and temperature.is_nested:
        temperature = temperature.values()
    box.append(
        {
            "tokens": int(mask.sum()),
            "kept": int((mask & (rho > low) & (rho < high)).sum()),
            "max_abs_rho_minus_1": float((rho - 1).abs()[mask].max()) if bool(mask.any()) else 0.0,
            "tensors": {
                "prompts": [t.cpu() for t in data["prompts"].unbind()],
                "responses": [t.cpu() for t in data["responses"].unbind()],
                "old_entropy": old,
                "entropy": current,
                "response_mask": mask,
                "temperature": None if temperature is None else torch.as_tensor(temperature).float().cpu(),
            },
        }
    )


def _make_save(inner, folder: str):
    @functools.wraps(inner)
    def save_model_to_cpu(self, n):
        out = inner(self, n)
        if n == 0:
            _STATE.update({"cycle": _STATE["cycle"] + 1, "local": 0, "pending_restore": False})
            _save_weights(self.actor.engine.module, os.path.join(folder, f"weights-{_STATE['cycle']}.pt"))
        else:
            _STATE["local"] = n
        return out

    return save_model_to_cpu


def _make_restore(inner):
    @functools.wraps(inner)
    def restore_model_from_cpu(self, n):
        out = inner(self, n)
        # restore(0) precedes an old-log-prob pass on the cycle-start weights; restore(k) ends it
        _STATE["pending_restore"] = n == 0
        return out

    return restore_model_from_cpu


def _save_weights(module, path: str) -> None:
    """Every rank gathers (full_tensor is a collective); rank 0 writes."""
    import torch

    full = {}
    for name, param in module.named_parameters():
        tensor = param.full_tensor() if hasattr(param, "full_tensor") else param
        full[name] = tensor.detach().to("cpu", copy=True)
    if _rank() == 0:
        torch.save(full, path)


def _patch_engine_workers(module) -> None:
    losses = sys.modules.get("verl.workers.utils.losses")
    if losses is not None:
        wrap(losses, "ppo_loss", _make_ppo_loss, _MARK)
        module.ppo_loss = losses.ppo_loss  # engine_workers binds ppo_loss by name for the actor's loss
    wrap(module.TrainingWorker, "infer_batch", _make_infer_batch, _MARK)


def _patch_engine(module, folder: str) -> None:
    wrap(module.FSDPEngine, "forward_backward_batch", lambda inner: _make_forward_backward_batch(inner, folder), _MARK)


def _patch_detach_worker(module, folder: str) -> None:
    wrap(module.DetachActorWorker, "save_model_to_cpu", lambda inner: _make_save(inner, folder), _MARK)
    wrap(module.DetachActorWorker, "restore_model_from_cpu", _make_restore, _MARK)


def install(folder: str) -> None:
    """Idempotent. Registered after erc_verl's hooks on the same modules, so it wraps them."""
    import erc_verl  # noqa: F401  (its hooks first)

    os.makedirs(folder, exist_ok=True)
    after_import("verl.workers.engine_workers", _patch_engine_workers)
    after_import("verl.workers.engine.fsdp.transformer_impl", lambda m: _patch_engine(m, folder))
    after_import("verl.experimental.separation.engine_workers", lambda m: _patch_detach_worker(m, folder))


def read_records(folder) -> list[dict]:
    return records.read_records(os.path.join(str(folder), "records.ndjson"))


if os.environ.get(ENV):  # verl imports this module in every process; only a probed run sets the folder
    install(os.environ[ENV])
