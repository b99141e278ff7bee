"""Run verl 0.9.x's real actor (engine ``TrainingWorker``, FSDP2) in one CPU process.

Tests and the overhead benchmark use this to do the actor's two passes exactly
as verl's default V1 trainer (``verl/trainer/ppo/v1/trainer_base.py``) drives them:

1. old-log-prob pass: ``calculate_entropy=True, compute_loss=False`` -> ``infer_batch``; the
   trainer cuts log-probs and entropies down to the response and stores them as
   ``old_log_probs`` and ``entropy``;
2. update: the stored batch (now carrying ``old_log_probs``, ``advantages`` and the OLD
   policy's ``entropy``) goes to ``train_mini_batch`` with the same non-tensor fields
   ``_update_actor`` sets; the worker's loss is ``partial(ppo_loss, config=actor_config)``.

No Ray: the worker's ``@register``-decorated methods are plain calls when given a TensorDict
(the dispatch wrappers only act on Ray futures / TransferQueue metadata).

Platform: verl fixes its platform the first time anything asks for it, so this module sets
``VERL_PLATFORM=cpu`` (``os.environ.setdefault``, so an explicit value wins) at import time,
before any verl internals are imported, and registers the CPU platform and engines from
``erc_verl.cpu.platform``. Import it before anything else touches verl's platform.
"""

from __future__ import annotations

import os

# Must precede every verl import below (see module docstring).
os.environ.setdefault("VERL_PLATFORM", "cpu")
# The char tokenizer is tiny; avoid the fork warning from HF tokenizers in tests.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from erc_verl.cpu.platform import install_if_selected, register_cpu_platform  # noqa: E402
from erc_verl.rehearsal.ray_cluster import free_port  # noqa: E402

# erc_verl may have been imported (through verl's entry point) before the line above set
# VERL_PLATFORM; make the CPU platform resolvable in this process now.
install_if_selected()

__all__ = [
    "ARITH_CHARS",
    "tiny_qwen2",
    "build_tokenizer",
    "init_single_process_group",
    "actor_config_dict",
    "build_actor_worker",
    "make_batch",
    "random_rollout",
    "to_worker_batch",
    "compute_old_log_prob",
    "update_actor",
    "generate",
    "get_params",
    "rollout_model",
]

# ----------------------------------------------------------------------------------------
# tiny model + tokenizer (no download)
# ----------------------------------------------------------------------------------------

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
# Enough for arithmetic prompts ("12+7=19") and short chat-like prompts.
ARITH_CHARS = "0123456789+-*=,.:?() abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def build_tokenizer(chars: str = ARITH_CHARS):
    """A character-level ``PreTrainedTokenizerFast``: one token per character.

    ids: ``<pad>``=0, ``<eos>``=1, ``<unk>``=2, then ``chars`` in order. ``<eos>`` doubles as
    bos. The chat template just concatenates message contents, so verl's RL data rows can be
    rendered without a real chat format.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # every character (spaces included) is its own token; decoding glues them back
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
    )
    fast.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    return fast


def tiny_qwen2(
    model_dir: str | os.PathLike,
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 1024,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    chars: str = ARITH_CHARS,
) -> str:
    """Save a randomly initialised Qwen2 causal LM, its config and a char tokenizer to ``model_dir``.

    Nothing is downloaded. ``vocab_size`` is the model's embedding size; the tokenizer uses
    only the first ``3 + len(chars)`` ids. Returns the folder as a string.
    """
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(chars)
    if len(tokenizer) > vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than vocab_size={vocab_size}")

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.save_pretrained(model_dir, safe_serialization=True)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return str(model_dir)


def sharpened_qwen2(model_dir: str | os.PathLike, out: str | os.PathLike, factor: float) -> str:
    """The model with its output head scaled by ``factor``, saved to ``out``: a random init is
    near-uniform over the vocabulary, where entropy barely moves; a trained policy's distributions
    are peaked."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(factor)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return str(out)


# ----------------------------------------------------------------------------------------
# process group + worker
# ----------------------------------------------------------------------------------------


def init_single_process_group(backend: str = "gloo") -> None:
    """Start a one-rank process group (idempotent) and set the env verl's Worker reads."""
    if not dist.is_initialized():
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(free_port())
    # verl's Worker.__init__ reads these (and writes them back); keep them consistent.
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    for key, val in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "1")):
        os.environ[key] = val
    if not dist.is_initialized():
        # Initialise here rather than in the worker: verl would ask for "cpu:gloo,cpu:gloo".
        dist.init_process_group(backend=backend, rank=0, world_size=1)


