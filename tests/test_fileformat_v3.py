"""File format v3: the sealed original opens with the key alone, exact anywhere; hostile files stay cheap.

Files here are made with :func:`write_v3` from synthetic images (no model), except where the
CLI is the point.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from faceveil.cli import main
from faceveil.fileformat.png import join_chunks as _png
from faceveil.fileformat.png import split_chunks as _chunks
from faceveil.errors import FormatError, KeyMismatchError, TamperedError
from faceveil.fileformat import read_file, read_header, verify_file
from faceveil.fileformat.original import open_original
from faceveil.fileformat.sidecar import sidecar_path
from faceveil.fileformat.v3 import SealedFace
from faceveil.fileformat.write import write_v3
from faceveil.keys import SecretKey, new_nonce, save_key

MODEL = {"backbone": "tiny", "base_sha256": "ab" * 32, "adapter": {"name": "private-run", "sha256": "cd" * 32},
         "scheme": "exact", "steps": 4, "transform": "rotation", "compute": {"dtype": "float32"}}


def _insert(data: bytes, extra: list[tuple[bytes, bytes]], before: bytes = b"IDAT") -> bytes:
    chunks = _chunks(data)
    i = next(i for i, (c, _) in enumerate(chunks) if c == before)
    return _png(chunks[:i] + extra + chunks[i:])


def _faces_photo(seed: int = 0, h: int = 48, w: int = 64):
    """An original photo, its anonymized version and two face regions (one elliptical, one box)."""
    g = np.random.default_rng(seed)
    original = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:20, 0:16]
    ell = ((yy - 9.5) / 10) ** 2 + ((xx - 7.5) / 8) ** 2 <= 1
    faces = [SealedFace(new_nonce(), (4, 6, 24, 22), ell, index=0, treatment="diffusion",
                        affine=np.array([[2.0, 0, -12], [0, 2.0, -8]]), crop_mask=np.ones((32, 32), bool)),
             SealedFace(new_nonce(), (30, 40, 38, 50), np.ones((8, 10), bool), index=1, treatment="blur")]
    image = original.copy()
    for f in faces:
        view = image[f.slices()]
        view[f.inside] = 255 - view[f.inside]
    return original, image, faces


@pytest.fixture()
def made(tmp_path):
    key = SecretKey.generate()
    original, image, faces = _faces_photo()
    path = write_v3(tmp_path / "pub" / "a.png", image, original, faces, MODEL, key)
    return path, key, original, image


def _keyfile(tmp_path: Path, key: SecretKey) -> Path:
    p = tmp_path / "k.key"
    if not p.exists():
        save_key(key, p)
    return p


def test_opens_to_the_original_with_no_model_and_nothing_model_related_in_public(made, monkeypatch):
    import faceveil.models.backbones as backbones

    path, key, original, image = made
    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **k: pytest.fail("recovery loaded a model"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    o = open_original(path, key)
    assert o.exact and np.array_equal(o.image, original) and o.faces == 2 and o.model == MODEL
    vf = read_file(path, key)
    assert [f.treatment for f in vf.faces] == ["diffusion", "blur"] and np.array_equal(vf.faces[0].affine[0], [2, 0, -12])
    header = read_header(path)
    text = json.dumps(header)
    # The adapter's name and hash, the model, the regions: all sealed. The public part names public facts.
    assert "private-run" not in path.read_bytes().decode("latin-1") and "cd" * 32 not in text and "tiny" not in text
    assert set(header) == {"format", "version", "faceveil_version", "image_size", "pixels_sha256", "faces", "file", "payload_sha256"}


def test_another_thread_count_and_a_subprocess_give_the_same_bits(made, tmp_path):
    import subprocess
    import sys

    path, key, original, _ = made
    kf = _keyfile(tmp_path, key)
    # No torch, no diffusers, no model code: the process never even imports them.
    code = (f"import sys; from faceveil.cli import main; "
            f"rc = main(['recover', {str(path)!r}, '-o', {str(tmp_path / 'back')!r}, '--key', {str(kf)!r}]); "
            f"heavy = [m for m in ('torch', 'diffusers', 'faceveil.models.pipeline') if m in sys.modules]; "
            f"print('imported:', heavy); raise SystemExit(rc or len(heavy))")
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    from faceveil.data.images import load_image

    assert np.array_equal(load_image(tmp_path / "back" / "a.png"), original)


def test_sealed_size_is_set_by_the_regions_not_the_content(tmp_path):
    key = SecretKey.generate()
    sizes = []
    for seed in (1, 2):
        original, image, faces = _faces_photo(seed)
        if seed == 2:  # flat content: compression would have made its record far smaller
            original[:] = 0
            image = original.copy()
            for f in faces:
                view = image[f.slices()]
                view[f.inside] = 9
        h = read_header(write_v3(tmp_path / f"{seed}.png", image, original, faces, MODEL, key))
        sizes.append([f["sealed_bytes"] for f in h["faces"]] + [h["file"]["sealed_bytes"]])
    assert sizes[0] == sizes[1]
    # 3 bytes per region pixel, plus the packed region bits and a small fixed part.
    assert 3 * int(_faces_photo()[2][0].inside.sum()) < sizes[0][0] < 3 * int(_faces_photo()[2][0].inside.sum()) + 1200


def test_a_changed_pixel_outside_every_region_is_refused_at_write(tmp_path):
    original, image, faces = _faces_photo()
    image[0, 0] ^= 1
    with pytest.raises(ValueError, match="outside every face region"):
        write_v3(tmp_path / "x.png", image, original, faces, MODEL, SecretKey.generate())


@pytest.mark.parametrize("ctype, body", [
    (b"acTL", struct.pack(">II", 2, 0)),  # APNG: a browser shows other frames
    (b"gAMA", struct.pack(">I", 10000)),
    (b"cHRM", bytes(32)),
    (b"iCCP", b"p\0\0" + zlib.compress(b"x" * 64)),
    (b"eXIf", b"MM\0*" + bytes(8)),  # orientation: shown rotated
    (b"pHYs", struct.pack(">IIB", 1, 1, 0)),
    (b"tEXt", b"Comment\0someone else"),
    (b"zzZz", bytes(4 << 20)),  # a junk chunk is skipped, never read whole
], ids=lambda v: v.decode() if isinstance(v, bytes) and len(v) == 4 else "body")  # fmt: skip
def test_what_a_viewer_shows_is_authenticated(made, tmp_path, ctype, body):
    path, key, _, _ = made
    bad = tmp_path / "bad.png"
    bad.write_bytes(_insert(path.read_bytes(), [(ctype, body)]))
    tracemalloc.start()
    try:
        with pytest.raises(TamperedError, match="not part of a faceveil file"):
            verify_file(bad, key)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 2 * 2**20
    assert main(["verify", str(bad), "--key", str(_keyfile(tmp_path, key))]) == 3


def test_header_is_authenticated_byte_for_byte(made, tmp_path):
    path, key, original, _ = made
    chunks = _chunks(path.read_bytes())
    header = dict(chunks)[b"fvHd"]
    # The same JSON object, written otherwise (a space): the MAC covers the bytes, not a re-serialization.
    spaced = header.replace(b'"version":3', b'"version": 3')
    assert json.loads(spaced) == json.loads(header)
    (tmp_path / "s.png").write_bytes(_png([(c, spaced if c == b"fvHd" else b) for c, b in chunks]))
    with pytest.raises(TamperedError, match="authentication failed"):
        verify_file(tmp_path / "s.png", key)
    # A duplicated key could mean two things to two readers: refused before anything else.
    dup = header[:-1] + b',"version":2}'
    (tmp_path / "d.png").write_bytes(_png([(c, dup if c == b"fvHd" else b) for c, b in chunks]))
    with pytest.raises(TamperedError, match="duplicate key"):
        verify_file(tmp_path / "d.png", key)
    # Forced past the MAC, the sealed records still authenticate the original, and the result is checked.
    forced = open_original(tmp_path / "s.png", key, force=True)
    assert forced.exact and np.array_equal(forced.image, original) and forced.bypassed


def test_nested_json_and_hostile_names_are_one_line_each_and_the_batch_goes_on(made, tmp_path, capsys):
    path, key, _, _ = made
    nest = b'{"format":"faceveil","version":3,"x":' + b"[" * 1000 + b"]" * 1000 + b"}"
    chunks = _chunks(path.read_bytes())
    pub = tmp_path / "pub"
    evil = pub / "a\n\x1b[32mok: fine.png"
    evil.write_bytes(_png([(c, nest if c == b"fvHd" else b) for c, b in chunks]))
    kf = _keyfile(tmp_path, key)
    capsys.readouterr()
    assert main(["verify", str(evil), str(path), "--key", str(kf)]) == 3
    out = capsys.readouterr()
    assert "\x1b" not in out.err + out.out and "Traceback" not in out.err
    assert out.out.count("\n") == 2 and f"{path}: ok (2 faces, version 3" in out.out  # the good file after it
    assert len([line for line in out.err.splitlines() if "nested deeper" in line]) == 1
    assert main(["recover", str(pub), "-o", str(tmp_path / "r"), "--key", str(kf)]) == 3
    assert (tmp_path / "r" / "a.png").is_file()
    assert main(["inspect", str(evil), str(path)]) == 3
    out = capsys.readouterr()
    assert "Traceback" not in out.err and '"version": 3' in out.out


def test_memory_stays_bounded_under_force_for_crafted_pixels(made, tmp_path):
    path, key, _, _ = made
    chunks = _chunks(path.read_bytes())
    # A 16-bit RGBA IHDR (8 bytes a pixel) with the genuine records: refused from the IHDR, even forced.
    ihdr = struct.pack(">IIBBBBB", 4000, 4000, 16, 6, 0, 0, 0)
    bomb = [(b"IHDR", ihdr)] + [(c, b) for c, b in chunks if c not in (b"IHDR",)]
    (tmp_path / "bomb.png").write_bytes(_png(bomb))
    tracemalloc.start()
    try:
        with pytest.raises(TamperedError, match="8-bit RGB"):
            read_file(tmp_path / "bomb.png", key, force=True)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 2 * 2**20


def test_wrong_key_fails_and_a_record_swapped_in_is_tampering(made, tmp_path):
    path, key, _, _ = made
    with pytest.raises(KeyMismatchError, match="wrong key"):
        open_original(path, SecretKey.generate(), force=True)
    # The payload of another file under the same key, with its own hash put in the header: the MAC fails;
    # forced, the records fail their AEAD tags (they belong to other nonces).
    original, image, faces = _faces_photo(5)
    other = write_v3(tmp_path / "o.png", image, original, faces, MODEL, key)
    theirs = dict(_chunks(other.read_bytes()))[b"fvDt"]
    chunks = _chunks(path.read_bytes())
    doc = json.loads(dict(chunks)[b"fvHd"])
    import hashlib

    doc["payload_sha256"] = hashlib.sha256(theirs).hexdigest()
    mixed = [(c, json.dumps(doc).encode() if c == b"fvHd" else theirs if c == b"fvDt" else b) for c, b in chunks]
    (tmp_path / "m.png").write_bytes(_png(mixed))
    with pytest.raises(TamperedError):
        read_file(tmp_path / "m.png", key)
    with pytest.raises((TamperedError, FormatError)):
        read_file(tmp_path / "m.png", key, force=True)


def test_sidecar_record_beside_a_jpeg_and_a_png(tmp_path):
    key = SecretKey.generate()
    original, image, faces = _faces_photo()
    jpg = write_v3(tmp_path / "pub" / "a.jpg", image, original, faces, MODEL, key, record="sidecar", quality=90)
    assert sidecar_path(jpg).is_file() and jpg.read_bytes()[:2] == b"\xff\xd8"
    o = open_original(jpg, key)
    assert o.lossy and not o.exact
    for f in faces:  # the faces come back exactly; outside them, the JPEG's pixels
        assert np.array_equal(o.image[f.slices()][f.inside], original[f.slices()][f.inside])
    png = write_v3(tmp_path / "pub" / "b.png", image, original, faces, MODEL, key, record="sidecar")
    assert read_header(png) is None  # a plain PNG: no faceveil chunks
    assert open_original(png, key).exact
    # The image re-encoded (or edited) after publishing: the record refuses it.
    from PIL import Image

    Image.open(png).save(tmp_path / "pub" / "b2.png", compress_level=1)
    (tmp_path / "pub" / "b2.png.fvrec").write_bytes(sidecar_path(png).read_bytes())
    with pytest.raises(TamperedError, match="not the one this record was made for"):
        open_original(tmp_path / "pub" / "b2.png", key)
    kf = _keyfile(tmp_path, key)
    assert main(["recover", str(tmp_path / "pub"), "-o", str(tmp_path / "out"), "--key", str(kf)]) == 3
    assert (tmp_path / "out" / "a.png").is_file() and (tmp_path / "out" / "b.png").is_file()
    assert main(["verify", str(png), "--key", str(kf)]) == 0
    assert main(["inspect", str(sidecar_path(png))]) == 0


def test_keep_original_file_gives_back_the_camera_bytes(tmp_path, face128):
    import hashlib

    from faceveil.data.images import save_image

    kf = tmp_path / "k.key"
    assert main(["keygen", "-o", str(kf)]) == 0
    (tmp_path / "in").mkdir()
    save_image(tmp_path / "in" / "f.jpg", face128, quality=90)
    src = tmp_path / "in" / "f.jpg"
    run = ["--aligned", "--backbone", "tiny", "--device", "cpu", "--steps", "2"]
    assert main(["anonymize", str(src), "-o", str(tmp_path / "pub"), "--key", str(kf), "--keep-original-file", *run]) == 0
    assert main(["recover", str(tmp_path / "pub"), "-o", str(tmp_path / "back"), "--key", str(kf)]) == 0
    back = tmp_path / "back" / "f.original.jpg"
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
    assert back.stat().st_mode & 0o777 == 0o600
    # A published JPEG with a sidecar record: recovery restores the face exactly, and says the rest is lossy.
    assert main(["anonymize", str(src), "-o", str(tmp_path / "pubj"), "--key", str(kf), "--record", "sidecar",
                 "--image-format", "jpg", *run]) == 0
    assert (tmp_path / "pubj" / "f.jpg").is_file() and (tmp_path / "pubj" / "f.jpg.fvrec").is_file()
    assert main(["anonymize", str(src), "-o", str(tmp_path / "x"), "--key", str(kf), "--image-format", "jpg", *run]) == 2


def test_private_outputs_never_land_in_public_folders_or_through_links(made, tmp_path, capsys):
    path, key, original, _ = made
    kf = _keyfile(tmp_path, key)
    # The input given as a file: -o inside its folder is refused before any work.
    assert main(["recover", str(path), "-o", str(path.parent / "private"), "--key", str(kf)]) == 2
    assert not (path.parent / "private").exists()
    # A symbolic link planted under -o is not followed.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    out = tmp_path / "out"
    (tmp_path / "pub" / "sub").mkdir()
    (tmp_path / "pub" / "sub" / "a.png").write_bytes(path.read_bytes())
    out.mkdir()
    (out / "sub").symlink_to(outside, target_is_directory=True)
    capsys.readouterr()
    assert main(["recover", str(tmp_path / "pub"), "-o", str(out), "--key", str(kf)]) == 1
    assert "symbolic link" in capsys.readouterr().err and not any(outside.iterdir())
    assert (out / "a.png").is_file()


def test_inspect_takes_files_and_folders(made, tmp_path, capsys):
    path, key, _, _ = made
    original, image, faces = _faces_photo(3)
    write_v3(tmp_path / "pub" / "deeper" / "b.png", image, original, faces, MODEL, key)
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "pub"), str(path)]) == 0
    out = capsys.readouterr().out
    docs = [json.loads(d) for d in out.replace("}\n{", "}\n\x00{").split("\x00")]
    assert len(docs) == 3 and all(d["header"]["version"] == 3 for d in docs)


def test_fuzzed_files_open_exactly_or_fail_with_one_line(tmp_path_factory):
    """Bit flips, byte runs, truncations, chunk shuffles and duplicates, lying lengths, header edits
    (deep nesting, huge sizes, wrong types) and sidecar edits: never another exception, never a wrong
    original accepted as exact, never past the memory bound. A longer run:
    ``python -m faceveil.evaluate.fuzz_files --cases 5000``."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from faceveil.evaluate.fuzz_files import KINDS, Mutation, genuine, run_case

    folder = tmp_path_factory.mktemp("fuzz")
    key = SecretKey.generate()
    files = genuine(folder, key)
    seen: set[str] = set()

    @settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(KINDS), st.integers(0, 2**31 - 1), st.integers(0, 2**32 - 1))
    def case(kind: str, a: int, b: int) -> None:
        outcome = run_case(Mutation(kind, a, b), folder, key, files)
        seen.add(outcome)
        assert not outcome.startswith("FINDING"), outcome

    case()
    assert "refused" in seen  # the mutations reach the checks


