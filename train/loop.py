"""The training run: ``accelerate launch train/finetune.py --config configs/NAME.yaml [key=value ...] [--resume latest]``.

One process, one GPU, several GPUs (DDP) or FSDP / DeepSpeed, all chosen by the
launcher (``accelerate launch`` / ``accelerate config``), never by this code. The
data loader splits by process and worker itself and is not passed to
``accelerator.prepare``. The run is :func:`faceveil.train.recipe.recipe_main` (the recipe,
:class:`~faceveil.train.recipe.FinetuneRecipe`); this module is its command line;
see :mod:`faceveil.train.objective` for the objective, :mod:`faceveil.train.checkpointing` for
the checkpoint layout.

The run directory (``output.run_dir``) receives:

- ``config.yaml``: the whole resolved config (no secrets: training keys are drawn per image);
- ``logs/``: tensorboard event files (every loss, lr, identity cosines, recovery error,
  images/s, peak memory, the validation grid);
- ``samples/step-XXXXXX.png``: the validation grids, original | anonymized | recovered | wrong key;
- ``metrics.jsonl``: every logged record, one JSON object a line;
- ``checkpoints/step-XXXXXX/``: the last ``output.keep_checkpoints`` checkpoints;
- ``final.json``: the summary of the last run segment.

``config.yaml`` and ``final.json`` are written atomically (temp file, fsync, rename).

Training keys: with ``objective.key_seed`` unset, one random 256-bit key-derivation seed is
drawn per run (``os.urandom``, on the main process, shared with the others) and every key
and nonce is derived from it and the batch coordinates. It is stored in the checkpoints'
``train_state.json`` only -- never in ``config.yaml``, ``metrics.jsonl``, tensorboard,
``final.json`` or an export -- so ``--resume`` draws the same keys as an uninterrupted run.
(It derives training keys only; no anonymized file is ever keyed with it.)

Resume (``--resume``) continues bit for bit -- weights, optimizer, LR schedule, RNG, data
position (``data.resume: skip``) and keys -- when the process count (world size) and
``data.num_workers`` are those of the run that wrote the checkpoint: the data stream is
split by process and worker, so a different count gives a different stream. When either
differs, the run warns and resumes the data with ``reseed`` (a fresh stream seeded by the
step: statistically equivalent, not identical). A checkpoint whose LoRA tensors do not fit
this config's adapter (``lora.rank``, targets) is refused with one line naming the file.

SIGTERM / SIGINT: the current step finishes, a checkpoint is saved, the run exits
with status 0 (``--resume latest`` continues). A second signal stops at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from faceveil.errors import FaceveilError
from faceveil.train.config_schema import config_yaml, load_train_config


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The training command line, shared by train/finetune.py and 'faceveil train'."""
    p.add_argument("--config", required=True, help="YAML config (e.g. configs/tiny.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. train.max_steps=200")
    p.add_argument("--resume", metavar="latest|auto|STEP|DIR",
                   help="continue from a checkpoint of output.run_dir (auto: the latest if any, else start)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def build_parser(prog: str = "finetune.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Fine-tune faceveil's LoRA adapters (identity shift, exact recovery). "
        "Run under 'accelerate launch' for several processes.",
    )
    add_train_arguments(p)
    return p


def main(argv: Sequence[str] | None = None, prog: str = "finetune.py") -> int:
    return run_parsed(build_parser(prog).parse_args(argv))


def run_parsed(args: argparse.Namespace) -> int:
    """Run training for parsed :func:`add_train_arguments` options; the exit code."""
    try:
        cfg = load_train_config(args.config, args.overrides)
        if args.print_config:
            print(config_yaml(cfg), end="")
            return 0
        from faceveil.train.recipe import recipe_main

        result = recipe_main(cfg, resume=args.resume)
    except FaceveilError as exc:
        print(f"faceveil train: error: {exc}", file=sys.stderr)
        return 2
    if result.stopped_by:
        print(f"faceveil train: stopped by {result.stopped_by} at step {result.step}; checkpoint {result.checkpoint}; "
              "continue with --resume latest", file=sys.stderr)
    return 0
