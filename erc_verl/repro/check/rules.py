"""Extra rules, each a function `(cfg) -> str | RecipeError | None`, called in this order after
the layout checks (core.check_config) on the composed config. A string is the one-line problem
and fix, reported under the rule function's name; a RecipeError names its own key.

Add a rule by appending its function to RULES (import it here; keep the rule in the module that
owns its subject).
"""

from __future__ import annotations



def erc_support(cfg):
    """What ERC cannot gate accurately: the runtime's own rules (erc_verl/integration/support.py)."""
    from erc_verl.integration.support import problems

    from .errors import RecipeError

    found = problems(cfg)
    return RecipeError("actor_rollout_ref.actor", found[0]) if found else None


RULES: list = [erc_support]
