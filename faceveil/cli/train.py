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
    from faceveil.train.loop import add_train_arguments

    add_train_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from faceveil.train.loop import run_parsed

    return run_parsed(args)
