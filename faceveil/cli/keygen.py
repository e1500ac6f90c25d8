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
    p.add_argument(
        "--salt",
        help="with --passphrase: the salt (hex) of an earlier key, to derive the same key again; "
        "it is printed by keygen and kept in the key file",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from faceveil.errors import InputError
    from faceveil.keys import SecretKey, read_passphrase, save_key

    if args.salt and not args.passphrase:
        raise InputError("--salt goes with --passphrase")
    if args.passphrase:
        try:
            salt = bytes.fromhex(args.salt) if args.salt else None
        except ValueError:
            raise InputError("--salt must be hex") from None
        key = SecretKey.from_passphrase(read_passphrase(confirm=salt is None), salt=salt)
    else:
        key = SecretKey.generate()
    path = save_key(key, args.output)
    print(f"wrote {path} (fingerprint {key.fingerprint})")
    if key.kdf is not None:
        print(f"salt {key.kdf['salt']} (public; with the passphrase it derives this key again: --salt)")
    return 0
