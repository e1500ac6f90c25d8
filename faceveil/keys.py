"""Secret keys, their public fingerprints, per-image nonces and key streams.

A key is 256 random bits (or derived from a passphrase with scrypt). For every
image a fresh 128-bit nonce is drawn; the key stream for that image is
ChaCha20 keyed by HKDF-SHA256(key, salt=nonce, info=purpose). The stream is a
pure function of (key, nonce, purpose), the same bytes on every device, and
never touches torch's RNG.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from faceveil.errors import InputError

KEY_BYTES = 32
NONCE_BYTES = 16
KEYFILE_FORMAT = "faceveil-key"
KEYFILE_VERSION = 1
PASSPHRASE_ENV = "FACEVEIL_PASSPHRASE"
# scrypt cost: 2**17 * 8 * 128 B = 128 MiB of memory per derivation.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**17, 8, 1


@dataclass(frozen=True)
class SecretKey:
    """256-bit secret. ``repr``/``str`` show only the public fingerprint."""

    material: bytes = field(repr=False)
    kdf: dict[str, object] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.material) != KEY_BYTES:
            raise ValueError(f"a key has {KEY_BYTES} bytes, got {len(self.material)}")

    @property
    def fingerprint(self) -> str:
        """Public 128-bit fingerprint (hex); reveals nothing usable about the key."""
        return hashlib.sha256(b"faceveil/v1/fingerprint\0" + self.material).hexdigest()[:32]

    def __repr__(self) -> str:
        return f"SecretKey(fingerprint={self.fingerprint})"

    __str__ = __repr__

    @classmethod
    def generate(cls) -> SecretKey:
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def from_passphrase(
        cls, passphrase: str, salt: bytes | None = None, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P
    ) -> SecretKey:
        """Derive a key with scrypt (memory-hard). The salt and cost are kept, not the passphrase."""
        if not passphrase:
            raise InputError("the passphrase is empty")
        salt = os.urandom(16) if salt is None else salt
        material = Scrypt(salt=salt, length=KEY_BYTES, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))
        kdf = {"name": "scrypt", "salt": salt.hex(), "n": n, "r": r, "p": p}
        return cls(material, kdf)

    def subkey(self, purpose: str, salt: bytes) -> bytes:
        """32 bytes for one purpose, bound to ``salt`` (a nonce) by HKDF-SHA256."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"faceveil/v1/" + purpose.encode()).derive(
            self.material
        )

    def seal(self, purpose: str, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """ChaCha20-Poly1305 under the subkey for (``purpose``, ``nonce``).

        The subkey is unique per nonce, so the AEAD's own nonce can be constant.
        """
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        return ChaCha20Poly1305(self.subkey(purpose, nonce)).encrypt(bytes(12), plaintext, aad)

    def open(self, purpose: str, nonce: bytes, sealed: bytes, aad: bytes) -> bytes | None:
        """The plaintext :meth:`seal` sealed, or None for a wrong key or altered data."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        try:
            return ChaCha20Poly1305(self.subkey(purpose, nonce)).decrypt(bytes(12), sealed, aad)
        except InvalidTag:
            return None

    def check_value(self, nonce: bytes) -> str:
        """Per-file public check value (64-bit hex): HMAC under a subkey bound to ``nonce``.

        It tells the key holder whether a file is theirs, yet files under one key share
        nothing (unlike :attr:`fingerprint`), so they do not cluster by publisher.
        """
        return hmac.new(self.subkey("check", nonce), b"faceveil/v2/check", hashlib.sha256).hexdigest()[:16]

    def mac(self, data: bytes) -> str:
        """HMAC-SHA256 tag (hex) that authenticates public file metadata under this key."""
        return hmac.new(self.subkey("metadata-mac", b""), data, hashlib.sha256).hexdigest()


def tags_equal(expected: str | bytes, given: object) -> bool:
    """Constant-time comparison of a tag we computed with one read from an untrusted file, whatever
    its type or characters (``hmac.compare_digest`` refuses non-ASCII text with a TypeError)."""
    a = expected if isinstance(expected, bytes) else expected.encode()
    b = given if isinstance(given, bytes) else str(given).encode("utf-8", "replace")
    return hmac.compare_digest(a, b)


def new_nonce() -> bytes:
    """A fresh random 128-bit nonce for one image."""
    return os.urandom(NONCE_BYTES)


def keystream(key: SecretKey, nonce: bytes, purpose: str, length: int) -> bytes:
    """``length`` pseudo-random bytes for (key, nonce, purpose): ChaCha20 under an HKDF subkey."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a nonce has {NONCE_BYTES} bytes, got {len(nonce)}")
    # The subkey is already unique per nonce, so ChaCha20's own 16-byte nonce/counter can be zero.
    cipher = Cipher(algorithms.ChaCha20(key.subkey(purpose, nonce), bytes(16)), mode=None)
    return cipher.encryptor().update(bytes(length))


def key_file_bytes(key: SecretKey) -> bytes:
    """The bytes of a key file (what :func:`save_key` writes), for a caller that hands them over
    without touching the disk (the web page's download)."""
    doc: dict[str, object] = {
        "format": KEYFILE_FORMAT,
        "version": KEYFILE_VERSION,
        "fingerprint": key.fingerprint,
        "key": base64.b64encode(key.material).decode("ascii"),
    }
    if key.kdf is not None:
        doc["kdf"] = key.kdf
    return (json.dumps(doc, indent=2) + "\n").encode()


def save_key(key: SecretKey, path: str | os.PathLike[str]) -> Path:
    """Write a key file with owner-only permissions; never overwrites an existing file."""
    path = Path(path)
    data = key_file_bytes(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raise InputError(f"{path}: already exists; refusing to overwrite a key file")
    # Write a private temp file, then link it into place: the name appears complete or not at all,
    # and link() fails rather than replace a file created meanwhile.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise InputError(f"{path}: already exists; refusing to overwrite a key file") from None
    finally:
        os.unlink(tmp)
    return path


def parse_key_file(data: bytes | str, name: object = "the key file") -> SecretKey:
    """The key in a key file's bytes; errors name ``name``, never the content."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != KEYFILE_FORMAT:
            raise ValueError
        if doc.get("version") != KEYFILE_VERSION:
            raise InputError(f"{name}: key file version {doc.get('version')} is not supported")
        material = base64.b64decode(doc["key"], validate=True)
        key = SecretKey(material, doc.get("kdf"))
    except InputError:
        raise
    except Exception:  # noqa: BLE001 - never echo what we failed to parse: it may be secret
        raise InputError(f"{name}: not a faceveil key file") from None
    if doc.get("fingerprint") not in (None, key.fingerprint):
        raise InputError(f"{name}: key file is corrupt (fingerprint does not match the key)")
    return key


def load_key(path: str | os.PathLike[str]) -> SecretKey:
    """Read a key file written by :func:`save_key`; errors name the file, never its content."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such key file") from None
    except OSError:
        raise InputError(f"{path}: not a faceveil key file") from None
    key = parse_key_file(data, path)
    if os.name == "posix" and path.stat().st_mode & 0o077:
        print(f"faceveil: warning: {path}: key file is readable by other users; chmod 600 it", file=sys.stderr)
    return key


def read_passphrase(confirm: bool = False) -> str:
    """Passphrase from $FACEVEIL_PASSPHRASE or a hidden prompt (never from argv: it would show in ps)."""
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env
    first = getpass.getpass("Passphrase: ")
    if confirm and getpass.getpass("Repeat passphrase: ") != first:
        raise InputError("the passphrases do not match")
    return first
