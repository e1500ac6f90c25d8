"""The ``faceveil`` command line.

Each subcommand lives in its own module under ``faceveil.cli`` and exposes
``register(subparsers)``; the module sets ``func`` on its parser, which gets the
parsed ``argparse.Namespace`` and returns the process exit code. Modules must
import heavy libraries (torch, diffusers, ...) inside ``func`` so that
``faceveil --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from faceveil import __version__

# Order is the order shown in ``faceveil --help``.
SUBCOMMANDS: tuple[str, ...] = (
    "keygen",
    "anonymize",
    "detect",
    "anonymize-shards",
    "recover",
    "inspect",
    "verify",
    "serve",
    "roundtrip",
    "demo",
    "prepare",
    "evaluate",
    "train",
    "export",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faceveil",
        description="Secure, reversible face anonymization with a key-conditioned diffusion model.",
    )
    parser.add_argument("--version", action="version", version=f"faceveil {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"faceveil.cli.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from faceveil.cli.torch_check import check_installed, explain

    try:
        if hasattr(args, "threads"):  # commands that run the networks
            broken = check_installed()
            if broken:
                print(f"faceveil {args.command}: error: {broken}", file=sys.stderr)
                return 2
            if not getattr(args, "threads_on_demand", False):  # recover sets them only if a model runs
                from faceveil.cli.common import apply_threads

                apply_threads(args.threads)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("faceveil: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line, never a traceback with secrets
        from faceveil.errors import FaceveilError

        if isinstance(exc, FaceveilError):
            from faceveil.errors import escape

            print(f"faceveil {args.command}: error: {escape(exc, None)}", file=sys.stderr)
            return 2
        why = explain(exc)
        if why:
            print(f"faceveil {args.command}: error: {why}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
