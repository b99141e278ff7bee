"""What scripts/launch.sh runs before it starts Ray: the recipe check with the user's overrides,
and for a real launch the paths from MODEL_PATH / TRAIN_FILES / VAL_FILES, the interpreter's
CUDA and the Ray cluster's CPUs and GPUs. One line on stderr and exit 2 on the first problem.

usage: python -m erc_verl.repro.check.preflight [--real] RECIPE [overrides...]
"""

from __future__ import annotations

import os
import sys

from .compose import default_recipes_dir, resolve_recipe
from .core import check_recipe
from .errors import RecipeError
from .paths import check_data_files, check_model_path

# Ray CPUs a V1 run holds besides its GPU workers: the TaskRunner and TransferQueue's controller
# (one each, verl/trainer/main_ppo.py, transfer_queue/controller.py), plus one per TransferQueue
# storage unit (transfer_queue/storage/simple_storage.py); each GPU worker's bundle holds
# ResourcePoolManager.max_colocate_count = 3 CPUs (verl/single_controller/ray/base.py).
_CPUS_PER_GPU = 3


def cpus_needed(cfg, world: int) -> int:
    from omegaconf import OmegaConf

    units = OmegaConf.select(cfg, "transfer_queue.backend.SimpleStorage.num_data_storage_units", default=0) or 0
    return 2 + int(units) + _CPUS_PER_GPU * world


def _hardware(cfg, nnodes: int, per_node: int) -> None:
    world = nnodes * per_node
    need_cpus = cpus_needed(cfg, world)
    address = os.environ.get("RAY_ADDRESS")
    if address:
        import ray

        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            res = ray.cluster_resources()
        except Exception as exc:
            raise RecipeError(
                "RAY_ADDRESS",
                f"cannot reach the Ray cluster at {address} ({type(exc).__name__}); "
                "fix: 'ray start --head' on the head node, or the right RAY_ADDRESS",
            ) from exc
        finally:
            if ray.is_initialized():
                ray.shutdown()
        gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 0))
        where = f"the Ray cluster at {address}"
    else:
        try:
            import torch
        except ImportError as exc:
            raise RecipeError(
                "PYTHON",
                f"{sys.executable} has no torch; fix: PYTHON=/path/to/gpu-env/bin/python scripts/launch.sh ...",
            ) from exc
        if per_node > 0 and not torch.cuda.is_available():
            raise RecipeError(
                "PYTHON",
                f"{sys.executable} has torch {torch.__version__} without CUDA, and GPUS_PER_NODE={per_node}; "
                "fix: PYTHON=/path/to/gpu-env/bin/python scripts/launch.sh ... (the environment with verl[gpu] and erc_verl)",
            )
        gpus = torch.cuda.device_count() if per_node > 0 else 0
        from omegaconf import OmegaConf

        cpus = OmegaConf.select(cfg, "ray_kwargs.ray_init.num_cpus", default=None) or os.cpu_count() or 1
        where = "this machine"
    if gpus < world:
        raise RecipeError(
            "GPUS_PER_NODE",
            f"the layout needs {nnodes} x {per_node} = {world} GPUs, {where} has {gpus}; "
            "fix: NNODES/GPUS_PER_NODE that fit, or 'ray start --num-gpus=N' on every node",
        )
    if cpus < need_cpus:
        raise RecipeError(
            "CPU",
            f"the layout needs at least {need_cpus} Ray CPUs (3 per GPU worker, TaskRunner, TransferQueue controller and "
            f"its storage units), {where} has {cpus}; Ray would wait for them forever; fix: more CPUs per node "
            "('ray start --num-cpus=N'), or -o transfer_queue.backend.SimpleStorage.num_data_storage_units=<fewer>",
        )


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    real = "--real" in args
    args = [a for a in args if a != "--real"]
    recipe, overrides = args[0], args[1:]
    try:
        config_dir, name = resolve_recipe(recipe, default_recipes_dir())
        layout = []
        if real:
            check_model_path(os.environ["MODEL_PATH"], "MODEL_PATH")
            check_data_files(os.environ["TRAIN_FILES"], "TRAIN_FILES")
            check_data_files(os.environ["VAL_FILES"], "VAL_FILES")
            layout = [
                f"trainer.nnodes={os.environ['NNODES']}",
                f"trainer.n_gpus_per_node={os.environ['GPUS_PER_NODE']}",
            ]
        check_recipe(config_dir, name, [*layout, *overrides])
        if real and os.environ.get("ERC_VERL_SKIP_HARDWARE_CHECK") != "1":
            from .compose import PLACEHOLDER_OVERRIDES, compose_recipe

            cfg = compose_recipe(config_dir, name, [*PLACEHOLDER_OVERRIDES, *layout, *overrides])
            _hardware(cfg, int(os.environ["NNODES"]), int(os.environ["GPUS_PER_NODE"]))
    except RecipeError as exc:
        print(f"launch.sh: error: {exc.key}: {exc.message}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"launch.sh: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # an environment that holds erc_verl and verl but not all they import
        text = " ".join(str(exc).split())
        print(
            f"launch.sh: error: PYTHON={sys.executable}: {type(exc).__name__}: {text}; fix: install the GPU "
            "environment as docs/install.md says, or choose another one with PYTHON=/path/to/gpu-env/bin/python",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