def test_review_findings_stay_fixed(made, tmp_path, capsys):
    """An outside attack review of v3 found these; each is one line and the batch goes on."""
    import os

    path, key, original, image = made
    kf = _keyfile(tmp_path, key)
    # A truncated sidecar record: one line in inspect, the next file still inspected.
    (tmp_path / "pub" / "z.fvrec").write_bytes(b"\x89FVREC\r\n\x00")
    os.mkfifo(tmp_path / "pub" / "fifo.fvrec")  # never opened: it would block
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "pub")]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "truncated" in out.err and '"version": 3' in out.out
    # An IDAT whose CRC fails (viewers refuse it) is not a genuine file.
    chunks = _chunks(path.read_bytes())
    data = _png(chunks)
    i = data.index(b"IDAT")
    n = struct.unpack(">I", data[i - 4 : i])[0]
    (tmp_path / "crc.png").write_bytes(data[: i + 4 + n] + b"\0\0\0\0" + data[i + 8 + n :])
    with pytest.raises(FormatError, match="CRC"):
        verify_file(tmp_path / "crc.png", key)
    # A 20 MB junk payload on a small image: refused from its length, before it is read.
    doc = json.loads(dict(chunks)[b"fvHd"])
    big = [(c, bytes(20 << 20) if c == b"fvDt" else b) for c, b in chunks]
    (tmp_path / "big.png").write_bytes(_png(big))
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="more than its limit"):
            read_file(tmp_path / "big.png", key)
        assert read_header(tmp_path / "big.png") == doc  # the header alone skips the payload
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 4 * 2**20
    # An edited check value is tampering (exit 3), not a wrong key.
    doc["faces"][0]["check"] = "0" * 16
    (tmp_path / "chk.png").write_bytes(_png([(c, json.dumps(doc).encode() if c == b"fvHd" else b) for c, b in chunks]))
    with pytest.raises(TamperedError, match="check value was edited"):
        read_file(tmp_path / "chk.png", key)
    # A run-level error naming a crafted path prints it escaped.
    evil = tmp_path / "x\x1b[2K"
    evil.mkdir()
    capsys.readouterr()
    assert main(["recover", str(path), "-o", str(path.parent / "sub"), "--key", str(kf)]) == 2
    assert main(["verify", str(evil / "none.png"), "--key", str(kf)]) == 1
    assert "\x1b" not in capsys.readouterr().err


