import numpy as np
import pytest
import torch

from faceveil.errors import KeyMismatchError, TamperedError
from faceveil.fileformat import HEADER_CHUNK, read_chunks, read_header, read_veiled, write_veiled
from faceveil.keys import SecretKey
from faceveil.models.pipeline import Anonymizer, Settings, psnr, to_tensor

STEPS = 10


def _z0(backbone, image):
    with torch.no_grad():
        return backbone.encode(to_tensor([image]))[0].double()


@pytest.fixture(scope="module")
def exact_run(tiny_backbone, face128, mask128, tmp_path_factory):
    key = SecretKey.generate()
    anonymizer = Anonymizer(tiny_backbone, Settings("exact", STEPS))
    veiled = anonymizer.anonymize([face128], [mask128], key)[0]
    path = tmp_path_factory.mktemp("exact") / "anon.png"
    write_veiled(path, veiled, key)
    return anonymizer, key, veiled, path


def test_exact_recovery_from_file_and_through_the_model(tiny_backbone, face128, exact_run):
    anonymizer, key, veiled, path = exact_run
    # The file alone gives the original back (its sealed pixels, checked against the sealed digest).
    stored = read_veiled(path, key)
    assert stored.state is None and np.array_equal(stored.original, face128)
    # The model's own way back, from the in-memory result: the scheme is exact on these kernels.
    rec = anonymizer.recover([veiled], key)[0]
    assert (rec.latent.double() - _z0(tiny_backbone, face128)).abs().max() <= 1e-4
    assert np.array_equal(rec.image, face128)  # the sealed residual makes pixels exact


def test_background_is_bit_identical_and_face_changes(face128, mask128, exact_run):
    veiled = exact_run[2]
    assert np.array_equal(veiled.image[~mask128], face128[~mask128])
    assert psnr(veiled.image[mask128], face128[mask128]) < 25


def test_wrong_key_is_refused_and_forced_gives_another_face(tiny_backbone, face128, mask128, exact_run):
    anonymizer, _, _, path = exact_run
    wrong = SecretKey.generate()
    with pytest.raises(KeyMismatchError, match="wrong key"):
        read_veiled(path, wrong)
    stored = exact_run[2]
    with pytest.raises(KeyMismatchError, match="check value"):
        anonymizer.recover([stored], wrong)
    rec = anonymizer.recover([stored], wrong, force=True)[0]
    assert (rec.latent.double() - _z0(tiny_backbone, face128)).abs().max() > 1.0
    assert psnr(rec.image[mask128], face128[mask128]) < 25
    assert np.array_equal(rec.image[~mask128], face128[~mask128])


def test_file_format_roundtrip(mask128, exact_run):
    _, key, veiled, path = exact_run
    header = read_header(path)
    face = header["faces"][0]
    assert face["nonce"] == veiled.nonce.hex() and face["check"] == key.check_value(veiled.nonce)
    assert "key_fingerprint" not in header and key.fingerprint not in path.read_bytes().decode("latin-1")
    assert header["version"] == 3 and "backbone" not in header and "scheme" not in header
    assert key.material.hex() not in path.read_bytes().hex()
    # Nothing public is a function of the original: no state at all, the original pixels sealed.
    data = path.read_bytes()
    assert veiled.original[mask128].tobytes()[:48] not in data
    back = read_veiled(path, key)
    assert back.state is None and back.settings.scheme == "exact" and back.settings.steps == STEPS
    assert np.array_equal(back.mask, mask128) and np.array_equal(back.image, veiled.image)
    assert np.array_equal(back.original, veiled.original)


