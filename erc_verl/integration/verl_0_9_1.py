"""Every place erc_verl touches stock verl 0.9.1 at run time (the patch sets do the same in source).

Each touch-point is a wrapper that calls verl's own function (nothing in verl's files is edited);
docs/architecture.md lists every one of them, with why and the matching patch.

Why the entropy is computed here and not by verl's `calculate_entropy`: the ratio H_cur/H_old
is compared with a +-5% band, so both must come from one accurate function
(erc_verl.entropy.entropy_from_logits), whatever `use_torch_compile` or chunking say; and taken
under no_grad before the log-prob kernel runs, it leaves flash-attn's in-place cross-entropy
backward on (verl turns that off whenever `calculate_entropy` is set).
"""

import contextvars
import functools
import sys

import torch

from ..settings import settings
from .hooks import after_import, original, wrap

_INSTALLED = "_erc_verl_plumbing"
# Non-tensor flag on a micro-batch: compute erc_verl's gate entropy for it, in the
# old-log-prob pass ("old") or in the update ("update").
GATE_FLAG = "erc_verl_gate_entropy"
# model_output key of that entropy (verl's own "entropy" stays verl's, e.g. for an entropy bonus).
GATE_KEY = "erc_gate_entropy"


class PolicyLossEntropies:
    """One micro-batch's H_cur and H_old for an ERC loss, and the metrics it returned.

    verl 0.9.1's ppo_loss calls the policy loss with a fixed keyword set
    (verl/workers/utils/losses.py, ppo_loss: `policy_loss_fn(old_log_prob=..., config=...,
    rollout_is_weights=...)`), so the entropies cannot travel as arguments through it. This is
    the one side channel: erc_verl's ppo_loss sets it for exactly one call of verl's ppo_loss,
    and the policy-loss lookup inside that call returns the ERC loss with the entropies bound as
    its `entropy=` / `old_entropy=` keywords. verl then wraps every returned metric as
    Metric(MEAN), which refuses ERC's SUM/MIN/MAX metrics, so the Metric-typed ones are handed
    back here and merged after verl's ppo_loss returns (a patched tree keeps them itself).
    """

    def __init__(self, entropy, old_entropy):
        self.entropy = entropy
        self.old_entropy = old_entropy
        self.metrics = {}

    def call(self, loss_fn, **kwargs):
        from verl.utils.metric import Metric

        loss, metrics = loss_fn(**kwargs, entropy=self.entropy, old_entropy=self.old_entropy)
        self.metrics = {k: v for k, v in metrics.items() if isinstance(v, Metric)}
        return loss, {k: v for k, v in metrics.items() if k not in self.metrics}


_CURRENT = contextvars.ContextVar("erc_verl_policy_loss_entropies", default=None)


def make_get_policy_loss_fn(verl_get_policy_loss_fn):
    """verl's lookup, unchanged unless erc_verl's ppo_loss is feeding an ERC loss right now."""

    @functools.wraps(verl_get_policy_loss_fn)
    def get_policy_loss_fn(name):
        loss_fn = verl_get_policy_loss_fn(name)
        entropies = _CURRENT.get()
        return loss_fn if entropies is None else functools.partial(entropies.call, loss_fn)

    return get_policy_loss_fn


def _padded_response_field(data, key: str):
    """data[key] as a (bsz, response_len) tensor, padded the way ppo_loss pads old_log_probs."""
    if key not in data.keys():
        return None
    return data.select("old_log_probs", key).to_padded_tensor()[key]