def test_sealed_lengths_do_not_link_files_to_their_model_or_input_size(tmp_path):
    key = SecretKey.generate()
    original, image, faces = _faces_photo()
    other_model = {**MODEL, "backbone": "sd2-inpaint:stabilityai/stable-diffusion-2-inpainting", "compute": {"dtype": "bfloat16", "device": "cuda"}}
    a = read_header(write_v3(tmp_path / "a.png", image, original, faces, MODEL, key))
    b = read_header(write_v3(tmp_path / "b.png", image, original, [SealedFace(new_nonce(), f.box, f.inside, f.index, f.treatment, f.affine, f.crop_mask) for f in faces], other_model, key))
    assert a["file"]["sealed_bytes"] == b["file"]["sealed_bytes"]  # the same for every file
    assert [f["sealed_bytes"] for f in a["faces"]] == [f["sealed_bytes"] for f in b["faces"]]
    # An input file's exact size would link the file to a known photo: its sealed length is a power of two.
    sizes = []
    for n in (1100, 1500):  # one power-of-two bucket
        fs = [SealedFace(new_nonce(), f.box, f.inside, f.index, f.treatment) for f in faces]
        h = read_header(write_v3(tmp_path / f"o{n}.png", image, original, fs, MODEL, key, original_file=b"x" * n, original_suffix=".jpg"))
        sizes.append(h["file"]["sealed_bytes"])
        assert open_original(tmp_path / f"o{n}.png", key).original_file == b"x" * n
    assert sizes[0] == sizes[1]


