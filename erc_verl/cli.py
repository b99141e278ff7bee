"""`erc-verl` command line: thin dispatch to the modules that do the work.

A command signals a user's mistake by raising `erc_verl.repro.errors.UserError`; it is printed
here as one line and the exit status is 2. Every other exception is a bug and keeps its
traceback.
"""

import argparse
import importlib
import sys

from .repro.errors import UserError

# subcommand -> (module, one-line help). Each module defines add_arguments(parser) and main(args).
SUBCOMMANDS = {
    "demo": ("erc_verl.rehearsal.demo", "train a tiny model on CPU with and without ERC and compare"),
    "check": ("erc_verl.repro.check", "compose recipes on verl's config and build its dataclasses, without Ray"),
    "prepare-data": ("erc_verl.repro.data", "write verl RL parquet files for the paper's training and evaluation sets"),
    "table": ("erc_verl.repro.results", "Markdown results table from verl file logs"),
    "plot": ("erc_verl.repro.results", "PNG of entropy, ERC keep fraction, grad norm and val score"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="erc-verl", description="Entropy Ratio Clipping for verl")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        add = getattr(module, f"add_{name.replace('-', '_')}_arguments", None) or module.add_arguments
        add(p)
        p.set_defaults(_module=module, _name=name)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    run = getattr(args._module, f"{args._name.replace('-', '_')}_main", None) or args._module.main
    try:
        return int(run(args) or 0)
    except UserError as exc:
        print(f"erc-verl {args._name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"erc-verl {args._name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