def _missing_entropy_error(which: str, config) -> ValueError:
    mode = settings(config.policy_loss).algorithm.loss_mode
    if which == "old":
        return ValueError(
            f"policy_loss.loss_mode={mode!r} (or entropy_ratio_monitor) needs the old-policy entropy, "
            "but the update batch has no `entropy` field. It comes from the old-log-prob pass: "
            "ERC cannot run with algorithm.rollout_correction.bypass_mode=true (no such pass); with "
            "trainer.use_v1=false make sure erc_verl is loaded in the driver too (the `verl.plugins` "
            "entry point or VERL_USE_EXTERNAL_MODULES=erc_verl)."
        )
    return ValueError(
        f"policy_loss.loss_mode={mode!r} (or entropy_ratio_monitor) needs erc_verl's current-policy "
        "entropy, which the engine did not compute: erc_verl computes H_old and H_cur with one kernel "
        "in verl's FSDP engine only (verl's own entropy is another function and is never mixed in). "
        "Fix: set actor_rollout_ref.actor.strategy=fsdp2 (engine workers, trainer.use_v1=true)."
    )


_CHECKED = "_erc_verl_checked"


def _first_update_checks(config) -> None:
    """Once per actor config of an ERC run (an ERC mode, the monitor or the positive-sample NLL):
    refuse what ERC cannot gate accurately (erc_verl.integration.support). The mark lives on the
    config object itself, so a new config is always checked."""
    if getattr(config, "__dict__", {}).get(_CHECKED):
        return
    from .support import actor_problems

    found = actor_problems(config)
    if found:
        raise ValueError("erc_verl: " + found[0])
    try:
        object.__setattr__(config, _CHECKED, True)
    except (AttributeError, TypeError):  # no attribute dict: checked at every call, which is cheap
        pass


def make_ppo_loss(verl_ppo_loss):
    """ppo_loss that feeds both entropies to an ERC loss and logs the monitor for the others,
    then adds the authors' positive-sample NLL term (any loss mode, positive_nll_coeff > 0)."""

    def entropy_ppo_loss(config, model_output, data, dp_group):
        erc = settings(config.policy_loss)
        if not erc.wants_entropy:
            return verl_ppo_loss(config, model_output, data, dp_group)
        from verl.workers.utils.padding import no_padding_2_padding

        from ..losses import _global_batch_info, monitor_metrics

        # H_cur only from erc_verl's kernel, like H_old: never verl's `entropy` (another function).
        current = model_output.get(GATE_KEY, None)
        if current is None:
            raise _missing_entropy_error("current", config)
        old = _padded_response_field(data, "entropy")
        if old is None:
            raise _missing_entropy_error("old", config)
        current = no_padding_2_padding(current, data)

        if erc.is_erc:
            entropies = PolicyLossEntropies(current, old)
            token = _CURRENT.set(entropies)
            try:
                loss, metrics = verl_ppo_loss(config, model_output, data, dp_group)
            finally:
                _CURRENT.reset(token)
            metrics.update(entropies.metrics)
            return loss, metrics

        # Monitor on a baseline: verl's loss runs untouched; the ratio statistics are only read.
        loss, metrics = verl_ppo_loss(config, model_output, data, dp_group)
        response_mask = _padded_response_field(data, "response_mask").bool()
        metrics.update(monitor_metrics(config, current, old, response_mask, _global_batch_info(config)))
        return loss, metrics

    @functools.wraps(verl_ppo_loss)
    def ppo_loss(config, model_output, data, dp_group=None):
        from .support import erc_actor

        if erc_actor(config):
            _first_update_checks(config)
        loss, metrics = entropy_ppo_loss(config, model_output, data, dp_group)
        return add_positive_nll(config, model_output, data, loss, metrics)

    return ppo_loss


# Where the update batch carries each response's reward before any KL penalty, first found
# wins: the v0 trainer's `token_level_scores`, the V1 trainer's `rm_scores` (verl 0.9.1
# trainer/ppo/v1/trainer_base.py `_compute_advantage` reads them as token_level_scores), else
# `token_level_rewards`. With algorithm.use_kl_in_reward, verl's apply_kl_penalty stores
# token_level_rewards = scores - beta * KL beside them (v1 trainer_base.py ~1753-1789,
# ray_trainer.py ~1637), whose sum never equals a correct answer's reward. Every field reaches the
# worker: V1's update batch holds every field stored for its samples, v0's the whole DataProto.
REWARD_FIELDS = ("token_level_scores", "rm_scores", "token_level_rewards")


