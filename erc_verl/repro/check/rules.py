"""Extra rules, each a function `(cfg) -> str | RecipeError | None`, called in this order after
the layout checks (core.check_config) on the composed config. A string is the one-line problem
and fix, reported under the rule function's name; a RecipeError names its own key.

Add a rule by appending its function to RULES (import it here; keep the rule in the module that
owns its subject).
"""

from __future__ import annotations

from .errors import RecipeError


def ulysses_attention(cfg):
    """Ulysses > 1 only with an attention verl's Ulysses covers (erc_verl/integration/ulysses_check.py)."""
    from erc_verl.integration.ulysses_check import ulysses_attention_problem

    problem = ulysses_attention_problem(cfg.actor_rollout_ref)
    return (
        None if problem is None else RecipeError("actor_rollout_ref.model.override_config.attn_implementation", problem)
    )


def erc_support(cfg):
    """What ERC cannot gate accurately: the runtime's own rules (erc_verl/integration/support.py)."""
    from erc_verl.integration.support import problems

    found = problems(cfg)
    return RecipeError("actor_rollout_ref.actor", found[0]) if found else None


RULES: list = [ulysses_attention, erc_support]