def _compose_trainer_config(overrides: Sequence[str] = ()):
    """verl's own ``ppo_trainer.yaml`` composed with Hydra, so every default is the trainer's."""
    import verl
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))


def actor_config_dict(
    model_dir: str,
    *,
    policy_loss: dict | None = None,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.28,
    clip_ratio_c: float = 10.0,
    entropy_coeff: float = 0.0,
    loss_agg_mode: str = "token-mean",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    clip_grad: float = 1.0,
    micro_batch_size: int = 2,
    infer_micro_batch_size: int | None = None,
    ppo_mini_batch_size: int = 4,
    ppo_epochs: int = 1,
    rollout_n: int = 1,
    temperature: float = 1.0,
    calculate_entropy: bool = False,
    use_remove_padding: bool = True,
    gradient_checkpointing: bool = False,
    use_torch_compile: bool = False,
    dtype: str = "float32",
    extra_actor: dict | None = None,
    extra_model: dict | None = None,
):
    """The trainer's full config (``DictConfig``) with the actor fields this harness sets.

    Starts from verl's composed ``ppo_trainer.yaml`` and changes only what a CPU run needs
    (strategy fsdp2, fp32, no torch.compile by default) and what the caller passes.
    ``policy_loss`` replaces the whole ``actor.policy_loss`` node, so a ``_target_`` with extra
    fields (e.g. ``erc_verl.ERCPolicyLossConfig``) survives; without ``_target_`` the keys
    are merged into verl's default ``PolicyLossConfig`` node.
    """
    from omegaconf import OmegaConf, open_dict

    precision = {"float32": "fp32", "fp32": "fp32", "bfloat16": "bf16", "bf16": "bf16"}[dtype]
    cfg = _compose_trainer_config()
    infer_mbs = infer_micro_batch_size or micro_batch_size
    with open_dict(cfg):
        model = cfg.actor_rollout_ref.model
        model.path = str(model_dir)
        model.use_remove_padding = use_remove_padding
        model.enable_gradient_checkpointing = gradient_checkpointing
        model.override_config = {"attn_implementation": "sdpa"}

        rollout = cfg.actor_rollout_ref.rollout
        rollout.n = rollout_n
        rollout.temperature = temperature
        rollout.log_prob_micro_batch_size_per_gpu = infer_mbs

        actor = cfg.actor_rollout_ref.actor
        actor.strategy = "fsdp2"
        actor.ppo_mini_batch_size = ppo_mini_batch_size
        actor.ppo_micro_batch_size_per_gpu = micro_batch_size
        actor.ppo_epochs = ppo_epochs
        actor.clip_ratio_low = clip_ratio_low
        actor.clip_ratio_high = clip_ratio_high
        actor.clip_ratio_c = clip_ratio_c
        actor.entropy_coeff = entropy_coeff
        actor.calculate_entropy = calculate_entropy
        actor.loss_agg_mode = loss_agg_mode
        actor.use_torch_compile = use_torch_compile
        actor.optim.lr = lr
        actor.optim.weight_decay = weight_decay
        actor.optim.clip_grad = clip_grad
        actor.optim.total_training_steps = 1_000_000  # the trainer fills this in; constant lr anyway
        fsdp = actor.fsdp_config
        fsdp.model_dtype = "fp32"
        # param dtype of FSDP2's MixedPrecisionPolicy; fp32 also turns autocast off in forward_step
        fsdp.mixed_precision = {"param_dtype": precision, "reduce_dtype": "fp32", "buffer_dtype": "fp32"}
        fsdp.use_torch_compile = use_torch_compile
        if policy_loss is not None:
            policy_loss = OmegaConf.to_container(OmegaConf.create(policy_loss), resolve=True)
            if "_target_" in policy_loss:
                actor.policy_loss = policy_loss
            else:
                for key, val in policy_loss.items():
                    actor.policy_loss[key] = val
        for key, val in (extra_actor or {}).items():
            OmegaConf.update(actor, key, val, force_add=True)
        for key, val in (extra_model or {}).items():  # e.g. lora_rank, lora_alpha
            OmegaConf.update(model, key, val, force_add=True)
    return cfg