def add_positive_nll(config, model_output, data, loss, metrics):
    """loss + coeff * erc_verl.losses.positive_nll_loss on the model's own log-probs (never
    ERC-gated), with actor/positive_nll; unchanged when positive_nll_coeff is 0."""
    from ..losses import positive_nll_term

    if not settings(config.policy_loss).positive_nll:
        return loss, metrics
    from verl.utils import tensordict_utils as tu
    from verl.utils.metric import AggregationType, Metric
    from verl.workers.utils.padding import no_padding_2_padding

    rewards = _rewards(data)
    log_prob = no_padding_2_padding(model_output["log_probs"], data)
    response_mask = _padded_response_field(data, "response_mask")
    counts = tu.get_non_tensor_data(data=data, key=POSITIVES_KEY, default=None)
    # ppo_loss has just set config.global_batch_info for this micro-batch.
    term, extra = positive_nll_term(
        config, log_prob, response_mask, rewards, config.loss_agg_mode, dict(config.global_batch_info), counts
    )
    metrics.update(
        {k: v if isinstance(v, Metric) else Metric(value=v, aggregation=AggregationType.MEAN) for k, v in extra.items()}
    )
    return loss + term.to(loss.dtype), metrics


def _rewards(data):
    return next((r for r in (_padded_response_field(data, key) for key in REWARD_FIELDS) if r is not None), None)


# Non-tensor entry of an update mini-batch (and so of its micro-batches): (positive tokens,
# positive responses) over the whole mini-batch and every data-parallel rank, for
# positive_nll_norm=global.
POSITIVES_KEY = "erc_verl_mini_batch_positives"


def _wants_global_positives(config) -> bool:
    erc = settings(config.get("policy_loss") if config is not None else None)
    return erc.positive_nll and erc.algorithm.positive_nll_norm == "global"


def make_forward_backward_batch(verl_forward_backward_batch):
    """Update: count the mini-batch's positive tokens and responses over all data-parallel ranks,
    beside verl's own batch_num_tokens, when positive_nll_norm=global (one all-reduce per mini-batch)."""

    @functools.wraps(verl_forward_backward_batch)
    def forward_backward_batch(self, data, loss_function, forward_only=False):
        config = _actor_config(loss_function)
        if not forward_only and _wants_global_positives(config):
            from verl.utils import tensordict_utils as tu
            from verl.utils.device import get_device_id

            from ..losses import missing_rewards_error, positive_counts, positive_responses

            algorithm = settings(config.policy_loss).algorithm
            rewards = _rewards(data)
            if rewards is None:
                raise missing_rewards_error(algorithm.positive_nll_coeff)
            positive = positive_responses(rewards, *algorithm.positive_rule)
            counts = positive_counts(_padded_response_field(data, "response_mask"), positive).to(get_device_id())
            torch.distributed.all_reduce(counts, group=self.get_data_parallel_group())
            tu.assign_non_tensor(data, **{POSITIVES_KEY: tuple(counts.tolist())})
        return verl_forward_backward_batch(self, data, loss_function=loss_function, forward_only=forward_only)

    return forward_backward_batch


def _actor_config(loss_function):
    keywords = getattr(loss_function, "keywords", None) or {}
    return keywords.get("config")


def _gate_entropy_wanted(config) -> bool:
    return config is not None and settings(config.get("policy_loss")).wants_entropy


