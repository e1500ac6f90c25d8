"""`faceveil anonymize` on photos: bad input is one line each, metadata never leaks, first use."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from faceveil.cli import main
from faceveil.data.images import load_image, save_image
from faceveil.data.samples import sample_photo_path

FAST = ["--backbone", "tiny", "--device", "cpu", "--scheme", "exact", "--steps", "2"]


@pytest.fixture()
def keyfile(tmp_path):
    path = tmp_path / "me.key"
    assert main(["keygen", "-o", str(path)]) == 0
    return path


def png_chunk_types(path) -> list[bytes]:
    data, pos, out = path.read_bytes(), 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        out.append(data[pos + 4 : pos + 8])
        pos += 12 + n
    return out


def exif_with_gps_and_thumbnail(thumbnail: bytes, orientation: int) -> bytes:
    """A little-endian TIFF EXIF block: IFD0 (orientation, GPS pointer), a GPS IFD, IFD1 with a JPEG thumbnail."""
    ifd0, gps, rationals, ifd1, thumb = 8, 38, 68, 92, 122

    def ifd(entries, next_ifd):
        body = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", t, k, c) + v for t, k, c, v in entries)
        return body + struct.pack("<I", next_ifd)

    tiff = b"II*\x00" + struct.pack("<I", ifd0)
    tiff += ifd([(0x0112, 3, 1, struct.pack("<HH", orientation, 0)), (0x8825, 4, 1, struct.pack("<I", gps))], ifd1)
    tiff += ifd([(0x0001, 2, 2, b"N\x00\x00\x00"), (0x0002, 5, 3, struct.pack("<I", rationals))], 0)
    tiff += struct.pack("<6I", 48, 1, 51, 1, 30, 1)  # 48 deg 51' 30''
    tiff += ifd([(0x0201, 4, 1, struct.pack("<I", thumb)), (0x0202, 4, 1, struct.pack("<I", len(thumbnail)))], 0)
    assert len(tiff) == thumb
    return b"Exif\x00\x00" + tiff + thumbnail


def test_metadata_never_reaches_the_output_and_orientation_is_applied(tmp_path, keyfile, capsys):
    upright = load_image(sample_photo_path("grace_hopper"))
    buf = io.BytesIO()
    Image.fromarray(upright[150:350, 150:380]).resize((64, 56)).save(buf, format="JPEG", quality=90)
    thumbnail = buf.getvalue()
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # orientation 6: turn 90 degrees clockwise to view
    src = tmp_path / "in"
    src.mkdir()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description>SECRET-XMP</rdf:Description></rdf:RDF></x:xmpmeta>'
    kwargs = dict(format="JPEG", quality=95, exif=exif_with_gps_and_thumbnail(thumbnail, 6),
                  icc_profile=b"\x00" * 128 + b"SECRET-ICC-NAME", comment=b"SECRET-COMMENT", xmp=xmp)
    Image.fromarray(stored).save(src / "face.jpg", **kwargs)
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(src / "wall.jpg", **kwargs)
    with Image.open(src / "face.jpg") as im:
        assert im.getexif().get_ifd(0x8825) and im.info.get("comment") == b"SECRET-COMMENT"
        assert thumbnail in (src / "face.jpg").read_bytes()
    out = tmp_path / "out"
    rc = main(["anonymize", str(src), "-o", str(out), "--key", str(keyfile), "--keep-faceless", *FAST])
    assert rc == 0, capsys.readouterr().err
    for name in ("face.png", "wall.png"):
        path = out / name
        raw = path.read_bytes()
        assert set(png_chunk_types(path)) <= {b"IHDR", b"IDAT", b"IEND", b"fvHd", b"fvDt", b"fvMc"}
        for secret in (thumbnail[:64], b"SECRET-COMMENT", b"SECRET-XMP", b"SECRET-ICC", b"Exif"):
            assert secret not in raw
        with Image.open(path) as im:
            assert not im.getexif() and not ({"exif", "icc_profile", "xmp", "comment", "XML:com.adobe.xmp"} & set(im.info))
    face = load_image(out / "face.png")
    assert face.shape == upright.shape  # turned upright
    assert np.array_equal(load_image(out / "wall.png"), np.full((160, 120, 3), 90, np.uint8))  # upright too


def _bad_inputs(folder):
    folder.mkdir()
    good = load_image(sample_photo_path("astronaut"))
    buf = io.BytesIO()
    Image.fromarray(good[:200, :200]).save(buf, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "notes.jpg").write_text("not an image")
    Image.fromarray(np.zeros((64, 64), np.uint16) + 4000).save(folder / "deep.png")
    rgba = np.dstack([good[:64, :64], np.full((64, 64), 100, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "transparent.png")
    save_image(folder / "big.png", np.zeros((300, 400, 3), np.uint8))  # over --max-pixels below
    save_image(folder / "blank.png", np.full((96, 96, 3), 200, np.uint8))  # no face
    canvas = np.full((200, 200, 3), 120, np.uint8)
    canvas[10:90, 10:90] = np.asarray(Image.fromarray(good[0:300, 100:400]).resize((80, 80)))
    save_image(folder / "small_face.png", canvas)  # a face of about 24 px: under --min-face 40
    # an earlier faceveil output: a PNG carrying a faceveil photo chunk
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add(b"fvHd", b'{"format": "faceveil", "version": 2}')
    Image.fromarray(good[:64, :64]).save(folder / "done.png", pnginfo=info)


def test_bad_inputs_are_one_line_each_and_the_batch_goes_on(tmp_path, keyfile, capsys):
    src = tmp_path / "in"
    _bad_inputs(src)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    out = tmp_path / "out"
    rc = main(["anonymize", str(src), "-o", str(out), "--key", str(keyfile), "--max-pixels", "100000", "--min-face", "40", *FAST])
    err = capsys.readouterr().err
    assert rc == 1
    expect = {
        "truncated.jpg": "not a readable image",
        "corrupt.png": "not a readable image",
        "notes.jpg": "not a readable image",
        "deep.png": "16-bit",
        "transparent.png": "transparent",
        "big.png": "over the limit",
        "blank.png": "no face found; skipped",
        "small_face.png": "1 face: 1 blur (under --min-face 40 px: face 0)",
        "done.png": "already a faceveil output",
    }
    lines = err.strip().splitlines()
    for name, reason in expect.items():
        hits = [ln for ln in lines if f"{src / name}: " in ln]
        assert len(hits) == 1 and reason in hits[0], (name, hits)
    assert "anonymized 1, skipped 1, failed 7" in lines[-1]
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    assert [p.name for p in out.iterdir()] == ["small_face.png"]  # covered, never left as it was


def test_refusals_before_any_work(tmp_path, keyfile, capsys):
    src = tmp_path / "in"
    src.mkdir()
    # output inside the input folder: refused before reading anything
    assert main(["anonymize", str(src), "-o", str(src / "out"), "--key", str(keyfile), *FAST]) == 2
    assert "inside it" in capsys.readouterr().err and not (src / "out").exists()
    # an empty input is a failure
    assert main(["anonymize", str(src), "-o", str(tmp_path / "o"), "--key", str(keyfile), *FAST]) == 1
    assert "no input images" in capsys.readouterr().err
    # an RGB photo given as a mask is refused
    save_image(src / "a.png", np.zeros((64, 64, 3), np.uint8))
    photo = load_image(sample_photo_path("astronaut"))[:64, :64]
    save_image(tmp_path / "photo_as_mask.png", photo)
    rc = main(["anonymize", str(src), "-o", str(tmp_path / "o"), "--key", str(keyfile), "--mask", str(tmp_path / "photo_as_mask.png"), *FAST])
    assert rc == 1 and "a mask must be one channel" in capsys.readouterr().err


def test_unreachable_backbone_fails_fast_naming_offline_choices(tmp_path, monkeypatch):
    import torch
    from huggingface_hub import constants

    from faceveil.cli.common import load_backbone_for_cli
    from faceveil.errors import InputError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("FACEVEIL_CACHE", str(tmp_path / "fv"))
    with pytest.raises(InputError) as err:
        load_backbone_for_cli("sd2-inpaint:nobody/no-such-model", torch.device("cpu"), torch.float32)
    msg = str(err.value)
    assert "\n" not in msg and "not in the local cache" in msg and "--backbone tiny" in msg and "export" in msg


def test_prepared_folder_anonymizes_with_one_command(tmp_path, keyfile, face128, mask128, capsys):
    from faceveil.data.shards import FORMAT_NAME, INDEX_NAME, encode_sample, write_json, write_tar

    prep = tmp_path / "prepared"
    prep.mkdir()
    write_tar(prep / "shard-000000.tar", [encode_sample("p000000_f00", face128, mask128, {}), encode_sample("p000001_f00", face128[:, ::-1], mask128, {})])
    write_json(prep / INDEX_NAME, {"format": FORMAT_NAME, "shards": [{"name": "shard-000000.tar", "samples": 2}]})
    out = tmp_path / "veiled"
    assert main(["anonymize", str(prep), "-o", str(out), "--key", str(keyfile), *FAST]) == 0, capsys.readouterr().err
    from faceveil.fileformat import read_veiled
    from faceveil.keys import load_key

    v = read_veiled(out / "p000000_f00.png", load_key(keyfile))
    assert np.array_equal(v.mask, mask128) and np.array_equal(v.image[~mask128], face128[~mask128])


def test_masks_beside_their_photos_are_not_inputs(tmp_path, keyfile, face128, mask128, capsys):
    src = tmp_path / "crops"
    src.mkdir()
    save_image(src / "a.png", face128)
    save_image(src / "a_mask.png", np.where(mask128, 255, 0).astype(np.uint8))
    out = tmp_path / "o"
    assert main(["anonymize", str(src), "-o", str(out), "--key", str(keyfile), "--mask", str(src), *FAST]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]
    assert "anonymized 1, failed 0" in capsys.readouterr().err


def test_photo_limit_is_what_a_file_can_hold():
    from faceveil.data.photo_io import DEFAULT_MAX_PIXELS
    from faceveil.fileformat.png import MAX_PIXELS

    assert DEFAULT_MAX_PIXELS == MAX_PIXELS


def test_irreversible_method_needs_no_model_and_a_left_face_fails_the_run(tmp_path, keyfile, capsys, monkeypatch):
    import faceveil.cli.anonymize_photos as ap

    src = tmp_path / "t1.png"
    save_image(src, load_image(sample_photo_path("t1_group")))
    monkeypatch.setattr(ap, "load_backbone_for_cli", lambda *a, **k: pytest.fail("a cover needs no model"))
    assert main(["anonymize", str(src), "-o", str(tmp_path / "px"), "--key", str(keyfile), "--method", "pixelate"]) == 0
    assert "6 faces: 6 pixelate" in capsys.readouterr().err
    assert (load_image(tmp_path / "px" / "t1.png") != load_image(src)).any()
    assert main(["recover", str(tmp_path / "px" / "t1.png"), "-o", str(tmp_path / "back"), "--key", str(keyfile)]) == 0
    assert np.array_equal(load_image(tmp_path / "back" / "t1.png"), load_image(src))  # the key alone, exactly
    # --leave-small is the only way to leave a face: written, named, and the run exits 1.
    rc = main(["anonymize", str(src), "-o", str(tmp_path / "left"), "--key", str(keyfile), "--method", "box",
               "--min-face", "106", "--leave-small"])
    err = capsys.readouterr().err
    assert rc == 1 and "left (under --min-face 106 px, --leave-small: faces " in err and "with faces left visible 1" in err


def test_detect_previews_and_its_json_goes_back_as_hand_regions(tmp_path, keyfile, capsys):
    import json

    src = tmp_path / "t1.png"
    t1 = load_image(sample_photo_path("t1_group"))
    save_image(src, t1)
    assert main(["detect", str(src), "-o", str(tmp_path / "det"), "--region", "1100,700,60,60"]) == 0
    out = capsys.readouterr().out
    assert "7 faces: 6 diffusion, 1 blur (given by hand: face 6)" in out
    doc = json.loads((tmp_path / "det" / "t1.json").read_text())
    assert [f["treatment"] for f in doc["faces"]] == ["diffusion"] * 6 + ["blur"]
    assert doc["faces"][6]["box"] == [1100, 700, 60, 60] and all(f["size"] > 90 for f in doc["faces"][:6])
    preview = load_image(tmp_path / "det" / "t1.png")
    assert preview.shape == t1.shape and (preview != t1).any()
    # The JSON, edited, goes back: the detected boxes repeat found faces, the hand region is added.
    rc = main(["anonymize", str(src), "-o", str(tmp_path / "anon"), "--key", str(keyfile), "--method", "box",
               "--regions", str(tmp_path / "det" / "t1.json")])
    assert rc == 0 and "7 faces: 6 box, 1 box (given by hand: face 6)" in capsys.readouterr().err
    assert (load_image(tmp_path / "anon" / "t1.png")[705:755, 1105:1155] == 0).all()
    assert main(["detect", str(src), "-o", str(tmp_path / "bad"), "--region", "1,2,3"]) == 2
    assert "expected x,y,w,h" in capsys.readouterr().err


def test_mark_draws_inside_the_synthetic_faces_and_recovers_exactly(tmp_path, keyfile, capsys):
    from faceveil.data.photo_cover import MARK_COLOUR

    src = tmp_path / "g.png"
    save_image(src, load_image(sample_photo_path("grace_hopper")))
    out = tmp_path / "out"
    assert main(["anonymize", str(src), "-o", str(out), "--key", str(keyfile), "--mark", *FAST]) == 0
    image = load_image(out / "g.png")
    marked = (image == MARK_COLOUR).all(-1)
    assert marked.sum() > 200
    assert main(["recover", str(out / "g.png"), "-o", str(tmp_path / "back"), "--key", str(keyfile)]) == 0
    assert np.array_equal(load_image(tmp_path / "back" / "g.png"), load_image(src))
