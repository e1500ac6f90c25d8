import json
import os
import stat

import pytest

from faceveil.errors import InputError
from faceveil.keys import NONCE_BYTES, SecretKey, keystream, load_key, new_nonce, save_key

KAT_KEY = SecretKey(bytes(range(32)))
KAT_NONCE = bytes(range(16))
KAT_SIGNFLIP = "b51f4c637dbceec98d6b5a534f171cb6"
KAT_PERM = "bf62b80b17e489dca2d8846ea7380974"
KAT_FINGERPRINT = "b3e20583a55bdb172a4f2811ec4f0e8c"


def test_keystream_known_answer():
    # Pinned bits: a change here breaks recovery of every file ever written.
    assert keystream(KAT_KEY, KAT_NONCE, "signflip/signs", 16).hex() == KAT_SIGNFLIP
    assert keystream(KAT_KEY, KAT_NONCE, "shuffle/perm", 16).hex() == KAT_PERM
    assert KAT_KEY.fingerprint == KAT_FINGERPRINT


def test_keystream_is_the_documented_construction():
    # HKDF-SHA256 (RFC 5869) written out with hmac, then ChaCha20 of zeros.
    import hashlib
    import hmac

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    prk = hmac.new(KAT_NONCE, KAT_KEY.material, hashlib.sha256).digest()
    okm = hmac.new(prk, b"faceveil/v1/signflip/signs" + b"\x01", hashlib.sha256).digest()
    stream = Cipher(algorithms.ChaCha20(okm, bytes(16)), mode=None).encryptor().update(bytes(32))
    assert keystream(KAT_KEY, KAT_NONCE, "signflip/signs", 32) == stream


def test_keystream_depends_on_every_input():
    base = keystream(KAT_KEY, KAT_NONCE, "signflip/signs", 64)
    assert keystream(KAT_KEY, KAT_NONCE, "signflip/signs", 64) == base
    assert keystream(KAT_KEY, bytes(16), "signflip/signs", 64) != base
    assert keystream(SecretKey(bytes(32)), KAT_NONCE, "signflip/signs", 64) != base
    assert keystream(KAT_KEY, KAT_NONCE, "shuffle/signs", 64) != base
    # A prefix of a longer stream is the shorter stream.
    assert keystream(KAT_KEY, KAT_NONCE, "signflip/signs", 128)[:64] == base


def test_nonces_are_fresh():
    nonces = {new_nonce() for _ in range(1000)}
    assert len(nonces) == 1000 and all(len(n) == NONCE_BYTES for n in nonces)


def test_repr_hides_material():
    k = SecretKey.generate()
    assert k.material.hex() not in repr(k) and k.material.hex() not in str(k)
    assert k.fingerprint in repr(k)


def test_keyfile_roundtrip_permissions_and_no_overwrite(tmp_path):
    k = SecretKey.generate()
    path = save_key(k, tmp_path / "k.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_key(path) == k
    with pytest.raises(InputError, match="refusing to overwrite"):
        save_key(SecretKey.generate(), path)
    assert load_key(path) == k


def test_corrupt_keyfile_error_never_echoes_content(tmp_path):
    path = tmp_path / "bad.key"
    secretish = "c2VjcmV0c2VjcmV0c2VjcmV0"
    path.write_text(json.dumps({"format": "faceveil-key", "version": 1, "key": secretish + "!!"}))
    with pytest.raises(InputError) as exc:
        load_key(path)
    assert secretish not in str(exc.value) and str(path) in str(exc.value)
    with pytest.raises(InputError, match="no such key file"):
        load_key(tmp_path / "missing.key")


def test_passphrase_derivation_is_deterministic_given_salt():
    salt = bytes(16)
    a = SecretKey.from_passphrase("correct horse", salt=salt, n=2**10)
    b = SecretKey.from_passphrase("correct horse", salt=salt, n=2**10)
    c = SecretKey.from_passphrase("correct horsf", salt=salt, n=2**10)
    assert a == b and a != c
    assert a.kdf == {"name": "scrypt", "salt": salt.hex(), "n": 2**10, "r": 8, "p": 1}
