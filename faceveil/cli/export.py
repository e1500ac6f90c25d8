"""faceveil export RUN_DIR -o OUT [--checkpoint latest] [--merge] [--push-to-hub REPO_ID]"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a trained run's LoRA adapter, settings and model card to a folder (and publish it)",
        description="Export a training run: diffusers-loadable LoRA weights, faceveil.json (base backbone, "
        "scheme, steps, transform), the training config and a model card. 'faceveil anonymize/recover "
        "--backbone OUT' use the folder.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the training run's output.run_dir")
    p.add_argument("-o", "--output", required=True, type=Path, help="export folder to write")
    p.add_argument("--checkpoint", default="latest", help="latest (default), a step number, step-XXXXXX or a checkpoint folder")
    p.add_argument("--merge", action="store_true", help="also write the UNet with the adapter merged (unet/)")
    p.add_argument("--eval-json", type=Path, help="an evaluation report (JSON) to put in the model card")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    p.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        help="upload the folder to this Hugging Face Hub model repo (token: HF_TOKEN or 'huggingface-cli login'); "
        "file:///PATH copies it to a local folder instead",
    )
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from faceveil.cli.common import quiet_libraries
    from faceveil.train.export import export_run

    quiet_libraries()
    out = export_run(args.run_dir, args.output, checkpoint=args.checkpoint, merge=args.merge,
                     eval_json=args.eval_json, overwrite=args.overwrite)
    print(f"faceveil export: wrote {out}", file=sys.stderr)
    if args.push_to_hub:
        from faceveil.train.hub import push_to_hub

        where = push_to_hub(out, args.push_to_hub, private=args.private)
        print(f"faceveil export: uploaded to {where}", file=sys.stderr)
    return 0