def is_old_log_prob_pass(data) -> bool:
    """Whether an actor infer_batch call is the old-log-prob pass, as both of verl 0.9.1's trainers
    mark it: it asks for the entropy (`calculate_entropy=True`, V1 trainer_base.py
    `_compute_old_log_prob`, v0 ray_trainer.py `_compute_old_log_prob`). The reference pass of a
    LoRA run goes through the actor's own worker too, with `calculate_entropy=False` and
    `no_lora_adapter=True` (V1 trainer_base.py ~1697-1707, ray_trainer.py ~1272-1277): it must
    not get H_old's entropy, which would overwrite the stored `entropy` field."""
    from verl.utils import tensordict_utils as tu

    if tu.get_non_tensor_data(data=data, key="no_lora_adapter", default=False):
        return False
    return bool(tu.get_non_tensor_data(data=data, key="calculate_entropy", default=False))


def make_infer_batch(verl_infer_batch):
    """Old-log-prob pass: flag the batch so H_old comes from erc_verl's kernel, like H_cur."""

    @functools.wraps(verl_infer_batch)
    def infer_batch(self, data, *args, **kwargs):
        from tensordict import TensorDict

        if (
            isinstance(data, TensorDict)
            and _gate_entropy_wanted(_actor_config(self.loss_fn))
            and is_old_log_prob_pass(data)
        ):
            from verl.utils import tensordict_utils as tu

            tu.assign_non_tensor(data, **{GATE_FLAG: "old"})
        return verl_infer_batch(self, data, *args, **kwargs)

    return infer_batch


def make_train_mini_batch(verl_train_mini_batch):
    """Update: each mini-batch's keep fraction as a ratio of token counts, and the step's first
    mini-batch's keep fraction (erc_verl.metrics.mini_batch_keep_fractions)."""

    @functools.wraps(verl_train_mini_batch)
    def train_mini_batch(self, *args, **kwargs):
        output = verl_train_mini_batch(self, *args, **kwargs)
        if output is None:  # a rank that returns no metrics
            return output
        from verl.utils import tensordict_utils as tu

        from ..metrics import KEEP_KEY, mini_batch_keep_fractions

        metrics = tu.get_non_tensor_data(data=output, key="metrics", default=None)
        if isinstance(metrics, dict) and KEEP_KEY in metrics:
            tu.assign_non_tensor_data(output, "metrics", mini_batch_keep_fractions(metrics))
        return output

    return train_mini_batch


def make_forward_step(verl_forward_step):
    """Update: flag the micro-batch when the loss wants the entropy (verl's own flags untouched)."""

    @functools.wraps(verl_forward_step)
    def forward_step(self, micro_batch, loss_function, forward_only):
        if not forward_only and _gate_entropy_wanted(_actor_config(loss_function)):
            from verl.utils import tensordict_utils as tu

            tu.assign_non_tensor(micro_batch, **{GATE_FLAG: "update"})
        return verl_forward_step(self, micro_batch, loss_function=loss_function, forward_only=forward_only)

    return forward_step


def _full_logits(logits):
    from torch.distributed.tensor import DTensor

    # With tensor parallelism the logits are sharded on the vocabulary; verl gathers them too.
    return logits.full_tensor() if isinstance(logits, DTensor) else logits


def _gate_entropy(engine, output, output_args, micro_batch):
    """erc_verl's entropy of softmax(logits / T), laid out like verl lays out its log-probs."""
    from verl.utils import tensordict_utils as tu

    from ..entropy import entropy_from_logits

    input_ids = micro_batch["input_ids"]
    cu_seqlens = input_ids.offsets()
    if tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True):
        logits = _full_logits(output.logits).squeeze(0)  # (total_nnz / sp + pad, vocab)
        temperature = output_args.get("temperature_rmpad", None)
        if temperature is None:
            temperature = micro_batch["temperature"]
        entropy = entropy_from_logits(logits, temperature=temperature)
        entropy = engine._gather_and_unpad_packed(entropy, output_args["pad_size"])  # Ulysses gather
        return torch.nested.nested_tensor_from_jagged(entropy, cu_seqlens)
    logits = _full_logits(output.logits)  # (bsz, seqlen, vocab)
    temperature = output_args["temperature"].unsqueeze(-1)  # (bsz, 1)
    entropy = entropy_from_logits(logits, temperature=temperature)
    seq_lengths = cu_seqlens.diff()
    starts = torch.zeros_like(seq_lengths, dtype=torch.int64)
    entropy = torch.nested.narrow(entropy, 1, starts, seq_lengths, layout=torch.jagged)
    return torch.nested.nested_tensor_from_jagged(torch.cat(entropy.unbind()), cu_seqlens)