def build_actor_worker(model_dir: str, *, return_config: bool = False, device: str = "cpu", **kwargs):
    """Build verl's engine ``TrainingWorker`` for the actor, as ``ActorRolloutRefWorker.init_model`` does.

    Keyword arguments are those of :func:`actor_config_dict`. The configs are verl's own
    dataclasses built with ``omega_conf_to_dataclass``; the loss is
    ``partial(verl.workers.engine_workers.ppo_loss, config=actor_config)``, looked up at call
    time so a patched ``ppo_loss`` (the plugin's plumbing) is the one bound.
    Returns the worker, or ``(worker, actor_config)`` with ``return_config=True``.
    ``device="cuda"`` builds the same worker on verl's own CUDA platform over nccl
    (the overhead benchmark's GPU mode); run that with VERL_PLATFORM unset.
    """
    if device == "cuda":
        init_single_process_group("nccl")
        return _build_worker(model_dir, return_config, **kwargs)
    register_cpu_platform()
    init_single_process_group()

    from verl.plugin.platform import get_platform

    platform = get_platform()
    if platform.device_name != "cpu":
        raise RuntimeError(
            f"verl's platform is {platform.device_name!r}, not 'cpu': import harness.training_worker (or set "
            "VERL_PLATFORM=cpu) before anything in verl resolves its platform"
        )
    if not register_cpu_platform():
        raise RuntimeError("CPU engines were not registered")
    return _build_worker(model_dir, return_config, **kwargs)


def _build_worker(model_dir: str, return_config: bool, **kwargs):
    from functools import partial

    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers import engine_workers
    from verl.workers.config import TrainingWorkerConfig

    cfg = actor_config_dict(model_dir, **kwargs)
    arr = cfg.actor_rollout_ref
    model_config = omega_conf_to_dataclass(arr.model)
    actor_config = omega_conf_to_dataclass(arr.actor)
    actor_config.model_config = model_config

    training_config = TrainingWorkerConfig(
        model_type=actor_config.model_config.get("model_type", "language_model"),
        model_config=actor_config.model_config,
        engine_config=actor_config.engine,
        optimizer_config=actor_config.optim,
        checkpoint_config=actor_config.checkpoint,
        profiler_config=None,
    )
    engine = training_config.engine_config
    engine.use_dynamic_bsz = arr.actor.use_dynamic_bsz
    engine.infer_max_token_len_per_gpu = arr.rollout.log_prob_max_token_len_per_gpu
    engine.infer_micro_batch_size_per_gpu = arr.rollout.log_prob_micro_batch_size_per_gpu
    engine.max_token_len_per_gpu = arr.actor.ppo_max_token_len_per_gpu
    engine.micro_batch_size_per_gpu = arr.actor.ppo_micro_batch_size_per_gpu
    engine.use_remove_padding = model_config.get("use_remove_padding", False)

    loss_fn = partial(engine_workers.ppo_loss, config=actor_config)
    worker = engine_workers.TrainingWorker(config=training_config)
    worker.reset()
    worker.set_loss_fn(loss_fn)
    # what the harness needs later (defaults for the passes, tokenizer ids for generation)
    worker._erc_cpu = {
        "temperature": float(arr.rollout.temperature),
        "ppo_mini_batch_size": int(arr.actor.ppo_mini_batch_size) * int(arr.rollout.n),
        "epochs": int(arr.actor.ppo_epochs),
        "seed": int(arr.actor.data_loader_seed),
        "shuffle": bool(arr.actor.shuffle),
        "calculate_entropy": bool(arr.actor.calculate_entropy) or float(arr.actor.entropy_coeff) != 0.0,
        "actor_config": actor_config,
    }
    if return_config:
        return worker, actor_config
    return worker


# ----------------------------------------------------------------------------------------
# batches
# ----------------------------------------------------------------------------------------


def _as_rows(seqs) -> list[list[int]]:
    if isinstance(seqs, torch.Tensor):
        return [list(map(int, row)) for row in seqs.tolist()]
    return [list(map(int, row)) for row in seqs]


