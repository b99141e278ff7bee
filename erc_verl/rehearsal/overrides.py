"""What the smoke run changes in a recipe, each change with its reason.

Everything else is the recipe's own: loss mode, ERC band, clip ratios, V1 trainer, dynamic
sampling on `acc`, the paper's reward, validation, file logger. `smoke_overrides()` lists sizes,
backends and places only; the command prints every pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

POLL_S = "0.2"
# The plugins every process of a CPU run loads: erc_verl and its CPU runtime (a plugin of its own;
# the entry points load both too, this also covers a checkout that is not pip-installed).
CPU_PLUGINS = ("erc_verl", "erc_verl.cpu")
RUNTIME_ENV = "ray_kwargs.ray_init.runtime_env.env_vars"
# Logical CPUs per Ray node: TransferQueue, the reward and agent-loop workers, the rollout
# replicas and the training workers each hold some; the machine's real cores are shared anyway.
RAY_CPUS_PER_NODE = 16
# The rollout engines a smoke can run: the recipes' own (verl's vLLM rollout, vLLM's CPU build)
# and erc_verl's light `hf` backend (erc_verl/cpu/rollout.py).
ROLLOUTS = ("vllm", "hf")
DEFAULT_ROLLOUT = "vllm"
# KV cache of each vLLM CPU engine, in GiB (vLLM's CPU backend otherwise reserves a share of the
# machine's memory per engine; VLLM_CPU_KVCACHE_SPACE, read as a string).
VLLM_KV_CACHE_GIB = "1"
# One weight-sync bucket in shared memory per replica (verl's default is 2048 MiB); the tiny
# model's weights are a few MiB.
VLLM_BUCKET_MB = 64


@dataclass(frozen=True)
class Layout:
    """The layout a smoke run rehearses: nnodes x workers_per_node CPU workers."""

    nnodes: int = 1
    workers_per_node: int = 1
    ulysses: int = 1
    recipe_ulysses: int | None = None  # the recipe's own size, when it could be read
    rollout: str = DEFAULT_ROLLOUT

    @property
    def world_size(self) -> int:
        return self.nnodes * self.workers_per_node

    def describe(self) -> list[str]:
        why = ""
        if self.recipe_ulysses is None:
            why = " (the recipe's own size could not be read)"
        elif self.recipe_ulysses == self.ulysses:
            why = f" (the recipe's own; it divides world size {self.world_size})"
        else:
            why = (
                f" (the recipe's {self.recipe_ulysses} does not divide world size {self.world_size}; "
                f"{self.ulysses} is the largest size up to it that divides it and the tiny model's heads)"
            )
        return [
            f"# layout: {self.nnodes} node(s) x {self.workers_per_node} CPU worker(s) = world size {self.world_size}",
            f"# Ulysses sequence parallel: {self.ulysses}{why}",
            f"# rollout: {self.rollout}, tensor parallel 1, {self.world_size} replica(s), one per worker ("
            + (
                f"vLLM's CPU build; each engine's KV cache {VLLM_KV_CACHE_GIB} GiB)"
                if self.rollout == "vllm"
                else "the hf CPU rollout backend has no tensor parallel)"
            ),
        ]


def pick_ulysses(recipe_size: int | None, world_size: int, heads: int | None = None) -> int:
    """The recipe's Ulysses size when it divides the world size, else the largest size below it that does.

    heads: the model's attention heads; Ulysses splits them across the group, so a size must
    divide them too.
    """
    top = max(1, recipe_size or 1)
    return max(
        d for d in range(1, min(top, world_size) + 1) if world_size % d == 0 and (heads is None or heads % d == 0)
    )


def rollout_overrides(rollout: str) -> list[tuple[str, str]]:
    """The rollout engine's CPU settings: the recipe's vLLM in its CPU build, or the `hf` backend."""
    R, env = "actor_rollout_ref.rollout", RUNTIME_ENV
    if rollout == "hf":
        return [
            (f"{R}.name=hf", "light CPU rollout backend (erc_verl/cpu/rollout.py), --rollout hf"),
            (f"{R}.tensor_model_parallel_size=1", "TP 1: the hf backend has no tensor parallel"),
        ]
    if rollout != "vllm":
        raise ValueError(f"rollout {rollout!r}: one of {', '.join(ROLLOUTS)}")
    return [
        (f"{R}.tensor_model_parallel_size=1", "TP 1: one vLLM replica per CPU worker"),
        (f"{R}.dtype=float32", "CPU: fp32, as the actor"),
        (f"{R}.enforce_eager=true", "no CUDA graphs on CPU"),
        (f"+{R}.enable_sleep_mode=false", "vLLM's CPU backend has no sleep mode (verl turns it on)"),
        (f"{R}.free_cache_engine=false", "no sleep mode, so the KV cache stays"),
        (
            f"{R}.checkpoint_engine.update_weights_bucket_megabytes={VLLM_BUCKET_MB}",
            "weight-sync bucket in shared memory: the tiny model needs a few MiB, not 2 GiB",
        ),
        (f"++{env}.VLLM_CPU_KVCACHE_SPACE='{VLLM_KV_CACHE_GIB}'", "KV cache per engine in GiB (else a share of RAM)"),
    ]


def smoke_overrides(
    model_dir: Path,
    data: dict,
    run_dir: Path,
    file_log: Path,
    steps: int = 3,
    *,
    layout: Layout = Layout(),
    ray_address: str | None = None,
    ray_temp_dir: Path | None = None,
    private_env: dict[str, str] | None = None,
) -> list[tuple[str, str]]:
    """(override, reason) pairs: everything the smoke run changes in a recipe.

    ray_address: a Ray cluster the smoke started itself (a layout with several nodes); without
    it main_ppo starts a private local Ray in ray_temp_dir, whatever RAY_ADDRESS says.
    private_env: private_files_env()'s variables, handed to every Ray worker.
    """
    A, R, F = "actor_rollout_ref.actor", "actor_rollout_ref.rollout", "actor_rollout_ref.actor.fsdp_config"
    env = RUNTIME_ENV
    sp = layout.ulysses
    sp_why = f"Ulysses {sp} at world size {layout.world_size} (see the layout lines above)"
    pairs = [
        # model and data
        (f"actor_rollout_ref.model.path={model_dir}", "tiny Qwen2 built and warmed up locally"),
        (f"data.train_files=['{data['train']}']", "addition prompts (prepare-data layout)"),
        (f"data.val_files=['{data['test']}']", "addition prompts, data_source=arith"),
        ("data.max_prompt_length=32", "short lengths"),
        ("data.max_response_length=8", "short lengths"),
        ("data.train_batch_size=8", "small batch"),
        ("data.gen_batch_size=8", "small batch (V1 with filter_groups uses 1 anyway)"),
        ("data.dataloader_num_workers=0", "2-core machine"),
        ("reward.num_workers=1", "2-core machine (each reward worker is a process)"),
        ("actor_rollout_ref.model.enable_gradient_checkpointing=false", "tiny model"),
        ("+actor_rollout_ref.model.override_config.attn_implementation=sdpa", "CPU attention"),
        # rollout
        *rollout_overrides(layout.rollout),
        (f"{R}.n=4", "4 responses per prompt"),
        (f"{R}.val_kwargs.n=2", "2 samples per validation prompt"),
        (f"{R}.agent.num_workers=1", "2-core machine"),
        (f"{R}.prompt_length=32", "short lengths"),
        (f"{R}.response_length=8", "short lengths"),
        # actor
        (f"{A}.strategy=fsdp2", "FSDP1 syncs module states on a GPU"),
        (f"{F}.strategy=fsdp2", "FSDP1 syncs module states on a GPU"),
        (f"{A}.ppo_mini_batch_size=2", "4 mini-batches per step, so the ERC band sees a moving policy"),
        (f"{A}.ulysses_sequence_parallel_size={sp}", sp_why),
        (f"{F}.ulysses_sequence_parallel_size={sp}", sp_why),
        (f"{F}.param_offload=false", "no offload on CPU"),
        (f"{F}.optimizer_offload=false", "no offload on CPU"),
        (f"{F}.model_dtype=fp32", "CPU: fp32"),
        (f"{F}.dtype=float32", "CPU: fp32"),
        (f"+{F}.mixed_precision.param_dtype=fp32", "CPU: fp32"),
        (f"+{F}.mixed_precision.reduce_dtype=fp32", "CPU: fp32"),
        (f"+{F}.mixed_precision.buffer_dtype=fp32", "CPU: fp32"),
        (f"{A}.use_torch_compile=false", "no compiler on CPU"),
        (f"{F}.use_torch_compile=false", "no compiler on CPU"),
        (f"{A}.optim.lr=0.002", "tiny model, 3 steps: a step size that moves the entropy ratio"),
        (f"{A}.optim.lr_warmup_steps=0", "3 steps only"),
        # trainer
        ("trainer.device=cpu", "CPU"),
        (f"trainer.nnodes={layout.nnodes}", f"{layout.nnodes} Ray node(s)"),
        (
            f"trainer.n_gpus_per_node={layout.workers_per_node}",
            f"{layout.workers_per_node} worker process(es) per node",
        ),
        (f"trainer.total_training_steps={steps}", f"{steps} training steps"),
        (f"trainer.test_freq={steps}", "validation before training and at the end"),
        ("trainer.save_freq=2", "a checkpoint at step 2"),
        ("trainer.resume_mode=auto", "rerun in the same run folder: continue from its last checkpoint"),
        ("trainer.logger=[console,file]", "no wandb"),
        (f"trainer.default_local_dir={run_dir}", "checkpoints in the run folder"),
        (f"hydra.run.dir={run_dir}/hydra", "Hydra's own files in the run folder, not ./outputs"),
        ("algorithm.filter_groups.max_num_gen_batches=10", "fail, not spin, if every group is filtered"),
    ]
    # Ray: never a cluster the smoke did not start.
    if ray_address is None:
        pairs += [
            (
                "++ray_kwargs.ray_init.address=local",
                "a private local Ray, even if RAY_ADDRESS or a running cluster exists",
            ),
            (
                f"ray_kwargs.ray_init.num_cpus={RAY_CPUS_PER_NODE}",
                "logical CPUs for Ray's actors (TransferQueue takes some)",
            ),
        ]
        if ray_temp_dir is not None:
            pairs.append(
                (f"++ray_kwargs.ray_init._temp_dir={ray_temp_dir}", "Ray's files in a private temp dir, never /tmp/ray")
            )
    else:
        pairs += [
            (f"++ray_kwargs.ray_init.address={ray_address}", "the local multi-node Ray cluster this smoke started"),
            ("ray_kwargs.ray_init.num_cpus=null", "ray.init refuses num_cpus when it connects to a cluster"),
        ]
    pairs += [
        ("+ray_kwargs.ray_init.include_dashboard=false", "2-core machine"),
        ("transfer_queue.backend.SimpleStorage.num_data_storage_units=1", "each unit holds a Ray CPU"),
        (f"++{env}.VERL_PLATFORM=cpu", "CPU platform in every worker"),
        (f"++{env}.VERL_FILE_LOGGER_PATH={file_log}", "file log in the run folder"),
        (f"++{env}.ERC_VERL_REPLAY_POLL_S='{POLL_S}'", "replay buffer polls every 0.2 s, not 2 s (steps are short)"),
    ]
    for key, value in (private_env or {}).items():  # quoted: Ray takes strings only
        pairs.append((f"++{env}.{key}='{value}'", _PRIVATE_WHY[key]))
    return pairs


_PRIVATE_WHY = {
    "TMPDIR": "temp files and sockets (vLLM's, verl's) in the run's private temp dir, removed afterwards",
    "VLLM_CACHE_ROOT": "vLLM's cache in the private temp dir, not ~/.cache/vllm",
    "HF_DATASETS_CACHE": "the datasets cache of the parquet in the private temp dir, not ~/.cache",
    "VLLM_NO_USAGE_STATS": "vLLM writes no usage file under ~/.config",
    "ERC_VERL_RUN_LEDGER": "marks the run's processes: their /dev/shm files are removed afterwards (leftovers.py)",
}


def private_files_env(temp_dir: Path, ledger: Path) -> dict[str, str]:
    """Variables that keep what the run's processes write in its private temp dir and run folder."""
    tmp = Path(temp_dir) / "tmp"
    return {
        "TMPDIR": str(tmp),
        "VLLM_CACHE_ROOT": str(tmp / "vllm-cache"),
        "HF_DATASETS_CACHE": str(tmp / "hf-datasets"),
        "VLLM_NO_USAGE_STATS": "1",
        "ERC_VERL_RUN_LEDGER": str(ledger),
    }