@functools.lru_cache(maxsize=1)
def _warn_fused_entropy() -> None:
    import warnings

    warnings.warn(
        "erc_verl: actor_rollout_ref.model.use_fused_kernels=true computes the entropy inside verl's "
        "fused kernel, which never materialises the logits, so ERC's gate uses verl's fused entropy "
        "for H_old and H_cur. Its float32 formula loses entropies below ~1e-4 (relative error up to "
        "100% measured for its torch backend), which decides the band for confident tokens. Set "
        "use_fused_kernels=false to gate with erc_verl's accurate kernel.",
        stacklevel=2,
    )


def make_prepare_model_outputs(verl_prepare_model_outputs):
    """Compute the gate entropy from the logits before verl's log-prob kernel sees them.

    verl's own entropy request is switched off for the call when erc_verl supplies the entropy
    (so verl keeps flash-attn's in-place cross-entropy backward), unless the loss needs verl's
    in-graph entropy for an entropy bonus. verl's fused kernels never materialise the logits;
    there verl's fused entropy is used for both passes, with a warning: its torch backend loses
    small entropies like verl's other float32 formulas (relative error up to 1.0 for H < 1e-4,
    benchmarks/results/entropy_accuracy_cpu.md); its Triton backend (CUDA only) is not measured.
    """

    @functools.wraps(verl_prepare_model_outputs)
    def prepare_model_outputs(self, output, output_args, micro_batch, logits_processor_func):
        from verl.utils import tensordict_utils as tu

        gate = tu.get_non_tensor_data(data=micro_batch, key=GATE_FLAG, default=None)
        if gate not in ("old", "update"):
            return verl_prepare_model_outputs(self, output, output_args, micro_batch, logits_processor_func)
        if tu.get_non_tensor_data(data=micro_batch, key="use_fused_kernels", default=False):
            _warn_fused_entropy()
            asked = tu.get_non_tensor_data(data=micro_batch, key="calculate_entropy", default=False)
            tu.assign_non_tensor(micro_batch, calculate_entropy=True)
            try:
                model_output = verl_prepare_model_outputs(self, output, output_args, micro_batch, logits_processor_func)
            finally:
                tu.assign_non_tensor(micro_batch, calculate_entropy=asked)
            if gate == "update":  # the old pass ships `entropy` alone
                model_output[GATE_KEY] = model_output["entropy"].detach()
            return model_output

        with torch.no_grad():
            gate_entropy = _gate_entropy(self, output, output_args, micro_batch)
        asked = tu.get_non_tensor_data(data=micro_batch, key="calculate_entropy", default=False)
        # The old-log-prob pass asks for "entropy" and gets erc_verl's; the update keeps verl's
        # in-graph entropy only where it asked for one itself (entropy bonus, calculate_entropy).
        verl_entropy = asked and gate == "update"
        if asked and not verl_entropy:
            tu.assign_non_tensor(micro_batch, calculate_entropy=False)
        try:
            model_output = verl_prepare_model_outputs(self, output, output_args, micro_batch, logits_processor_func)
        finally:
            if asked and not verl_entropy:
                tu.assign_non_tensor(micro_batch, calculate_entropy=True)
        if gate == "old":
            # H_old travels to the update as verl's `entropy` field, one tensor per sample.
            model_output["entropy"] = gate_entropy
            return model_output
        model_output[GATE_KEY] = gate_entropy
        return model_output

    return prepare_model_outputs


