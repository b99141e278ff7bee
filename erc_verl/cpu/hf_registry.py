"""Registers erc_verl's CPU rollout backend `hf` with verl, lazily (rollout.py beside this file).

Two entries, both through verl 0.9.1's own extension points, each added right after verl
imports the module that holds it (erc_verl.integration.hooks.after_import), so loading the
plugin imports nothing extra:
  verl.workers.rollout.replica.RolloutReplicaRegistry   "hf" -> a loader returning HFReplica
  verl.workers.rollout.base._ROLLOUT_REGISTRY          ("hf", "async") -> HFServerAdapter
erc_verl.cpu.rollout (torch, transformers, Ray) is imported only when a config selects
`actor_rollout_ref.rollout.name=hf`, by verl calling the loader or the adapter lookup.

The sample's place in its group reaches the `hf` server too, so that it can seed each sample
from the request itself (any number of replicas then samples alike): verl's agent loop knows it
(`session_id`, 0..n-1, verl/trainer/ppo/v1/agent_loop_tq.py) but hands the server only a fresh
uuid. `SingleTurnAgentLoop.run` records it in a context variable and `LLMServerClient.generate`
passes it on as `erc_sample`, for `rollout.name=hf` only; other backends see no change.
"""

import contextvars
import functools

from ..integration.hooks import after_import, wrap

_SESSION = contextvars.ContextVar("erc_verl_hf_session", default=None)

ROLLOUT_NAME = "hf"
ADAPTER_FQN = "erc_verl.cpu.rollout.HFServerAdapter"


def _load_hf_replica():
    from erc_verl.cpu.rollout import HFReplica

    return HFReplica


def _register_replica(module) -> None:
    registry = module.RolloutReplicaRegistry
    if registry._registry.get(ROLLOUT_NAME) is not _load_hf_replica:
        registry.register(ROLLOUT_NAME, _load_hf_replica)


def _register_adapter(module) -> None:
    module._ROLLOUT_REGISTRY.setdefault((ROLLOUT_NAME, "async"), ADAPTER_FQN)


_SESSION_MARKER = "_erc_verl_session"


def _make_agent_loop_run(verl_run):
    @functools.wraps(verl_run)
    async def run(self, sampling_params, *args, **kwargs):
        token = _SESSION.set(kwargs.get("session_id"))
        try:
            return await verl_run(self, sampling_params, *args, **kwargs)
        finally:
            _SESSION.reset(token)

    return run


def _make_server_generate(verl_generate):
    @functools.wraps(verl_generate)
    async def generate(self, request_id, **kwargs):
        session = _SESSION.get()
        if session is not None and self.config.actor_rollout_ref.rollout.name == ROLLOUT_NAME:
            kwargs.setdefault("erc_sample", int(session))
        return await verl_generate(self, request_id, **kwargs)

    return generate


def _wrap_agent_loop_run(module) -> None:
    wrap(module.SingleTurnAgentLoop, "run", _make_agent_loop_run, _SESSION_MARKER)


def _wrap_server_client(module) -> None:
    wrap(module.LLMServerClient, "generate", _make_server_generate, _SESSION_MARKER)


def register_hf_rollout() -> None:
    """Idempotent; cheap (imports nothing from verl by itself)."""
    after_import("verl.workers.rollout.replica", _register_replica)
    after_import("verl.workers.rollout.base", _register_adapter)
    after_import("verl.experimental.agent_loop.single_turn_agent_loop", _wrap_agent_loop_run)
    after_import("verl.workers.rollout.llm_server", _wrap_server_client)
