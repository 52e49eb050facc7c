"""The ``companion`` command: one subcommand per stage of the book's pipeline.

Each subcommand lives in the module that does the work, which defines ``main(argv) -> int``; this file only
dispatches, so importing it stays cheap (``companion --help`` does not import torch).
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "pretrain": ("companion.pretrain", "build the tokenizer and corpus, pretrain the tiny base model, measure it"),
    "train": ("companion.train_cli", "post-train a policy with grpo, dr_grpo, fisft_plus or fisft_pm"),
    "eval": ("companion.evaluate", "sample n completions per problem, score them, write the pass@k curve"),
    "mdp": ("companion.mdp", "print the token MDP of a prompt: states, actions, transitions, reward"),
    "reproduce": ("companion.experiments.reproduce", "regenerate every committed experiment from its saved config, say what differs"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="companion",
        description="Companion to 'RL in Name Only?': the package behind every figure of the book.",
        epilog="Run 'companion COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="store_true", help="print the package version and exit")
    parser.add_argument("command", nargs="?", choices=sorted(SUBCOMMANDS), metavar="COMMAND",
                        help="; ".join(f"{name}: {doc}" for name, (_, doc) in sorted(SUBCOMMANDS.items())))
    args, rest = parser.parse_known_args(argv[:1])
    if args.version:
        from companion import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    module_name, _ = SUBCOMMANDS[args.command]
    module = importlib.import_module(module_name)
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
