"""`erc-verl check [RECIPE ...]`: compose recipes on verl's config and build it, on CPU, no Ray."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from .compose import default_recipes_dir, list_recipes, resolve_recipe
from .core import check_recipe
from .errors import RecipeError
from .paths import check_model_path


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "recipes", nargs="*", help="recipe names in the recipes folder, or paths to recipe yaml files (default: all)"
    )
    parser.add_argument("--recipes-dir", type=Path, default=None, help="folder of recipes (default: ./recipes)")
    parser.add_argument(
        "--override",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Hydra override applied to every recipe (repeatable)",
    )
    parser.add_argument(
        "--model-path",
        default=None,
        help="a local model folder (with config.json): also build HFModelConfig, which loads its tokenizer",
    )


def check_main(args) -> int:
    if args.recipes_dir is not None and not args.recipes_dir.is_dir():
        raise UserError(
            f"--recipes-dir {args.recipes_dir}: no such folder; fix: the recipes/ folder of an erc-verl checkout"
        )
    recipes_dir = args.recipes_dir or default_recipes_dir()
    names = args.recipes or (list_recipes(recipes_dir) if recipes_dir else [])
    if not names:
        where = f"no *.yaml recipe in {recipes_dir}" if recipes_dir else "no recipes/ folder found"
        raise UserError(f"{where}; fix: pass recipe names or yaml paths, or --recipes-dir DIR")
    if args.model_path:
        try:
            check_model_path(args.model_path, "--model-path")
        except RecipeError as exc:
            raise UserError(exc.message) from exc
    failed = 0
    for arg in names:
        try:
            config_dir, name = resolve_recipe(arg, recipes_dir)
        except FileNotFoundError as exc:
            print(f"FAIL {arg}: {exc}")
            failed += 1
            continue
        try:
            summary = check_recipe(config_dir, name, args.override, args.model_path)
        except RecipeError as exc:
            print(f"FAIL {name}: {exc.key}: {exc.message}")
            failed += 1
            continue
        print(f"OK   {name}: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    print(f"{len(names) - failed}/{len(names)} recipes OK (composed and built on CPU; not trained)")
    return 1 if failed else 0


main = check_main
add_arguments = add_check_arguments