def make_batch(
    prompts_ids,
    responses_ids,
    *,
    pad_token_id: int = 0,
    max_prompt_len: int | None = None,
    max_response_len: int | None = None,
    response_mask: torch.Tensor | None = None,
):
    """The padded rollout batch verl's trainer holds (what ``DataProto.batch`` looks like).

    Prompts are left-padded, responses right-padded. Returns a ``TensorDict`` with
    ``prompts`` (bsz, P), ``responses`` (bsz, R), ``input_ids``/``attention_mask``/
    ``position_ids`` (bsz, P+R) and ``response_mask`` (bsz, R). ``response_mask`` may be
    given (bsz, R) to mask tokens inside responses (it is ANDed with the padding mask).
    """
    from tensordict import TensorDict

    prompts, responses = _as_rows(prompts_ids), _as_rows(responses_ids)
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if any(len(p) == 0 for p in prompts) or any(len(r) == 0 for r in responses):
        raise ValueError("every prompt and response needs at least one token")
    P = max_prompt_len or max(len(p) for p in prompts)
    R = max_response_len or max(len(r) for r in responses)
    bsz = len(prompts)

    prompt_t = torch.full((bsz, P), pad_token_id, dtype=torch.long)
    prompt_m = torch.zeros((bsz, P), dtype=torch.long)
    resp_t = torch.full((bsz, R), pad_token_id, dtype=torch.long)
    resp_m = torch.zeros((bsz, R), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        if len(p) > P or len(r) > R:
            raise ValueError(f"row {i}: prompt {len(p)} > {P} or response {len(r)} > {R}")
        prompt_t[i, P - len(p) :] = torch.tensor(p)
        prompt_m[i, P - len(p) :] = 1
        resp_t[i, : len(r)] = torch.tensor(r)
        resp_m[i, : len(r)] = 1

    attention_mask = torch.cat([prompt_m, resp_m], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    rmask = resp_m if response_mask is None else (resp_m * response_mask.to(torch.long))
    return TensorDict(
        {
            "prompts": prompt_t,
            "responses": resp_t,
            "input_ids": torch.cat([prompt_t, resp_t], dim=1),
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "response_mask": rmask,
        },
        batch_size=[bsz],
    )


def random_rollout(bsz: int, prompt_len: int, response_len: int, *, vocab_high: int = 500, seed: int = 0):
    """A rollout batch of random token ids with ragged prompts and responses, and advantages.

    Prompts are prompt_len - (i % 3) long, responses response_len - i (so response_len > bsz),
    advantages one N(0, 1) value per sequence on its response tokens. Tests use it so the
    stock and patched paths see the very same batch.
    """
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab_high, (prompt_len - i % 3,), generator=gen).tolist() for i in range(bsz)]
    responses = [torch.randint(3, vocab_high, (response_len - i,), generator=gen).tolist() for i in range(bsz)]
    batch = make_batch(prompts, responses)
    mask = batch["response_mask"].float()
    advantages = torch.randn(bsz, 1, generator=gen).expand(bsz, response_len) * mask
    return batch, advantages


