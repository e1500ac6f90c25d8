"""faceveil train --config CONFIG [KEY=VALUE ...] [--resume latest]

The same as ``python train/finetune.py``; for several processes or GPUs run
``accelerate launch train/finetune.py ...`` (or ``accelerate launch -m faceveil train ...``).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune LoRA adapters (identity shift, exact recovery); see configs/*.yaml",
        description="Fine-tune faceveil's LoRA adapters. One process here; use 'accelerate launch "
        "train/finetune.py' for several.",
    )
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/tiny.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.max_steps=200")
    p.add_argument("--resume", metavar="latest|auto|STEP|DIR",
                   help="continue from a checkpoint of output.run_dir (auto: the latest if any, else start)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from faceveil.train.loop import main

    argv = ["--config", args.config, *args.overrides]
    if args.resume:
        argv += ["--resume", args.resume]
    if args.print_config:
        argv.append("--print-config")
    return main(argv, prog="faceveil train")