def make_v0_compute_old_log_prob(verl_compute_old_log_prob):
    """v0 trainer: keep a copy of the old entropy under `entropy`; fit() pops only `entropys`."""

    @functools.wraps(verl_compute_old_log_prob)
    def _compute_old_log_prob(self, batch):
        old_log_prob, mfu = verl_compute_old_log_prob(self, batch)
        policy_loss = self.config.actor_rollout_ref.actor.get("policy_loss")
        if settings(policy_loss).wants_entropy and "entropys" in old_log_prob.batch.keys():
            old_log_prob.batch["entropy"] = old_log_prob.batch["entropys"].clone()
        return old_log_prob, mfu

    return _compute_old_log_prob


from .support import v0_trainer_problem  # noqa: E402  (one rule for the trainer and `erc-verl check`)


def make_v0_fit(verl_fit):
    @functools.wraps(verl_fit)
    def fit(self, *args, **kwargs):
        problem = v0_trainer_problem(self.config)
        if problem:
            raise ValueError(problem)
        return verl_fit(self, *args, **kwargs)

    return fit


def _wrap(owner, name: str, make) -> None:
    wrap(owner, name, make, _INSTALLED)


def stale_ppo_loss_bindings() -> list[str]:
    """Modules whose `ppo_loss` is still verl's unwrapped function (bound before erc_verl wrapped it)."""
    verl_ppo_loss = original("verl.workers.utils.losses.ppo_loss")
    if verl_ppo_loss is None:
        return []
    # The module's own namespace only: a lazy module's getattr may import or raise.
    return sorted(
        name
        for name, module in list(sys.modules.items())
        if isinstance(getattr(module, "__dict__", None), dict) and module.__dict__.get("ppo_loss") is verl_ppo_loss
    )


def wiring_diagnosis() -> str:
    """One sentence for an ERC loss that got no entropies: which module bound verl's original ppo_loss."""
    from .version import installed_verl_version

    stale = stale_ppo_loss_bindings()
    if not stale:
        return ""
    return (
        f"erc_verl: {', '.join(stale)} still calls verl {installed_verl_version()}'s original ppo_loss "
        "(bound before erc_verl wrapped it), so the entropies are never fed there. Load erc_verl before "
        "verl's workers (the `verl.plugins` entry point or VERL_USE_EXTERNAL_MODULES=erc_verl)."
    )


def _patch_losses(module) -> None:
    _wrap(module, "ppo_loss", make_ppo_loss)
    _wrap(module, "get_policy_loss_fn", make_get_policy_loss_fn)
    # verl modules that bound the original with `from verl.workers.utils.losses import ppo_loss`
    # before erc_verl loaded (verl/trainer/distillation/losses.py does, at import) call the
    # wrapped one from now on; any other module still holding it is named by wiring_diagnosis.
    for name in stale_ppo_loss_bindings():
        if name == "verl" or name.startswith("verl."):
            sys.modules[name].ppo_loss = module.ppo_loss


def _patch_engine_workers(module) -> None:
    # init_model binds `ppo_loss` from this module's namespace when it builds the loss function.
    losses = sys.modules.get("verl.workers.utils.losses")
    if losses is not None:
        _patch_losses(losses)
        module.ppo_loss = losses.ppo_loss
    _wrap(module.TrainingWorker, "infer_batch", make_infer_batch)


def _patch_fsdp_engine(module) -> None:
    _wrap(module.FSDPEngineWithLMHead, "forward_step", make_forward_step)
    # On FSDPEngine, which defines it: a wrapper set on the subclass would shadow any later patch
    # of the base class's method (erc_verl's own layout probe wraps FSDPEngine's).
    _wrap(module.FSDPEngine, "forward_backward_batch", make_forward_backward_batch)
    _wrap(module.FSDPEngineWithLMHead, "prepare_model_outputs", make_prepare_model_outputs)


def _patch_v0_trainer(module) -> None:
    _wrap(module.RayPPOTrainer, "_compute_old_log_prob", make_v0_compute_old_log_prob)


