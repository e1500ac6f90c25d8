"""faceveil keygen -o KEYFILE [--passphrase]"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keygen", help="write a new 256-bit secret key file (owner-only, never overwritten)")
    p.add_argument("-o", "--output", required=True, help="key file to create")
    p.add_argument(
        "--passphrase",
        action="store_true",
        help="derive the key from a passphrase with scrypt (read from $FACEVEIL_PASSPHRASE or a prompt)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from faceveil.keys import SecretKey, read_passphrase, save_key

    key = SecretKey.from_passphrase(read_passphrase(confirm=True)) if args.passphrase else SecretKey.generate()
    path = save_key(key, args.output)
    print(f"wrote {path} (fingerprint {key.fingerprint})")
    return 0
