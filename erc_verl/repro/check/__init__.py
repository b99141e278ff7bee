"""`erc-verl check`: compose recipes on verl's config and build it, on CPU, no Ray.

compose (find and compose recipes), keys (valid keys from the config and its classes),
values (types against verl's defaults), layout (world size, Ulysses, batches), paths (model and
data), rules (extra rule functions), core (the check in order), cli (`erc-verl check`),
preflight (what scripts/launch.sh runs before Ray starts).
"""

from .cli import add_check_arguments, check_main
from .compose import (
    PLACEHOLDER_MODEL,
    PLACEHOLDER_OVERRIDES,
    compose_recipe,
    default_recipes_dir,
    list_recipes,
    resolve_recipe,
)
from .core import check_config, check_recipe
from .errors import RecipeError
from .layout import check_cluster
from .paths import check_data_files, check_model_path
from .rules import RULES

main = check_main
add_arguments = add_check_arguments

__all__ = [
    "PLACEHOLDER_MODEL",
    "PLACEHOLDER_OVERRIDES",
    "RULES",
    "RecipeError",
    "add_arguments",
    "add_check_arguments",
    "check_cluster",
    "check_config",
    "check_data_files",
    "check_main",
    "check_model_path",
    "check_recipe",
    "compose_recipe",
    "default_recipes_dir",
    "list_recipes",
    "main",
    "resolve_recipe",
]