def _refuse_v0_dynamic_sampling(module) -> None:
    # Not a feeding concern: installed on patched trees too.
    _wrap(module.RayPPOTrainer, "fit", make_v0_fit)


def make_separated_init(verl_init):
    """verl's fully-async and one-step-off trainers (both SeparateRayPPOTrainer): refused for ERC runs."""

    @functools.wraps(verl_init)
    def __init__(self, config, *args, **kwargs):
        from .support import ASYNC_TRAINER_PROBLEM, erc_run

        if erc_run(config):
            raise ValueError("erc_verl: " + ASYNC_TRAINER_PROBLEM)
        return verl_init(self, config, *args, **kwargs)

    return __init__


def _keep_fraction_counts(module) -> None:
    # Not a feeding concern: the loss reports the counts on patched trees too.
    worker = getattr(module, "TrainingWorker", None)
    if worker is not None and "train_mini_batch" in vars(worker):
        _wrap(worker, "train_mini_batch", make_train_mini_batch)


def _refuse_separated_trainers(module) -> None:
    _wrap(module.SeparateRayPPOTrainer, "__init__", make_separated_init)


def make_v1_trainer_init(verl_init):
    """main_ppo's V1 trainer, every trainer.v1.trainer_mode (all subclass PPOTrainer): the rules of
    `erc-verl check` (support.problems) before any worker starts; the first update checks the actor's."""

    @functools.wraps(verl_init)
    def __init__(self, config, *args, **kwargs):
        from .support import problems

        found = problems(config)
        if found:
            raise ValueError("erc_verl: " + found[0])
        return verl_init(self, config, *args, **kwargs)

    return __init__


def _refuse_at_v1_trainer(module) -> None:
    _wrap(module.PPOTrainer, "__init__", make_v1_trainer_init)


# Order matters when modules are already imported: losses before engine_workers.
PATCHES = (
    ("verl.workers.utils.losses", _patch_losses),
    ("verl.workers.engine_workers", _patch_engine_workers),
    ("verl.workers.engine.fsdp.transformer_impl", _patch_fsdp_engine),
    ("verl.trainer.ppo.ray_trainer", _patch_v0_trainer),
)


def _unless_patched(patch):
    @functools.wraps(patch)
    def guarded(module) -> None:
        from .version import tree_is_patched

        # A tree carrying patches/ feeds the entropies in source; wrapping it too would do it twice.
        if not tree_is_patched():
            _named(patch)(module)

    return guarded


def _named(patch):
    """A wrapper that fails says so, with erc_verl's name and verl's release (it runs inside
    verl's own import, whose traceback would otherwise show only verl's module)."""

    @functools.wraps(patch)
    def named(module) -> None:
        try:
            patch(module)
        except Exception as exc:
            from .version import SUPPORTED_VERL, installed_verl_version

            raise RuntimeError(
                f"erc_verl could not wrap {module.__name__} ({patch.__name__}) of verl "
                f"{installed_verl_version()} (erc_verl supports verl {SUPPORTED_VERL}): {exc}"
            ) from exc

    return named


def install() -> None:
    """Patch each verl module now if imported, else right after its import. Idempotent."""
    for name, patch in PATCHES:
        after_import(name, _GUARDED.setdefault(name, _unless_patched(patch)))
    after_import("verl.trainer.ppo.ray_trainer", _GUARDED.setdefault("v0", _named(_refuse_v0_dynamic_sampling)))
    after_import("verl.workers.engine_workers", _GUARDED.setdefault("keep_counts", _named(_keep_fraction_counts)))
    after_import(
        "verl.experimental.separation.ray_trainer",
        _GUARDED.setdefault("separated", _named(_refuse_separated_trainers)),
    )
    after_import("verl.trainer.ppo.v1.trainer_base", _GUARDED.setdefault("v1", _named(_refuse_at_v1_trainer)))


_GUARDED: dict = {}