def test_modified_metadata_is_detected(exact_run, tmp_path):
    import json
    import struct
    import zlib

    _, key, _, path = exact_run
    good_bytes, good_hdr = path.read_bytes(), read_chunks(path)[HEADER_CHUNK]
    forged = json.loads(good_hdr)
    forged["faceveil_version"] = "9.9"
    body = json.dumps(forged).encode()
    chunk = struct.pack(">I", len(body)) + HEADER_CHUNK + body + struct.pack(">I", zlib.crc32(HEADER_CHUNK + body) & 0xFFFFFFFF)
    start = good_bytes.index(struct.pack(">I", len(good_hdr)) + HEADER_CHUNK)
    (tmp_path / "forged.png").write_bytes(good_bytes[:start] + chunk + good_bytes[start + 12 + len(good_hdr) :])
    with pytest.raises(TamperedError, match="modified"):
        read_veiled(tmp_path / "forged.png", key)
    forced = read_veiled(tmp_path / "forged.png", key, allow_unverified=True)
    assert forced.authenticated is False and np.array_equal(forced.original, exact_run[2].original)


@pytest.mark.parametrize("scheme", ["fixed-point", "exact"])
def test_stripped_file_recovers_from_pixels(tiny_backbone, face128, mask128, monkeypatch, scheme):
    key = SecretKey(bytes(range(32)))
    anonymizer = Anonymizer(tiny_backbone, Settings(scheme, STEPS))
    veiled = anonymizer.anonymize([face128], [mask128], key, nonces=[bytes(16)], allow_caller_nonces=True)[0]
    stripped = type(veiled)(**{**veiled.__dict__, "state": None, "sealed_residual": None})
    # The tiny random autoencoder cannot round-trip pixels; stand in a perfect one, so what is
    # measured is the scheme restarting from the clean latent alone.
    monkeypatch.setattr(anonymizer, "encode", lambda x: veiled.state[:1].float().to(x.device))
    rec = anonymizer.recover([stripped], key)[0]
    wrong = anonymizer.recover([stripped], SecretKey(bytes(32)), force=True)[0]
    z0 = _z0(tiny_backbone, face128)
    err = (rec.latent.double() - z0).abs().mean().item()
    wrong_err = (wrong.latent.double() - z0).abs().mean().item()
    assert np.array_equal(rec.image[~mask128], face128[~mask128])
    if scheme == "fixed-point":
        # A single-latent state is all there is: restarting from it loses nothing.
        assert err < 0.01 * wrong_err
    else:
        # The exact scheme also needs the partner latent; re-deriving it is an approximation (on these
        # random weights a poor one). Measured: mean error 1.16 against 2.34 for a wrong key (ratio 0.50);
        # the right key must stay clearly closer than a wrong one.
        assert err < 0.6 * wrong_err


def test_fixed_point_recovers_better_than_ddim(tiny_backbone, face128, mask128):
    key = SecretKey.generate()
    z0 = _z0(tiny_backbone, face128)
    errs = {}
    for scheme in ("ddim", "fixed-point"):
        a = Anonymizer(tiny_backbone, Settings(scheme, STEPS, residual=False))
        rec = a.recover(a.anonymize([face128], [mask128], key), key)[0]
        errs[scheme] = (rec.latent.double() - z0).abs().max().item()
    assert errs["fixed-point"] < errs["ddim"] / 10


@pytest.mark.parametrize("transform", ["signflip", "shuffle"])
def test_batched_exact_roundtrip_and_distinct_nonces(tiny_backbone, face128, face128_b, mask128, transform):
    key = SecretKey.generate()
    a = Anonymizer(tiny_backbone, Settings("exact", 4, transform))
    veiled = a.anonymize([face128, face128_b, face128], [mask128] * 3, key)
    assert len({v.nonce for v in veiled}) == 3
    # Same face, same key, fresh nonces: two different anonymizations.
    assert not np.array_equal(veiled[0].image, veiled[2].image)
    rec = a.recover(veiled, key)
    for r, img in zip(rec, [face128, face128_b, face128]):
        assert np.array_equal(r.image, img)
    # Recovered alone, not in the batch it was made in: still bit-exact.
    alone = a.recover(veiled[1:2], key)[0]
    assert np.array_equal(alone.image, face128_b) and torch.equal(alone.latent, rec[1].latent)