def test_forged_sidecar_under_force_is_never_a_success(tmp_path):
    from PIL import Image

    from faceveil.fileformat.sidecar import _head, pack

    key = SecretKey.generate()
    original, image, faces = _faces_photo()
    jpg = write_v3(tmp_path / "pub" / "a.jpg", image, original, faces, MODEL, key, record="sidecar", quality=90)
    red = np.zeros_like(image)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "pub" / "r.jpg", quality=90)
    rec = sidecar_path(jpg)
    with open(rec, "rb") as f:
        header, mac, start = _head(rec, f)
    doc = json.loads(header)
    data = (tmp_path / "pub" / "r.jpg").read_bytes()
    import hashlib

    doc["image_file"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "format": "jpg"}
    sidecar_path(tmp_path / "pub" / "r.jpg").write_bytes(pack(json.dumps(doc).encode(), mac.decode(), rec.read_bytes()[start:]))
    with pytest.raises(TamperedError, match="authentication failed"):
        open_original(tmp_path / "pub" / "r.jpg", key)
    forced = open_original(tmp_path / "pub" / "r.jpg", key, force=True)
    assert forced.bypassed and not forced.exact and not forced.lossy
    kf = _keyfile(tmp_path, key)
    assert main(["recover", str(tmp_path / "pub" / "r.jpg"), "-o", str(tmp_path / "out"), "--key", str(kf), "--force"]) == 1


