"""Refuse Ulysses sequence parallelism with an attention implementation it does not cover.

verl 0.9.1 puts its Ulysses all-to-all into transformers' flash-attention forward only
(``verl/models/transformers/monkey_patch.py``, ``_ulysses_flash_attention_forward``). With any
other ``attn_implementation`` (sdpa, eager, flex_attention) and Ulysses > 1, each rank attends
over its own shard of the packed sequence and nothing errors: on a GPU as much as on a CPU.
The one exception is sdpa on erc_verl's CPU platform, which ``erc_verl/cpu/ulysses.py`` makes
Ulysses-aware for the CPU rehearsal runs.

``ulysses_attention_problem`` is the one rule; ``erc-verl check`` calls it on the composed
config, and the actor worker calls it before it builds the model (:func:`install`).
"""

from __future__ import annotations

import functools
import os

from ..settings import select as _select

# verl's default when model.override_config names none (verl/workers/config/model.py).
VERL_DEFAULT_ATTENTION = "flash_attention_2"
COVERED = ("flash_attention_2", "flash_attention_3")


def ulysses_sizes(actor_rollout_ref) -> dict[str, int]:
    """The Ulysses size of the actor and the reference model, as verl reads them."""
    sizes = {}
    for role in ("actor", "ref"):
        size = _select(actor_rollout_ref, f"{role}.fsdp_config.ulysses_sequence_parallel_size") or _select(
            actor_rollout_ref, f"{role}.ulysses_sequence_parallel_size", 1
        )
        sizes[role] = int(size)
    return sizes


def ulysses_attention_problem(actor_rollout_ref, platform: str | None = None) -> str | None:
    """One line naming the fix, or None when every Ulysses group is covered.

    ``actor_rollout_ref`` is the trainer config's ``actor_rollout_ref`` node (DictConfig or dict).
    ``platform`` defaults to ``VERL_PLATFORM``.
    """
    platform = (os.environ.get("VERL_PLATFORM", "") if platform is None else platform).strip().lower()
    impl = _select(actor_rollout_ref, "model.override_config.attn_implementation") or VERL_DEFAULT_ATTENTION
    size = max(ulysses_sizes(actor_rollout_ref).values())
    if size <= 1 or impl in COVERED or (impl == "sdpa" and platform == "cpu"):
        return None
    return (
        f"ulysses_sequence_parallel_size={size} with attn_implementation={impl}: verl's Ulysses covers flash "
        "attention only, so each rank would attend over its own shard of the sequence, silently; set "
        "actor_rollout_ref.model.override_config.attn_implementation=flash_attention_2 "
        "or actor_rollout_ref.actor.ulysses_sequence_parallel_size=1"
    )


class UlyssesAttentionError(ValueError):
    pass


def _make_init_model(verl_init_model):
    # functools.wraps also copies verl's @register dispatch attributes onto the wrapper.
    @functools.wraps(verl_init_model)
    def init_model(self, *args, **kwargs):
        problem = ulysses_attention_problem(self.config)
        if problem is not None and _uses_erc(self.config):
            raise UlyssesAttentionError(f"erc_verl: {problem}")
        return verl_init_model(self, *args, **kwargs)

    return init_model


def _wrap_init_model(cls) -> None:
    from .hooks import wrap

    wrap(cls, "init_model", _make_init_model, "_erc_verl_ulysses_check")


def _uses_erc(actor_rollout_ref) -> bool:
    """Runs that train with erc_verl's losses, monitor or NLL term; others are left as verl has them."""
    from .support import erc_actor

    return erc_actor(_select(actor_rollout_ref, "actor"))


def _patch_engine_workers(module) -> None:
    worker = getattr(module, "ActorRolloutRefWorker", None)
    if worker is not None and hasattr(worker, "init_model"):
        _wrap_init_model(worker)


def install() -> None:
    from .hooks import after_import

    after_import("verl.workers.engine_workers", _patch_engine_workers)
