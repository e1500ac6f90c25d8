"""faceveil evaluate --config configs/eval/NAME.yaml [KEY=VALUE ...]: the evaluation protocol."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure anonymization, recovery, security and utility against baselines (metrics.json, report.md, figures)",
        description="Run an evaluation config; same as 'python -m faceveil.evaluate.run'. "
        "Outputs go to the config's run folder (output=...); a re-run resumes from its per-image cache.",
    )
    p.add_argument("--robustness", action="store_true",
                   help="instead of a config: recovery from the pixels alone (stripped, JPEG, resized copies), ours "
                   "against the published method on the same weights and faces (faceveil.evaluate.robustness)")
    p.add_argument("--config", help="evaluation config, e.g. configs/eval/tiny.yaml (a bare packaged name such as tiny.yaml works from anywhere)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. output=runs/x data.limit=4 model.steps=20")
    from faceveil.evaluate.robustness import add_args

    add_args(p.add_argument_group("--robustness options"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from faceveil.errors import ConfigError

    if args.robustness:
        from faceveil.evaluate.robustness import main_from_args

        return main_from_args(args)
    if not args.config:
        raise ConfigError("give --config (an evaluation config, e.g. configs/eval/tiny.yaml) or --robustness")
    from faceveil.evaluate.run import run_from_args

    return run_from_args(args.config, args.overrides)
