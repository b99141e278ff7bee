"""Runtime plumbing for stock verl 0.9.1: what feeds the two entropies to the policy loss.

Stock verl 0.9.1 already computes the old-policy entropy in the old-log-prob pass (the V1
trainer writes it back into the batch as `entropy`), but:
  1. the update computes the current entropy only when entropy_coeff != 0 or
     actor.calculate_entropy is set, and then inside the autograd graph;
  2. `ppo_loss` calls the policy-loss function with a fixed set of keywords, without entropy;
  3. `ppo_loss` re-wraps every policy-loss metric as a MEAN over micro-batches;
  4. the deprecated v0 trainer (`trainer.use_v1=false`) pops the old entropy before the update;
  5. H_old and H_cur must come from the same entropy function: rho compares them against a
     +-5% band, and two float32 formulas disagree by more than that on peaked distributions.
Each function below fixes one of these, wrapping verl's function and calling it; nothing in
verl's files is edited. A verl tree carrying patches/ does the same in source, and then none
of this is installed (see registry.install).
"""

import contextlib
import contextvars
import functools
import sys
from dataclasses import dataclass, field

import torch

from ._hooks import after_import
from .registry import loss_wants_entropy

_INSTALLED = "_erc_verl_plumbing"


@dataclass
class _EntropyFeed:
    entropy: torch.Tensor | None
    old_entropy: torch.Tensor | None
    # Metric objects (SUM/MIN/MAX aggregation) returned by the policy loss; verl's ppo_loss
    # would force them to MEAN, so they bypass it and are merged into its result afterwards.
    metrics: dict = field(default_factory=dict)


_FEED: contextvars.ContextVar[_EntropyFeed | None] = contextvars.ContextVar("erc_verl_entropy_feed", default=None)


@functools.lru_cache(maxsize=None)
def _accepts_entropy(fn) -> bool:
    # Looked up once per micro-batch; the signature of a registered function does not change.
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "old_entropy" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def feeding_get_policy_loss_fn(name: str):
    """verl's get_policy_loss_fn, plus the entropies of the micro-batch being trained."""
    from verl.trainer.ppo import core_algos
    from verl.utils.metric import Metric

    fn = core_algos.get_policy_loss_fn(name)
    feed = _FEED.get()
    if feed is None or not _accepts_entropy(fn):
        return fn

    @functools.wraps(fn)
    def fed_policy_loss(*args, **kwargs):
        pg_loss, metrics = fn(*args, entropy=feed.entropy, old_entropy=feed.old_entropy, **kwargs)
        plain = {}
        for key, value in metrics.items():
            (feed.metrics if isinstance(value, Metric) else plain)[key] = value
        return pg_loss, plain

    return fed_policy_loss


def _padded_response_field(data, key: str):
    """data[key] as a (bsz, response_len) tensor, padded the way ppo_loss pads old_log_probs."""
    if key not in data.keys():
        return None
    return data.select("old_log_probs", key).to_padded_tensor()[key]


def _missing_entropy_error(which: str, config) -> ValueError:
    mode = config.policy_loss.get("loss_mode", "vanilla")
    if which == "old":
        return ValueError(
            f"policy_loss.loss_mode={mode!r} (or entropy_ratio_monitor) needs the old-policy entropy, "
            "but the update batch has no `entropy` field. It comes from the old-log-prob pass: "
            "ERC cannot run with algorithm.rollout_correction.bypass_mode=true (no such pass); with "
            "trainer.use_v1=false make sure erc_verl is loaded in the driver too (the `verl.plugins` "
            "entry point or VERL_USE_EXTERNAL_MODULES=erc_verl)."
        )
    return ValueError(
        f"policy_loss.loss_mode={mode!r} (or entropy_ratio_monitor) needs the current-policy entropy, "
        "but the engine returned none. erc_verl requests it from verl's FSDP engine; for another engine "
        "set actor_rollout_ref.actor.calculate_entropy=true."
    )


def make_ppo_loss_with_entropy(verl_ppo_loss):
    @functools.wraps(verl_ppo_loss)
    def ppo_loss_with_entropy(config, model_output, data, dp_group=None):
        if not loss_wants_entropy(config.policy_loss):
            return verl_ppo_loss(config, model_output, data, dp_group)
        from verl.workers.utils.padding import no_padding_2_padding

        current = model_output.get("entropy", None)
        if current is None:
            raise _missing_entropy_error("current", config)
        old = _padded_response_field(data, "entropy")
        if old is None:
            raise _missing_entropy_error("old", config)
        feed = _EntropyFeed(entropy=no_padding_2_padding(current, data), old_entropy=old)
        token = _FEED.set(feed)
        try:
            loss, metrics = verl_ppo_loss(config, model_output, data, dp_group)
        finally:
            _FEED.reset(token)
        metrics.update(feed.metrics)
        return loss, metrics

    setattr(ppo_loss_with_entropy, _INSTALLED, True)
    return ppo_loss_with_entropy


def _no_grad(fn):
    @functools.wraps(fn)
    def entropy_without_graph(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)

    return entropy_without_graph


def _gate_entropy_fn(engine):
    """The entropy function for the gate: verl's own where the user tuned it, else blockwise."""
    from .entropy import entropy_from_logits_blockwise

    config = engine.engine_config
    own = engine.__dict__.get("compute_entropy_from_logits")
    if own is not None and (config.entropy_from_logits_with_chunking or config.use_torch_compile):
        # verl's chunked or compiled kernel is already memory-lean; only its graph must go.
        return _no_grad(own)
    return entropy_from_logits_blockwise


