"""Extra rules, each a function `(cfg) -> str | RecipeError | None`, called in this order after
the layout checks (core.check_config) on the composed config. A string is the one-line problem
and fix, reported under the rule function's name; a RecipeError names its own key.

Add a rule by appending its function to RULES (import it here; keep the rule in the module that
owns its subject).
"""

from __future__ import annotations

from erc_verl.integration.ulysses_check import ulysses_attention_problem


def ulysses_attention(cfg):
    """Ulysses > 1 only with an attention verl's Ulysses covers (erc_verl/integration/ulysses_check.py)."""
    from .errors import RecipeError

    problem = ulysses_attention_problem(cfg.actor_rollout_ref)
    return None if problem is None else RecipeError("actor_rollout_ref.model.override_config.attn_implementation", problem)


RULES: list = [ulysses_attention]