def _nested(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def to_worker_batch(batch, layout: str = "nested"):
    """The TensorDict the worker receives for ``batch`` (a :func:`make_batch` result).

    ``layout="nested"`` (default): the V1 trainer's layout. Its TransferQueue stores each
    sample unpadded, so ``input_ids``, ``position_ids``, ``prompts``, ``responses``,
    ``response_mask`` and ``loss_mask`` (= response_mask) are jagged nested tensors.
    ``layout="padded"``: the older ``ray_trainer.py`` engine path, ``left_right_2_no_padding``
    on the padded batch (input_ids/position_ids nested, the rest padded).
    """
    from tensordict import TensorDict
    from verl.workers.utils.padding import left_right_2_no_padding

    if layout == "padded":
        return left_right_2_no_padding(batch.clone())
    if layout != "nested":
        raise ValueError(f"layout must be 'nested' or 'padded', got {layout!r}")

    P = batch["prompts"].shape[1]
    attn = batch["attention_mask"].bool()
    rows = {k: [] for k in ("input_ids", "position_ids", "prompts", "responses", "response_mask")}
    for i in range(batch.batch_size[0]):
        pm, rm = attn[i, :P], attn[i, P:]
        rows["prompts"].append(batch["prompts"][i][pm])
        rows["responses"].append(batch["responses"][i][rm])
        rows["response_mask"].append(batch["response_mask"][i][rm])
        rows["input_ids"].append(batch["input_ids"][i][attn[i]])
        rows["position_ids"].append(batch["position_ids"][i][attn[i]])
    data = {k: _nested(v) for k, v in rows.items()}
    data["loss_mask"] = data["response_mask"]
    return TensorDict(data, batch_size=batch.batch_size)


def _response_lens(batch) -> torch.Tensor:
    P = batch["prompts"].shape[1]
    return batch["attention_mask"][:, P:].sum(dim=1)


def _padded_to_worker(tensor: torch.Tensor, batch, layout: str) -> torch.Tensor:
    """A padded (bsz, R) per-response-token tensor in the form the layout stores it."""
    if layout == "padded":
        return tensor
    lens = _response_lens(batch)
    return _nested([tensor[i, : int(lens[i])] for i in range(tensor.shape[0])])


def _response_padded(output_tensor: torch.Tensor, worker_batch, batch, layout: str) -> torch.Tensor:
    """Cut a full-sequence nested model output down to (bsz, R) response positions, as the trainer does."""
    from verl.workers.utils.padding import no_padding_2_padding, response_from_nested

    R = batch["responses"].shape[1]
    if layout == "padded":
        out = no_padding_2_padding(output_tensor, worker_batch)
    else:
        nested = response_from_nested(output_tensor, worker_batch["response_mask"])
        out = torch.nested.to_padded_tensor(nested, 0.0, output_size=(nested.size(0), R))
    return out.float()


# ----------------------------------------------------------------------------------------
# the two passes
# ----------------------------------------------------------------------------------------


def compute_old_log_prob(worker, batch, temperature: float | None = None, *, layout: str = "nested"):
    """Old-log-prob pass of the V1 trainer (``_compute_old_log_prob``) on ``batch``.

    Returns ``(old_log_probs, entropy)``, both float32 (bsz, R) with zeros at padding. verl
    gives the entropy of ``softmax(logits / temperature)``.
    """
    from verl.utils import tensordict_utils as tu

    if temperature is None:
        temperature = worker._erc_cpu["temperature"]
    data = to_worker_batch(batch, layout)
    tu.assign_non_tensor(data, calculate_entropy=True, compute_loss=False, temperature=float(temperature))
    output = worker.infer_batch(data)
    if output is None:  # a Ulysses rank other than its group's first: verl collects from that one
        return None, None
    log_probs = _response_padded(tu.get(output, "log_probs"), data, batch, layout)
    entropy = _response_padded(tu.get(output, "entropy"), data, batch, layout)
    mask = batch["response_mask"].to(log_probs.dtype)
    return log_probs * mask, entropy * mask


def update_actor(
    worker,
    batch,
    old_log_probs: torch.Tensor,
    old_entropy: torch.Tensor | None,
    advantages: torch.Tensor,
    *,
    ppo_mini_batch_size: int | None = None,
    epochs: int | None = None,
    shuffle: bool | None = None,
    seed: int | None = None,
    temperature: float | None = None,
    calculate_entropy: bool | None = None,
    layout: str = "nested",
    extra: dict[str, torch.Tensor] | None = None,
    raw: bool = False,
) -> dict[str, Any]:
    """One ``update_actor`` step of the V1 trainer (``_update_actor``) on ``batch``.

    ``old_log_probs``, ``old_entropy`` and ``advantages`` are padded (bsz, R); they are stored
    in the batch as ``old_log_probs``, ``entropy`` (the OLD policy's entropy, as the V1
    trainer's batch carries it; pass None to leave it out, as the older trainer does) and
    ``advantages``. ``ppo_mini_batch_size`` counts sequences (the trainer's
    ``ppo_mini_batch_size * rollout.n``). ``extra`` adds more per-response-token fields.
    Unset options default to the worker's config. Returns the metrics as the trainer logs
    them (``rename_dict(..., "actor/")`` then ``reduce_metrics``), or the worker's raw
    per-micro-batch lists with ``raw=True``.
    """
    from verl.utils import tensordict_utils as tu
    from verl.utils.metric import reduce_metrics
    from verl.utils.py_functional import rename_dict

    defaults = worker._erc_cpu
    mbs = ppo_mini_batch_size or defaults["ppo_mini_batch_size"]
    data = to_worker_batch(batch, layout)
    fields = {"old_log_probs": old_log_probs, "advantages": advantages}
    if old_entropy is not None:
        fields["entropy"] = old_entropy
    fields.update(extra or {})
    for key, val in fields.items():
        data[key] = _padded_to_worker(val.float(), batch, layout)
    tu.assign_non_tensor(
        data,
        calculate_entropy=defaults["calculate_entropy"] if calculate_entropy is None else bool(calculate_entropy),
        distillation_use_topk=False,
        distillation_only=False,
        global_batch_size=mbs,
        mini_batch_size=mbs,
        epochs=defaults["epochs"] if epochs is None else int(epochs),
        seed=defaults["seed"] if seed is None else int(seed),
        dataloader_kwargs={"shuffle": defaults["shuffle"] if shuffle is None else bool(shuffle)},
        temperature=float(defaults["temperature"] if temperature is None else temperature),
        compute_loss=True,
    )
    output = worker.train_mini_batch(data)
    if output is None:  # a Ulysses rank other than its group's first
        return {}
    metrics = tu.get(output, "metrics")
    if raw:
        return metrics
    metrics = rename_dict(dict(metrics), "actor/")
    if "actor/mfu" in metrics:
        metrics["perf/mfu/actor"] = metrics.pop("actor/mfu")
    return reduce_metrics(metrics)


# ----------------------------------------------------------------------------------------
# weights and sampling
# ----------------------------------------------------------------------------------------


def record_gradients(worker) -> list[dict[str, torch.Tensor]]:
    """The full gradient of every parameter at each optimizer step, as the engine is about to clip
    and step (every rank must record: gathering a sharded gradient is a collective)."""
    steps: list[dict[str, torch.Tensor]] = []
    real_step = worker.engine.optimizer_step

    def optimizer_step():
        grads = {}
        for name, param in worker.engine.module.named_parameters():
            grad = param.grad
            if grad is not None and hasattr(grad, "full_tensor"):
                grad = grad.full_tensor()
            if grad is not None:
                grads[name] = grad.detach().clone()
        steps.append(grads)
        return real_step()

    worker.engine.optimizer_step = optimizer_step
    return steps


def get_params(worker) -> dict[str, torch.Tensor]:
    """Full (unsharded) copies of the actor's parameters, keyed by HF name."""
    per_tensor, _ = worker.engine.get_per_tensor_param()
    return {name: t.detach().to("cpu", copy=True) for name, t in per_tensor}


def rollout_model(worker):
    """A plain HF model holding the worker's current weights (cached on the worker, re-synced each call).

    FSDP2 shards are DTensors; the simplest correct way to sample from them on one process is
    to copy the full state dict into an ordinary ``AutoModelForCausalLM`` (what verl's
    rollout weight sync does, minus the inference server).
    """
    from transformers import AutoModelForCausalLM

    model = getattr(worker, "_erc_cpu_rollout", None)
    if model is None:
        hf_config = worker.model_config.hf_config
        model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa", torch_dtype=torch.float32)
        model.eval()
        worker._erc_cpu_rollout = model
    missing, unexpected = model.load_state_dict(get_params(worker), strict=False)
    # tied lm_head may be absent from the engine's state dict; anything else is a bug
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"weight sync mismatch: missing={missing} unexpected={unexpected}")
    return model


