"""A real copy when verl saves the trainer's weights "to CPU" on the CPU platform.

verl 0.9.1's `separate_async` trainer keeps the weights of each sync cycle's start and restores
them for every old-log-prob pass of the cycle (verl/trainer/ppo/v1/trainer_separate_async.py,
`_compute_old_log_prob`, through `DetachActorWorker.save_model_to_cpu` /
`restore_model_from_cpu`, verl/experimental/separation/engine_workers.py). For FSDP2 the save is
`verl.utils.fsdp_utils.fsdp2_sharded_save_to_cpu`, which takes each shard with
`.detach().cpu()` (fsdp_utils.py, lines 1167 and 1180). On a GPU that is a copy; on the CPU
platform the shard already lives on the CPU and `.cpu()` returns the very same storage, so the
"saved" cycle-start weights are the live ones, the restore copies them onto themselves, and every
old-log-prob pass of a cycle silently uses the current weights (H_old = H_cur, rho = 1, the PPO
ratio 1: neither ERC nor the clip ever acts).

`install()` (called by erc_verl/cpu/platform.py under VERL_PLATFORM=cpu only) wraps that function
so a saved tensor that shares storage with a live parameter is cloned. verl's result is kept
otherwise (names, DTensor specs, the global spec), so its restore reads it unchanged.
"""

from __future__ import annotations

import functools

from erc_verl.integration.hooks import after_import, wrap

_MARK = "_erc_verl_cpu_save_copies"


def _storage(tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def _local(param):
    return getattr(param, "_local_tensor", param)


def make_fsdp2_sharded_save_to_cpu(verl_save):
    @functools.wraps(verl_save)
    def fsdp2_sharded_save_to_cpu(model):
        state, global_spec = verl_save(model)
        live = {_storage(_local(p)) for _, p in model.named_parameters()}
        for name, (tensor, spec) in list(state.items()):
            if _storage(tensor) in live:
                state[name] = (tensor.clone(), spec)
        return state, global_spec

    return fsdp2_sharded_save_to_cpu


def _patch(module) -> None:
    wrap(module, "fsdp2_sharded_save_to_cpu", make_fsdp2_sharded_save_to_cpu, _MARK)


def install() -> None:
    """Idempotent; waits for verl to import verl.utils.fsdp_utils."""
    after_import("verl.utils.fsdp_utils", _patch)