def test_bad_sizes_are_refused(tiny_backbone, face128, mask128):
    from faceveil.errors import InputError

    a = Anonymizer(tiny_backbone, Settings("exact", 2))
    with pytest.raises(InputError, match="multiples of 16"):
        a.anonymize([face128[:120]], [mask128[:120]], SecretKey.generate())
    with pytest.raises(InputError, match="mask is"):
        a.anonymize([face128], [mask128[:64]], SecretKey.generate())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_exact_round_trip_on_cpu(face128, tmp_path, dtype):
    """Anonymize and recover in bf16 / fp16 on CPU, through a written file: bit-exact pixels and latents.
    Recovering the same file in fp32 is not exact, which is why files record the dtype."""
    from PIL import Image

    from faceveil.data.images import elliptical_mask
    from faceveil.models.backbones import load_backbone

    image = np.asarray(Image.fromarray(face128).resize((64, 64), Image.Resampling.LANCZOS))
    mask = elliptical_mask(64, 64)
    key = SecretKey.generate()
    bb = load_backbone("tiny", dtype=dtype)
    veiled = Anonymizer(bb, Settings("exact", 4)).anonymize([image], [mask], key)[0]
    assert veiled.compute["dtype"] == str(dtype).removeprefix("torch.") and not np.array_equal(veiled.image, image)
    path = write_veiled(tmp_path / "v.png", veiled, key)
    assert np.array_equal(read_veiled(path, key).original, image)  # the file: exact, whatever the dtype
    rec = Anonymizer(load_backbone("tiny", dtype=dtype), Settings("exact", 4)).recover([veiled], key)[0]
    with torch.no_grad():
        z0 = bb.encode(to_tensor([image]).to(dtype)).double()
    assert np.array_equal(rec.image, image)
    assert float((rec.latent.double() - z0).abs().max()) <= 1e-6  # measured: 0 (bf16), 4.8e-7 (fp16)
    other = Anonymizer(load_backbone("tiny"), Settings("exact", 4)).recover([veiled], key)[0]
    assert float((other.latent.double() - z0).abs().max()) > 1e-4  # measured: 0.24 (bf16), 8.0e-4 (fp16)


def test_key_acts_on_the_whole_starting_noise(tiny_backbone):
    from faceveil.keys import new_nonce

    an = Anonymizer(tiny_backbone, Settings("exact", STEPS))
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[..., 2:6, 2:6] = True
    z = torch.round(torch.randn(1, 4, 8, 8, dtype=torch.float64) * 2**20) / 2**20
    key, nonce = SecretKey.generate(), [new_nonce()]
    keyed = an.key_fn(mask, key, nonce)(z)
    # Outside the face mask too: the inverted noise there is a function of the face.
    assert (keyed != z)[~mask.expand_as(z)].float().mean() > 0.9
    assert torch.equal(an.key_fn(mask, key, nonce, inverse=True)(keyed), z)


def test_caller_nonces_need_consent_and_never_repeat(tiny_backbone, face128, mask128):
    an = Anonymizer(tiny_backbone, Settings("exact", 2))
    key = SecretKey.generate()
    with pytest.raises(ValueError, match="allow_caller_nonces"):
        an.anonymize([face128], [mask128], key, nonces=[bytes(16)])
    with pytest.raises(ValueError, match="twice"):
        an.anonymize([face128, face128], [mask128, mask128], key, nonces=[bytes(16)] * 2, allow_caller_nonces=True)


def test_a_residual_that_does_not_open_is_reported(exact_run):
    anonymizer, key, veiled, path = exact_run
    good = veiled
    assert anonymizer.recover([good], key)[0].residual_opened is True
    bad = type(good)(**{**good.__dict__, "sealed_residual": bytes([good.sealed_residual[0] ^ 1]) + good.sealed_residual[1:]})
    assert anonymizer.recover([bad], key)[0].residual_opened is False
