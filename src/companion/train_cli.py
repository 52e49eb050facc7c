"""``companion train``: the command line of :func:`companion.trainer.train`.

Every option is a field of :class:`companion.train_config.TrainConfig` (``--help`` is generated from it), plus
``--resume DIR`` (continue a run from its checkpoint; only ``--steps`` may change), ``--overwrite``, ``--until-step``
and ``--quiet``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from companion.config import add_dataclass_arguments, config_from_args, explicit_options, load_config
from companion.runs import BAD_INPUT, RunError
from companion.train_config import GROUPS, TrainConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="companion train",
        description="Post-train a policy with grpo, dr_grpo, fisft_plus or fisft_pm: sample, verify, weight, update.",
    )
    for group in GROUPS:  # --help lists the options group by group
        add_dataclass_arguments(parser.add_argument_group(group.__doc__.split(":")[0].rstrip(".")), group)
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint (its config is "
                                                        "reused; only --steps may change)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    parser.add_argument("--until-step", type=int, metavar="N", help="stop after step N, checkpointing it, as if "
                                                                    "interrupted (continue later with --resume)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def config_of(args: argparse.Namespace, argv: list[str]) -> TrainConfig:
    """The run the command line asks for: a new one, or with ``--resume`` the saved one (only ``--steps`` may
    change)."""
    if not args.resume:
        return config_from_args(TrainConfig, args)
    given = explicit_options(TrainConfig, argv)
    if given - {"steps"}:
        flags = ", ".join("--" + name.replace("_", "-") for name in sorted(given - {"steps"}))
        raise RunError(f"--resume reuses {args.resume}/config.json: drop {flags} (only --steps may change)")
    saved = Path(args.resume) / "config.json"
    if not saved.exists():
        raise RunError(f"nothing to resume: {args.resume} holds no config.json")
    changes = {"out": args.resume, **({"steps": args.steps} if "steps" in given else {})}
    return dataclasses.replace(load_config(TrainConfig, saved), **changes)


def main(argv: list[str] | None = None) -> int:
    from companion.tasks.gsm8k import GSM8KUnavailable
    from companion.trainer import TrainingDiverged, train

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        config = config_of(args, argv)
        if args.until_step is not None and args.until_step < 1:
            raise ValueError(f"--until-step must be >= 1, got {args.until_step}")
        result = train(config, resume=bool(args.resume), overwrite=args.overwrite, until_step=args.until_step,
                       progress=not args.quiet)
    except (ValueError, OSError, GSM8KUnavailable) as err:  # RunError among them: options, a run directory or
        print(f"companion train: error: {err}", file=sys.stderr)  # problems that cannot be had
        return BAD_INPUT
    except TrainingDiverged as err:
        print(f"companion train: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        out = args.resume or args.out
        print(f"\ncompanion train: interrupted; {out} keeps its last checkpoint (every --save-every steps): "
              f"continue with `companion train --resume {out}`", file=sys.stderr)
        return 130
    last = result.metrics[-1] if result.metrics else {}
    summary = ", ".join(f"{k}={last[k]:.3f}" for k in ("reward", "accuracy", "eval_accuracy_greedy")
                        if last.get(k) is not None)
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per data-parallel process
        print(f"run in {result.out} (step {last.get('step', 0)} of {config.steps}{': ' + summary if summary else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
