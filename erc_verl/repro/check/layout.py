"""World size, Ulysses, rollout parallelism and batch divisibility: what verl 0.9.1 rejects only
after Ray has started, checked here with verl's rules (named below where each lives in verl)."""

from __future__ import annotations

from .compose import PLACEHOLDER_MODEL
from .errors import RecipeError
from .paths import check_model_path


def _positive_int(cfg, key):
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RecipeError(key, f"{value!r} must be a positive integer")
    return value


def check_cluster(cfg, use_ref: bool, check_paths: bool = False) -> None:
    """What verl 0.9.1 rejects only after Ray has started, with verl's own rules.

    - world size = trainer.nnodes * trainer.n_gpus_per_node (validate_config's n_gpus);
    - the FSDP engine builds a (dp, sp) device mesh, so the Ulysses size must divide the world
      size (engine/fsdp/transformer_impl.py _init_device_mesh; the actor-level and the
      fsdp_config key are both read);
    - the hybrid rollout builds a (dp, tp * dp_rollout, pp) mesh over the same workers:
      rollout TP x DP x PP must divide the world size (engine_workers.py init_model) and be at
      most it (llm_server.py: world // rollout world replicas);
    - each PPO mini-batch (ppo_mini_batch_size * rollout.n samples) is split evenly over the
      data-parallel ranks, dp = world / Ulysses (engine_workers.py train_mini_batch asserts it);
    - with use_dynamic_bsz a micro-batch holds max_token_len_per_gpu * Ulysses tokens and must
      fit the longest sequence, max_prompt_length + max_response_length
      (utils/seqlen_balancing.py rearrange_micro_batches asserts it), for the update and for the
      log-prob passes;
    - trainer.use_v1=false with dynamic sampling runs another experiment (the v0 trainer has no
      filter_groups); the trainer refuses it too (erc_verl.integration.verl_0_9_1);
    - trainer.v1.trainer_mode=separate_async trains parameter_sync_step mini-batches per step:
      data.train_batch_size = parameter_sync_step * ppo_mini_batch_size (separate_async_problem);
    - with check_paths (what `erc-verl check` does on the machine it runs on): a model path the
      user set, other than the placeholder, is an existing local folder with a config.json.
    """
    from omegaconf import OmegaConf

    def get(key, default=None):
        return OmegaConf.select(cfg, key, default=default)

    if not get("trainer.use_v1", True):
        from erc_verl.integration.verl_0_9_1 import v0_trainer_problem

        problem = v0_trainer_problem(cfg)
        if problem:
            raise RecipeError("trainer.use_v1", problem)

    problem = separate_async_problem(cfg)
    if problem:
        raise RecipeError("trainer.v1.separate_async.parameter_sync_step", problem)

    nnodes = _positive_int(cfg, "trainer.nnodes")
    per_node = _positive_int(cfg, "trainer.n_gpus_per_node")
    world = nnodes * per_node
    where = f"the world size trainer.nnodes * trainer.n_gpus_per_node = {nnodes} * {per_node} = {world}"

    roles = [("actor", "actor_rollout_ref.actor")] + ([("ref", "actor_rollout_ref.ref")] if use_ref else [])
    sp = 1
    for role, node in roles:
        for key in (f"{node}.ulysses_sequence_parallel_size", f"{node}.fsdp_config.ulysses_sequence_parallel_size"):
            value = get(key)
            if value is None:
                continue
            if not isinstance(value, int) or value < 1:
                raise RecipeError(key, f"{value!r} must be a positive integer")
            if world % value:
                raise RecipeError(
                    key,
                    f"Ulysses size {value} does not divide {where}; fix: a divisor of {world} "
                    "(set it and the other ulysses_sequence_parallel_size key alike), or more GPUs",
                )
            if role == "actor":
                sp = max(sp, value)

    rollout = "actor_rollout_ref.rollout"
    tp = get(f"{rollout}.tensor_model_parallel_size", 1)
    rdp = get(f"{rollout}.data_parallel_size", 1)
    pp = get(f"{rollout}.pipeline_model_parallel_size", 1)
    replica = tp * rdp * pp
    if replica > world or world % replica:
        raise RecipeError(
            f"{rollout}.tensor_model_parallel_size",
            f"one rollout replica needs TP {tp} x DP {rdp} x PP {pp} = {replica} GPUs, which does not divide {where}; "
            f"fix: a tensor_model_parallel_size that divides {world}",
        )

    model_path = get("actor_rollout_ref.model.path")
    if check_paths and isinstance(model_path, str) and model_path != PLACEHOLDER_MODEL:
        check_model_path(model_path)

    dp = world // sp
    n = get(f"{rollout}.n", 1)
    mini = get("actor_rollout_ref.actor.ppo_mini_batch_size")
    if isinstance(mini, int) and isinstance(n, int) and (mini * n) % dp:
        raise RecipeError(
            "actor_rollout_ref.actor.ppo_mini_batch_size",
            f"a mini-batch of {mini} prompts x rollout.n {n} = {mini * n} responses cannot be split evenly over "
            f"{dp} data-parallel ranks (world {world} / Ulysses {sp}); fix: GPU counts or sizes with "
            f"{mini * n} % (world / Ulysses) == 0",
        )

    longest = (get("data.max_prompt_length") or 0) + (get("data.max_response_length") or 0)
    budgets = [("actor_rollout_ref.actor.use_dynamic_bsz", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu")]
    budgets.append((f"{rollout}.log_prob_use_dynamic_bsz", f"{rollout}.log_prob_max_token_len_per_gpu"))
    if use_ref:
        budgets.append(
            ("actor_rollout_ref.ref.log_prob_use_dynamic_bsz", "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu")
        )
    for flag, key in budgets:
        budget = get(key)
        if get(flag, False) and isinstance(budget, int) and budget * sp < longest:
            need = -(-longest // sp)
            raise RecipeError(
                key,
                f"{budget} tokens x Ulysses {sp} = {budget * sp} per micro-batch is less than the longest sequence "
                f"(max_prompt_length + max_response_length = {longest}); verl would stop at the first full-length "
                f"response; fix: -o {key}={need} or more",
            )


def separate_async_problem(cfg) -> str | None:
    """verl 0.9.1's separate_async trainer asserts data.train_batch_size == parameter_sync_step *
    ppo_mini_batch_size when it is built, after Ray has started (trainer_separate_async.py, line 59):
    each step samples parameter_sync_step mini-batches, one local update each."""
    from omegaconf import OmegaConf

    if not OmegaConf.select(cfg, "trainer.use_v1", default=True):
        return None
    if OmegaConf.select(cfg, "trainer.v1.trainer_mode", default="sync") != "separate_async":
        return None
    batch = OmegaConf.select(cfg, "data.train_batch_size")
    mini = OmegaConf.select(cfg, "actor_rollout_ref.actor.ppo_mini_batch_size")
    sync = OmegaConf.select(cfg, "trainer.v1.separate_async.parameter_sync_step")
    if not all(isinstance(v, int) and v > 0 for v in (batch, mini, sync)) or batch == sync * mini:
        return None
    fix = (
        f"trainer.v1.separate_async.parameter_sync_step={batch // mini}"
        if batch % mini == 0
        else f"a data.train_batch_size that is a multiple of ppo_mini_batch_size {mini}"
    )
    return (
        f"trainer.v1.trainer_mode=separate_async needs data.train_batch_size = parameter_sync_step x "
        f"ppo_mini_batch_size (one local update per mini-batch, verl/trainer/ppo/v1/trainer_separate_async.py:59); "
        f"got {batch} != {sync} x {mini}; fix: {fix}"
    )