def test_the_input_file_written_back_never_replaces_another_output(tmp_path, capsys):
    key = SecretKey.generate()
    kf = _keyfile(tmp_path, key)
    original, image, faces = _faces_photo()
    write_v3(tmp_path / "col" / "th.png", image, original, faces, MODEL, key, original_file=b"camera bytes", original_suffix=".png")
    o2, i2, f2 = _faces_photo(7)
    write_v3(tmp_path / "col" / "th.original.png", i2, o2, f2, MODEL, key)
    capsys.readouterr()
    assert main(["recover", str(tmp_path / "col"), "-o", str(tmp_path / "out"), "--key", str(kf)]) == 1
    assert "another output" in capsys.readouterr().err
    from faceveil.data.images import load_image

    assert np.array_equal(load_image(tmp_path / "out" / "th.original.png"), o2)  # not clobbered


@pytest.mark.parametrize("record", ["embedded", "sidecar"])
def test_intact_pixels_that_do_not_restore_the_original_are_an_error(tmp_path, monkeypatch, record):
    """A writer bug (a changed pixel outside every region) must surface at recovery, never a quiet result."""
    import faceveil.fileformat.v3 as v3

    key = SecretKey.generate()
    original, image, faces = _faces_photo()
    image[0, 0] ^= 1  # changed outside every region
    monkeypatch.setattr(v3, "check_regions", lambda *a: None)  # the writer's own check, bypassed
    path = write_v3(tmp_path / "pub" / "a.png", image, original, faces, MODEL, key, record=record)
    with pytest.raises(FormatError, match="does not match the sealed digest"):
        open_original(path, key)
