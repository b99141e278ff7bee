"""The smoke run in each of main_ppo's V1 trainer modes (`trainer.v1.trainer_mode`).

`sync` and `colocate_async` run on the smoke's CPU layout as they are. `separate_async` also
needs, and gets here (each printed with its reason like every smoke override):

* data.train_batch_size = parameter_sync_step x the smoke's ppo_mini_batch_size: verl asserts it
  (verl/trainer/ppo/v1/trainer_separate_async.py, line 59); parameter_sync_step stays the
  recipe's or the user's, since it is part of the method (local updates per weight sync);
* a standalone rollout pool of 1 node x 1 CPU worker (actor_rollout_ref.rollout.nnodes /
  n_gpus_per_node; verl asserts both > 0, lines 64-66): one rollout replica beside the trainer's;
* the checkpoint engine that syncs the pool's weights: `cpu_ray`, the CPU runtime's backend
  (erc_verl/cpu/checkpoint_engine.py), since verl refuses `naive` there (line 68) and its other
  backends need a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

R = "actor_rollout_ref.rollout"
CHECKPOINT_BACKEND = "cpu_ray"
CHECKPOINT_MODULE = "erc_verl.cpu.checkpoint_engine"
SEPARATE = "separate_async"


@dataclass(frozen=True)
class TrainerMode:
    """The trainer mode a smoke run rehearses, read from the recipe with the user's overrides."""

    mode: str = "sync"
    parameter_sync_step: int = 1
    train_batch_size: int | None = None  # separate_async: set by the smoke
    mini_batch_size: int | None = None
    rollout_nnodes: int = 1
    rollout_workers_per_node: int = 1

    def overrides(self) -> list[tuple[str, str]]:
        if self.mode != SEPARATE:
            return []
        pairs = []
        if self.train_batch_size is not None:
            pairs.append(
                (
                    f"data.train_batch_size={self.train_batch_size}",
                    f"separate_async: parameter_sync_step {self.parameter_sync_step} x ppo_mini_batch_size "
                    f"{self.mini_batch_size} (verl asserts it, trainer_separate_async.py:59)",
                )
            )
        return pairs + [
            (f"{R}.nnodes={self.rollout_nnodes}", "separate_async: the standalone rollout pool, 1 node"),
            (f"{R}.n_gpus_per_node={self.rollout_workers_per_node}", "... of 1 CPU worker (one rollout replica)"),
            (
                f"{R}.checkpoint_engine.backend={CHECKPOINT_BACKEND}",
                "weights to the standalone pool through Ray (verl's backends need a GPU; naive is refused there)",
            ),
            (
                f"{R}.checkpoint_engine.custom_backend_module={CHECKPOINT_MODULE}",
                "registers cpu_ray where verl builds checkpoint engines (erc_verl/cpu/checkpoint_engine.py)",
            ),
        ]

    def describe(self) -> list[str]:
        if self.mode != SEPARATE:
            return [f"# trainer mode: {self.mode}"]
        pool = self.rollout_nnodes * self.rollout_workers_per_node
        return [
            f"# trainer mode: separate_async, parameter_sync_step {self.parameter_sync_step} "
            f"({self.parameter_sync_step} local updates per step, one weight sync per step)",
            f"# standalone rollout pool: {self.rollout_nnodes} node(s) x {self.rollout_workers_per_node} CPU "
            f"worker(s) = {pool} rollout replica(s) beside the trainer's; weights by checkpoint engine {CHECKPOINT_BACKEND}",
        ]

    def layout(self) -> dict:
        """layout.json's entries for the trainer mode."""
        data: dict = {"trainer_mode": self.mode}
        if self.mode == SEPARATE:
            data["parameter_sync_step"] = self.parameter_sync_step
            data["standalone_rollout"] = {
                "nnodes": self.rollout_nnodes,
                "workers_per_node": self.rollout_workers_per_node,
                "replicas": self.rollout_nnodes * self.rollout_workers_per_node,
                "checkpoint_engine": CHECKPOINT_BACKEND,
            }
        return data


def composed(recipe: str, recipes_dir: Path, overrides: list[str]):
    """The recipe with these overrides as main_ppo composes it; None where it does not compose
    (main_ppo composes it again and reports the error itself)."""
    from erc_verl.repro.check.compose import compose_recipe

    try:
        return compose_recipe(Path(recipes_dir).resolve(), recipe, overrides)
    except Exception:
        return None


class TrainerModeError(ValueError):
    """A separate_async smoke whose sizes verl would refuse: one line naming the fix."""


def read_trainer_mode(recipe: str, recipes_dir: Path, extra: list[str], size_overrides: list[str]) -> TrainerMode:
    """The recipe's trainer mode with the user's overrides; for separate_async, the smoke's sizes.

    size_overrides: the smoke's own data.train_batch_size and ppo_mini_batch_size overrides (from
    overrides.smoke_overrides), composed before the user's, as the smoke applies them.
    """
    from omegaconf import OmegaConf

    cfg = composed(recipe, recipes_dir, [*size_overrides, *extra])
    if cfg is None:
        return TrainerMode()
    if not OmegaConf.select(cfg, "trainer.use_v1", default=True):
        return TrainerMode(mode="v0")
    mode = str(OmegaConf.select(cfg, "trainer.v1.trainer_mode", default="sync"))
    if mode != SEPARATE:
        return TrainerMode(mode=mode)
    sync = OmegaConf.select(cfg, "trainer.v1.separate_async.parameter_sync_step")
    mini = OmegaConf.select(cfg, "actor_rollout_ref.actor.ppo_mini_batch_size")
    user_batch = any(o.lstrip("+").startswith("data.train_batch_size=") for o in extra)
    if not user_batch:
        OmegaConf.update(cfg, "data.train_batch_size", sync * mini)
    from erc_verl.repro.check.layout import separate_async_problem

    problem = separate_async_problem(cfg)
    if problem:
        raise TrainerModeError(problem)
    return TrainerMode(
        mode=mode,
        parameter_sync_step=int(sync),
        train_batch_size=None if user_batch else int(sync * mini),
        mini_batch_size=int(mini),
    )
