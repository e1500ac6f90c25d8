"""Reading file format v2 (still read, replayed through the model) and v1 (only with allow_v1)."""

from __future__ import annotations

import hashlib
import json
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from faceveil.cli import main
from faceveil.fileformat.png import join_chunks as _png
from faceveil.fileformat.png import split_chunks as _chunks
from faceveil.errors import FormatError, KeyMismatchError, TamperedError
from faceveil.fileformat import (
    DATA_CHUNK,
    HEADER_CHUNK,
    FaceRecord,
    FileInfo,
    escape,
    read_file,
    read_header,
    read_veiled,
    verify_file,
    write_file,
)
from faceveil.keys import SecretKey, new_nonce, save_key
from faceveil.models.inversion import LATTICE
from faceveil.models.settings import Settings
from faceveil.fileformat.sealing import exactly, open_arrays

# Reading any crafted file below must stay far under this (the files are a few KB).
PEAK_BYTES = 16 * 2**20


def _record(size: int = 32, seed: int = 0) -> FaceRecord:
    g = np.random.default_rng(seed)
    mask = np.zeros((size, size), bool)
    mask[8:24, 10:22] = True
    state = torch.from_numpy(np.round(g.normal(size=(2, 4, size // 8, size // 8)) / LATTICE) * LATTICE)
    return FaceRecord(new_nonce(), mask, state, b"sealed-residual-bytes")


INFO = FileInfo("tiny", Settings("exact", 4, "shuffle"), {"dtype": "float32", "device": "cpu"})


@pytest.fixture()
def good(tmp_path):
    key = SecretKey.generate()
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    rec = _record()
    path = write_file(tmp_path / "good.png", image, [rec], INFO, key)
    return path, key, image, rec


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _refused(path: Path, key: SecretKey, match: str) -> None:
    def read() -> None:
        with pytest.raises(FormatError, match=match):
            read_file(path, key)

    assert _peak(read) < PEAK_BYTES


def test_records_round_trip_sealed_and_public_header_is_not_tied_to_the_original(good, tmp_path):
    path, key, image, rec = good
    vf = read_file(path, key)
    got = vf.records[0]
    assert torch.equal(got.state, rec.state) and np.array_equal(got.mask, rec.mask) and got.sealed_residual == rec.sealed_residual
    assert got.affine is None and np.array_equal(vf.image, image) and vf.authenticated and vf.pixels_intact
    header = read_header(path)
    assert header["version"] == 2 and set(header["faces"][0]) == {"nonce", "check", "sealed_bytes"}
    assert "mask" not in json.dumps(header) and "key_fingerprint" not in header
    # Two files under one key share no public value (per-file check values, not a fingerprint).
    other = read_header(write_file(tmp_path / "b.png", image, [_record(seed=2)], INFO, key))
    assert other["faces"][0]["check"] != header["faces"][0]["check"]
    # Without the key, only the header and pixels are read.
    assert read_file(path).records == [] and read_file(path).authenticated is None


def test_photo_container_with_alignment_and_photo_record(tmp_path):
    key = SecretKey.generate()
    image = np.zeros((48, 64, 3), np.uint8)
    faces = [_record(seed=i) for i in range(3)]
    faces[1].affine = np.array([[0.5, 0.0, 3.0], [0.0, 0.5, -2.0]])
    extra = {"photo_residual": np.arange(60, dtype=np.int16).reshape(20, 3)}
    vf = read_file(write_file(tmp_path / "p.png", image, faces, INFO, key, photo_extra=extra), key)
    assert [r.nonce for r in vf.records] == [f.nonce for f in faces]
    assert np.array_equal(vf.records[1].affine, faces[1].affine) and vf.records[0].affine is None
    assert np.array_equal(vf.photo_extra["photo_residual"], extra["photo_residual"])
    with pytest.raises(FormatError, match="photo"):
        read_veiled(tmp_path / "p.png", key)
    with pytest.raises(ValueError, match="own 16-byte nonce"):
        write_file(tmp_path / "q.png", image, [faces[0], faces[0]], INFO, key)


def test_wrong_key_and_edited_pixels_are_told_apart(good, tmp_path):
    path, key, image, _ = good
    with pytest.raises(KeyMismatchError, match="wrong key"):
        read_file(path, SecretKey.generate())
    # Edit one background pixel, keep every chunk: the pixel hash catches it.
    from PIL import Image, PngImagePlugin

    edited = image.copy()
    edited[0, 0] ^= 1
    info = PngImagePlugin.PngInfo()
    chunks = dict(_chunks(path.read_bytes()))
    info.add(HEADER_CHUNK, chunks[HEADER_CHUNK])
    info.add(DATA_CHUNK, chunks[DATA_CHUNK])
    Image.fromarray(edited).save(tmp_path / "edited.png", pnginfo=info)
    with pytest.raises(TamperedError, match="pixels were edited"):
        verify_file(tmp_path / "edited.png", key)
    forced = read_file(tmp_path / "edited.png", key, force=True)
    assert forced.pixels_intact is False and any("pixels" in b for b in forced.bypassed) and forced.records


def _with_header(path: Path, out: Path, edit) -> Path:
    chunks = _chunks(path.read_bytes())
    doc = json.loads(dict(chunks)[HEADER_CHUNK])
    edit(doc)
    out.write_bytes(_png([(c, json.dumps(doc).encode() if c == HEADER_CHUNK else b) for c, b in chunks]))
    return out


def test_pixel_bomb_is_refused_from_its_ihdr(good, tmp_path):
    path, key, _, _ = good
    chunks = _chunks(path.read_bytes())
    # 20000 x 20000 declared in 1 KB: refused before any pixel is decoded (no DecompressionBombError).
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(60001) * 4)
    bomb = [(b"IHDR", ihdr)] + [(c, b) for c, b in chunks if c in (HEADER_CHUNK, DATA_CHUNK)] + [(b"IDAT", idat), (b"IEND", b"")]
    (tmp_path / "bomb.png").write_bytes(_png(bomb))
    _refused(tmp_path / "bomb.png", key, "more than the limit")
    # The same through the CLI: one line for the bomb, the good file beside it still verifies.
    assert main(["verify", str(tmp_path / "bomb.png"), str(path), "--key", str(save_key(key, tmp_path / "k.key"))]) == 1


def test_lying_shapes_are_refused_before_decoding(good, tmp_path):
    path, key, _, _ = good
    big = _with_header(path, tmp_path / "size.png", lambda d: d.update(image_size=[13000, 13000]))
    _refused(big, None, "13000x13000 image but the PNG is 32x32")
    state = _with_header(path, tmp_path / "state.png", lambda d: d.update(state_shape=[2, 4096, 4096, 4096]))
    _refused(state, None, "state_shape")
    lengths = _with_header(path, tmp_path / "len.png", lambda d: d["faces"][0].update(sealed_bytes=1 << 40))
    _refused(lengths, None, "records add up")


def test_sealed_record_cannot_inflate_past_its_cap():
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    key, nonce = SecretKey.generate(), new_nonce()
    # A key holder's own record that inflates to 1 GiB (zlib of zeros): refused at the cap, memory bounded.
    bomb = zlib.compressobj(9)
    body = b"".join(bomb.compress(bytes(1 << 24)) for _ in range(64)) + bomb.flush()
    sealed = ChaCha20Poly1305(key.subkey("face-record", nonce)).encrypt(bytes(12), body, b"face-record")

    def open_it() -> None:
        with pytest.raises(FormatError, match="past its limit"):
            open_arrays(sealed, key, "face-record", nonce, 1 << 20, {"mask": exactly(("U8",), (4, 4))})

    assert _peak(open_it) < PEAK_BYTES
    # A record under another key does not open (None), it is never parsed.
    assert open_arrays(sealed, SecretKey.generate(), "face-record", nonce, 1 << 20, {}) is None


@pytest.mark.parametrize(
    "case, match",
    [("truncated", "truncated"), ("duplicate", "occurs twice"), ("after-iend", "after the PNG's IEND"), ("crc", "CRC")],
)
def test_malformed_chunk_layouts(good, tmp_path, case, match):
    path, key, _, _ = good
    data = path.read_bytes()
    chunks = _chunks(data)
    if case == "truncated":
        bad = data[: len(data) // 2]
    elif case == "duplicate":
        i = next(i for i, (c, _) in enumerate(chunks) if c == HEADER_CHUNK)
        bad = _png(chunks[: i + 1] + [chunks[i]] + chunks[i + 1 :])
    elif case == "after-iend":
        hdr = dict(chunks)[HEADER_CHUNK]
        bad = _png([(c, b) for c, b in chunks if c != HEADER_CHUNK] + [(HEADER_CHUNK, hdr)])
    else:
        i = data.index(HEADER_CHUNK) + 8
        bad = data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]
    (tmp_path / "bad.png").write_bytes(bad)
    _refused(tmp_path / "bad.png", key, match)


def test_untrusted_strings_are_escaped():
    assert escape("a\nb\x1b[32m") == "a\\nb\\x1b[32m" and len(escape("x" * 1000)) < 210


def _write_v1(path: Path, image: np.ndarray, mask: np.ndarray, state: torch.Tensor, key: SecretKey, nonce: bytes) -> None:
    """The version 1 writer as it was (kept here only to prove old files still read)."""
    from safetensors.numpy import save as st_save

    from faceveil.fileformat.v1 import background_sha256, canonical

    arrays = {"mask": mask.astype(np.uint8), "state": np.round(state.double().numpy() / LATTICE).astype(np.int32)}
    payload = zlib.compress(st_save(arrays), 9)
    header = {
        "format": "faceveil", "version": 1, "backbone": "tiny", "adapter_hash": None, "scheme": "exact", "steps": 4,
        "transform": "shuffle", "nonce": nonce.hex(), "key_fingerprint": key.fingerprint, "image_size": list(mask.shape),
        "compute": {}, "background_sha256": background_sha256(image, mask), "state_encoding": "lattice-int32",
        "state_shape": list(state.shape), "sealed_residual": False, "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }  # fmt: skip
    header["mac"] = key.mac(canonical(header))
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add(HEADER_CHUNK, json.dumps(header).encode())
    info.add(DATA_CHUNK, payload)
    Image.fromarray(image).save(path, pnginfo=info)


def test_version_1_files_only_with_allow_v1_and_marked_unauthenticated(tmp_path):
    key, nonce, rec = SecretKey.generate(), new_nonce(), _record()
    image = np.full((32, 32, 3), 7, np.uint8)
    _write_v1(tmp_path / "v1.png", image, rec.mask, rec.state, key, nonce)
    # v1 fields sat outside the MAC: a replaced face verified "ok"; now refused unless asked for.
    with pytest.raises(FormatError, match="version 1 file.*--allow-v1"):
        verify_file(tmp_path / "v1.png", key)
    vf = read_file(tmp_path / "v1.png", key, allow_v1=True)
    assert vf.authenticated is False and vf.version == 1
    r = vf.records[0]
    assert torch.equal(r.state, rec.state) and np.array_equal(r.mask, rec.mask) and r.nonce == nonce
    kf = save_key(key, tmp_path / "k.key")
    pub = tmp_path / "pub"
    pub.mkdir()
    (pub / "v1.png").write_bytes((tmp_path / "v1.png").read_bytes())
    assert main(["recover", str(pub / "v1.png"), "-o", str(tmp_path / "out"), "--key", str(kf)]) == 1