@torch.no_grad()
def generate(
    model_or_worker,
    prompt_ids,
    n: int = 1,
    max_new_tokens: int = 16,
    temperature: float = 1.0,
    *,
    top_p: float = 1.0,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
) -> list[list[int]]:
    """Sample ``n`` responses per prompt from the current weights with HF ``generate``.

    ``model_or_worker``: an HF causal LM or a ``TrainingWorker`` (its weights are synced into
    a plain HF model first, see :func:`rollout_model`). Returns ``len(prompts) * n`` token
    lists, grouped by prompt (prompt 0's n samples first), each cut after the first eos
    (eos kept, as verl keeps it in the response) and never empty.
    """
    model = rollout_model(model_or_worker) if hasattr(model_or_worker, "engine") else model_or_worker
    cfg = model.config
    eos = cfg.eos_token_id if eos_token_id is None else eos_token_id
    pad = (cfg.pad_token_id if cfg.pad_token_id is not None else eos) if pad_token_id is None else pad_token_id
    prompts = _as_rows(prompt_ids)
    P = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), P), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, p in enumerate(prompts):
        input_ids[i, P - len(p) :] = torch.tensor(p)
        attention_mask[i, P - len(p) :] = 1
    if seed is not None:
        torch.manual_seed(seed)
    do_sample = temperature > 0
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        min_new_tokens=1,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=top_p if do_sample else None,
        top_k=0 if do_sample else None,
        num_return_sequences=n,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    responses = []
    for row in out[:, P:].tolist():
        if eos in row:
            row = row[: row.index(eos) + 1]
        responses.append(row)
    return responses