@contextlib.contextmanager
def _entropy_outside_autograd(engine):
    """Within one forward step, verl's entropy helpers run under no_grad, block by block.

    Nothing of the softmax over the vocabulary is then saved for backward, and no
    tokens x vocabulary temporary is made. verl's fused-kernel path computes entropy inside
    its kernel and does not go through these helpers; it is used as it is.
    """
    import verl.utils.torch_functional as verl_F

    from .entropy import entropy_from_logits_blockwise

    own = engine.__dict__.get("compute_entropy_from_logits")
    module_fn = verl_F.entropy_from_logits
    if own is not None:
        engine.compute_entropy_from_logits = _gate_entropy_fn(engine)
    verl_F.entropy_from_logits = entropy_from_logits_blockwise  # the padded (no remove-padding) path
    try:
        yield
    finally:
        verl_F.entropy_from_logits = module_fn
        if own is not None:
            engine.compute_entropy_from_logits = own


def _actor_config(loss_function):
    keywords = getattr(loss_function, "keywords", None) or {}
    return keywords.get("config")


# Non-tensor flag on an old-log-prob batch: compute its entropy with the gate's function.
_GATE_ENTROPY_FLAG = "erc_verl_gate_entropy"


def _gate_entropy_without_graph(config) -> bool:
    return config is not None and config.entropy_coeff == 0 and loss_wants_entropy(config.get("policy_loss"))


def make_infer_batch(verl_infer_batch):
    """Old-log-prob pass: H_old from the same entropy function as H_cur in the update.

    rho compares two entropies; computed by two formulas, their float32 rounding differs (verl's
    logsumexp - sum(p * z) loses several percent on peaked distributions, the band is +-5%), and
    on-policy tokens would be cut for it. Only for a worker whose loss wants the entropy.
    """

    @functools.wraps(verl_infer_batch)
    def infer_batch(self, data, *args, **kwargs):
        from tensordict import TensorDict

        if isinstance(data, TensorDict) and _gate_entropy_without_graph(_actor_config(self.loss_fn)):
            from verl.utils import tensordict_utils as tu

            tu.assign_non_tensor(data, **{_GATE_ENTROPY_FLAG: True})
        return verl_infer_batch(self, data, *args, **kwargs)

    setattr(infer_batch, _INSTALLED, True)
    return infer_batch


def make_forward_step(verl_forward_step):
    @functools.wraps(verl_forward_step)
    def forward_step(self, micro_batch, loss_function, forward_only):
        from verl.utils import tensordict_utils as tu

        if forward_only:
            gate = tu.get_non_tensor_data(data=micro_batch, key=_GATE_ENTROPY_FLAG, default=False)
            if gate and tu.get_non_tensor_data(data=micro_batch, key="calculate_entropy", default=False):
                with _entropy_outside_autograd(self):
                    return verl_forward_step(self, micro_batch, loss_function=loss_function, forward_only=True)
            return verl_forward_step(self, micro_batch, loss_function=loss_function, forward_only=True)
        config = _actor_config(loss_function)
        if config is None or not loss_wants_entropy(config.get("policy_loss")):
            return verl_forward_step(self, micro_batch, loss_function=loss_function, forward_only=forward_only)

        tu.assign_non_tensor(micro_batch, calculate_entropy=True)
        if config.entropy_coeff != 0:
            # The entropy bonus needs the graph; verl's own path is the right one then.
            return verl_forward_step(self, micro_batch, loss_function=loss_function, forward_only=forward_only)
        with _entropy_outside_autograd(self):
            return verl_forward_step(self, micro_batch, loss_function=loss_function, forward_only=forward_only)

    setattr(forward_step, _INSTALLED, True)
    return forward_step


def make_v0_compute_old_log_prob(verl_compute_old_log_prob):
    """v0 trainer: keep a copy of the old entropy under `entropy`; fit() pops only `entropys`."""

    @functools.wraps(verl_compute_old_log_prob)
    def _compute_old_log_prob(self, batch):
        old_log_prob, mfu = verl_compute_old_log_prob(self, batch)
        policy_loss = self.config.actor_rollout_ref.actor.get("policy_loss")
        if loss_wants_entropy(policy_loss) and "entropys" in old_log_prob.batch.keys():
            old_log_prob.batch["entropy"] = old_log_prob.batch["entropys"].clone()
        return old_log_prob, mfu

    setattr(_compute_old_log_prob, _INSTALLED, True)
    return _compute_old_log_prob


def _wrap(owner, name: str, make) -> None:
    current = getattr(owner, name)
    if not getattr(current, _INSTALLED, False):
        setattr(owner, name, make(current))


def _patch_losses(module) -> None:
    module.get_policy_loss_fn = feeding_get_policy_loss_fn
    _wrap(module, "ppo_loss", make_ppo_loss_with_entropy)


def _patch_engine_workers(module) -> None:
    # init_model binds `ppo_loss` from this module's namespace when it builds the loss function.
    module.ppo_loss = sys.modules["verl.workers.utils.losses"].ppo_loss
    _wrap(module.TrainingWorker, "infer_batch", make_infer_batch)


def _patch_fsdp_engine(module) -> None:
    _wrap(module.FSDPEngineWithLMHead, "forward_step", make_forward_step)


def _patch_v0_trainer(module) -> None:
    _wrap(module.RayPPOTrainer, "_compute_old_log_prob", make_v0_compute_old_log_prob)


# Order matters when modules are already imported: losses before engine_workers.
_PATCHES = (
    ("verl.workers.utils.losses", _patch_losses),
    ("verl.workers.engine_workers", _patch_engine_workers),
    ("verl.workers.engine.fsdp.transformer_impl", _patch_fsdp_engine),
    ("verl.trainer.ppo.ray_trainer", _patch_v0_trainer),
)


def install() -> None:
    """Patch each verl module now if imported, else right after its import. Idempotent."""
    for name, patch in _PATCHES:
        after_import(name, patch)
