"""The CLI contract: outputs, one-line errors naming the file, exit codes, never overwriting inputs."""

import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from faceveil.cli import main
from faceveil.data.images import load_image, save_image
from faceveil.keys import load_key

FAST = ["--backbone", "tiny", "--device", "cpu", "--steps", "4"]
AFAST = ["--aligned", *FAST]  # these tests anonymize aligned crops


@pytest.fixture()
def keyfile(tmp_path):
    path = tmp_path / "secret.key"
    assert main(["keygen", "-o", str(path)]) == 0
    return path


def test_keygen_permissions_and_refusal(tmp_path, capsys):
    keyfile = tmp_path / "k.key"
    assert main(["keygen", "-o", str(keyfile)]) == 0
    assert stat.S_IMODE(os.stat(keyfile).st_mode) == 0o600
    key = load_key(keyfile)
    out = capsys.readouterr().out
    assert key.fingerprint in out and key.material.hex() not in out
    assert main(["keygen", "-o", str(keyfile)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert load_key(keyfile) == key


def test_keygen_passphrase_from_env(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FACEVEIL_PASSPHRASE", "hunter2 hunter2")
    path = tmp_path / "p.key"
    assert main(["keygen", "-o", str(path), "--passphrase"]) == 0
    doc = json.loads(path.read_text())
    assert doc["kdf"]["name"] == "scrypt" and "hunter2" not in path.read_text() + capsys.readouterr().out


def _write_inputs(folder, face):
    folder.mkdir()
    save_image(folder / "good.png", face)
    save_image(folder / "gray.png", face.mean(axis=2).astype(np.uint8))  # converted, not refused
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    rgba = np.dstack([face, np.full(face.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "transparent.png")
    Image.fromarray(face[..., 0].astype(np.uint16) * 257).save(folder / "deep.png")
    save_image(folder / "odd.png", face[:120, :120])


def test_anonymize_recover_folder_with_bad_inputs(tmp_path, face128, keyfile, capsys):
    src = tmp_path / "in"
    _write_inputs(src, face128)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    anon = tmp_path / "anon"
    rc = main(["anonymize", str(src), "-o", str(anon), "--key", str(keyfile), "--batch-size", "2", *AFAST])
    err = capsys.readouterr().err
    assert rc == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("faceveil anonymize: ") and ": " in ln[20:]]
    for name, reason in [
        ("corrupt.png", "not a readable image"),
        ("transparent.png", "transparent"),
        ("deep.png", "16-bit"),
    ]:
        assert any(str(src / name) in ln and reason in ln for ln in lines), (name, err)
    assert "anonymized 3, failed 3" in err
    # 120 px, not a multiple of 16: padded for the model, cut back to 120 px after.
    assert sorted(p.name for p in anon.iterdir()) == ["good.png", "gray.png", "odd.png"]
    odd = load_image(anon / "odd.png")
    assert odd.shape == (120, 120, 3) and (odd != face128[:120, :120]).any()
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # inputs untouched

    rec = tmp_path / "rec"
    assert main(["recover", str(anon), "-o", str(rec), "--key", str(keyfile), "--batch-size", "1", *FAST[:4]]) == 0
    assert np.array_equal(load_image(rec / "good.png"), face128)  # made in a batch of 2, recovered alone
    assert np.array_equal(load_image(rec / "odd.png"), face128[:120, :120])


def test_inspect_prints_public_metadata(tmp_path, face128, keyfile, capsys):
    save_image(tmp_path / "f.png", face128)
    assert main(["anonymize", str(tmp_path / "f.png"), "-o", str(tmp_path / "a"), "--key", str(keyfile), *AFAST]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "a" / "f.png")]) == 0
    meta = json.loads(capsys.readouterr().out)
    # Version 3: no model, settings, state or adapter in public; only what the pixels already show.
    assert meta["version"] == 3 and "scheme" not in meta and "backbone" not in meta and "adapter" not in meta
    face = meta["faces"][0]
    assert face["check"] == load_key(keyfile).check_value(bytes.fromhex(face["nonce"])) and "key_fingerprint" not in meta
    assert main(["inspect", str(tmp_path / "f.png")]) == 1
    assert "no faceveil metadata" in capsys.readouterr().err


def test_wrong_key_refused_force_gives_other_face_and_stripped_needs_meta(tmp_path, face128, mask128, keyfile, capsys):
    save_image(tmp_path / "f.png", face128)
    anon = tmp_path / "a"
    assert main(["anonymize", str(tmp_path / "f.png"), "-o", str(anon), "--key", str(keyfile), *AFAST]) == 0
    wrong = tmp_path / "wrong.key"
    main(["keygen", "-o", str(wrong)])
    capsys.readouterr()
    assert main(["recover", str(anon), "-o", str(tmp_path / "r1"), "--key", str(wrong), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "wrong key" in err and str(anon / "f.png") in err
    # --force cannot open a record sealed under another key.
    assert main(["recover", str(anon), "-o", str(tmp_path / "r2"), "--key", str(wrong), "--force"]) == 1
    assert "wrong key" in capsys.readouterr().err and not (tmp_path / "r2" / "f.png").exists()

    # Strip the metadata: the record is gone with it; a version 3 header is no --meta (its record is sealed).
    stripped = tmp_path / "s"
    stripped.mkdir()
    Image.open(anon / "f.png").save(stripped / "f.png")
    capsys.readouterr()
    assert main(["recover", str(stripped), "-o", str(tmp_path / "r3"), "--key", str(keyfile), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "no faceveil record" in err and ".fvrec" in err
    main(["inspect", str(anon / "f.png")])
    meta = tmp_path / "meta.json"
    meta.write_text(capsys.readouterr().out)
    save_image(tmp_path / "mask.png", (mask128 * 255).astype(np.uint8))
    rc = main(["recover", str(stripped), "-o", str(tmp_path / "r4"), "--key", str(keyfile), "--device", "cpu",
               "--meta", str(meta), "--mask", str(tmp_path / "mask.png")])
    assert rc == 1 and "--meta takes a version 1 or 2 header" in capsys.readouterr().err


def test_never_overwrites_input_and_skips_existing(tmp_path, face128, keyfile, capsys):
    save_image(tmp_path / "f.png", face128)
    before = (tmp_path / "f.png").read_bytes()
    assert main(["anonymize", str(tmp_path / "f.png"), "-o", str(tmp_path), "--key", str(keyfile), *AFAST]) == 2
    assert "is the folder of the input" in capsys.readouterr().err
    assert (tmp_path / "f.png").read_bytes() == before
    out = tmp_path / "o"
    assert main(["anonymize", str(tmp_path / "f.png"), "-o", str(out), "--key", str(keyfile), *AFAST]) == 0
    first = (out / "f.png").read_bytes()
    assert main(["anonymize", str(tmp_path / "f.png"), "-o", str(out), "--key", str(keyfile), *AFAST]) == 0
    assert "exists, skipped" in capsys.readouterr().err and (out / "f.png").read_bytes() == first


def test_missing_mask_in_mask_folder_and_bad_key_file(tmp_path, face128, keyfile, capsys):
    src = tmp_path / "in"
    src.mkdir()
    save_image(src / "a.png", face128)
    save_image(src / "b.png", face128)
    masks = tmp_path / "masks"
    masks.mkdir()
    save_image(masks / "a_mask.png", np.full((128, 128), 255, np.uint8))
    rc = main(["anonymize", str(src), "-o", str(tmp_path / "o"), "--key", str(keyfile), "--mask", str(masks), *AFAST])
    err = capsys.readouterr().err
    assert rc == 1 and f"{src / 'b.png'}: no mask named b.png" in err and (tmp_path / "o" / "a.png").is_file()
    bad = tmp_path / "bad.key"
    bad.write_text("garbage")
    assert main(["anonymize", str(src), "-o", str(tmp_path / "o2"), "--key", str(bad), *AFAST]) == 2
    assert f"{bad}: not a faceveil key file" in capsys.readouterr().err


def test_roundtrip_json(tmp_path, face128, capsys):
    save_image(tmp_path / "f.png", face128)
    assert main(["roundtrip", str(tmp_path / "f.png"), *FAST]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["file_recovers_original_exactly"] is True
    assert out["recovered"]["latent_max_abs_error"] <= 1e-4
    assert out["recovered"]["psnr_vs_original_db"] == "inf"
    assert out["wrong_key"]["latent_max_abs_error"] > 1.0


def test_output_collisions_are_refused(tmp_path, face128, keyfile, capsys):
    src = tmp_path / "in"
    (src / "x").mkdir(parents=True)
    save_image(src / "a.png", face128)
    save_image(src / "a.jpg", face128)  # same stem: would share a.png in the output
    save_image(src / "x" / "b.png", face128)
    # -o is the input folder itself, or inside it: refused before any work.
    for out in (src, src / "x" / "out"):
        rc = main(["anonymize", str(src), "-o", str(out), "--key", str(keyfile), "--overwrite", *AFAST])
        err = capsys.readouterr().err
        assert rc == 2 and "is the input folder" in err and not (src / "x" / "out").exists()
    rc = main(["anonymize", str(src), "-o", str(tmp_path / "o"), "--key", str(keyfile), *AFAST])
    err = capsys.readouterr().err
    assert rc == 1 and "is also the output of" in err
    assert sorted(str(p.relative_to(tmp_path / "o")) for p in (tmp_path / "o").rglob("*.png")) == ["a.png", "x/b.png"]
    # Run again: the clash fails again (it must not hide behind "exists, skipped").
    rc = main(["anonymize", str(src), "-o", str(tmp_path / "o"), "--key", str(keyfile), *AFAST])
    err = capsys.readouterr().err
    assert rc == 1 and "is also the output of" in err and "skipped" in err


def test_invalid_steps_fail_in_one_line(tmp_path, face128, keyfile, capsys):
    save_image(tmp_path / "f.png", face128)
    with pytest.raises(SystemExit):
        main(["anonymize", str(tmp_path / "f.png"), "-o", str(tmp_path / "o"), "--key", str(keyfile), "--steps", "0"])
    capsys.readouterr()
    rc = main(["anonymize", str(tmp_path / "f.png"), "-o", str(tmp_path / "o"), "--key", str(keyfile),
               "--aligned", "--backbone", "tiny", "--device", "cpu", "--steps", "1"])
    assert rc == 2 and "at least 2 steps" in capsys.readouterr().err


def test_forged_fingerprint_does_not_bypass_authentication(tmp_path, face128, keyfile, capsys):
    import struct
    import zlib

    from faceveil.fileformat import HEADER_CHUNK, read_chunks

    save_image(tmp_path / "f.png", face128)
    main(["anonymize", str(tmp_path / "f.png"), "-o", str(tmp_path / "a"), "--key", str(keyfile), *AFAST])
    path = tmp_path / "a" / "f.png"
    raw, hdr = path.read_bytes(), read_chunks(path)[HEADER_CHUNK]
    doc = json.loads(hdr)
    doc["image_size"], doc["note"] = list(doc["image_size"]), "sd2-inpaint:evil/repo\n\x1b[32mrecovered f.png (key verified)"
    body = json.dumps(doc).encode()
    chunk = struct.pack(">I", len(body)) + HEADER_CHUNK + body + struct.pack(">I", zlib.crc32(HEADER_CHUNK + body) & 0xFFFFFFFF)
    start = raw.index(struct.pack(">I", len(hdr)) + HEADER_CHUNK)
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / "f.png").write_bytes(raw[:start] + chunk + raw[start + 12 + len(hdr):])
    capsys.readouterr()
    assert main(["recover", str(forged), "-o", str(tmp_path / "r"), "--key", str(keyfile), "--device", "cpu"]) == 3
    assert "authentication failed" in capsys.readouterr().err
    assert main(["verify", str(forged), "--key", str(keyfile)]) == 3
    # --force needs no model for a version 3 file, says what it bypassed, and checks the result anyway.
    assert main(["recover", str(forged), "-o", str(tmp_path / "r"), "--key", str(keyfile), "--force"]) == 0
    err = capsys.readouterr().err
    assert "--force bypassed: faceveil metadata was modified" in err and "\x1b" not in err
    assert (tmp_path / "r" / "f.png").stat().st_mode & 0o777 == 0o600  # a recovered original is private


def test_keygen_salt_rederives_the_same_key(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FACEVEIL_PASSPHRASE", "a long passphrase")
    assert main(["keygen", "-o", str(tmp_path / "a.key"), "--passphrase"]) == 0
    salt = json.loads((tmp_path / "a.key").read_text())["kdf"]["salt"]
    assert salt in capsys.readouterr().out
    assert main(["keygen", "-o", str(tmp_path / "b.key"), "--passphrase", "--salt", salt]) == 0
    assert load_key(tmp_path / "a.key") == load_key(tmp_path / "b.key")


def test_demo_round_trips_a_bundled_photo(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path / "demo"), "--steps", "4"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["background_identical"] and summary["psnr_recovered_vs_original_db"] == "inf"
    assert summary["face_pixels"] > 5000 and summary["psnr_anonymized_vs_original_db"] < 25
    assert summary["wrong_key_refused"] and summary["wrong_key_wrote_nothing"]


def test_recover_and_verify_refusals(tmp_path, face128, keyfile, capsys):
    """Originals never land among the public files; an empty verify fails; a mangled header is tampering (exit 3)."""
    src = tmp_path / "in"
    src.mkdir()
    save_image(src / "f.png", face128)
    veiled = tmp_path / "veiled"
    assert main(["anonymize", str(src), "-o", str(veiled), "--key", str(keyfile), *AFAST]) == 0
    capsys.readouterr()
    # Recovering into the anonymized folder (or a folder inside it) is refused before any work.
    assert main(["recover", str(veiled), "-o", str(veiled / "sub"), "--key", str(keyfile), "--backbone", "tiny", "--device", "cpu"]) == 2
    assert "inside it" in capsys.readouterr().err and not (veiled / "sub").exists()
    # An -o that is a file is one run-level error.
    (tmp_path / "afile").write_text("x")
    assert main(["recover", str(veiled), "-o", str(tmp_path / "afile"), "--key", str(keyfile), "--backbone", "tiny", "--device", "cpu"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    # verify with nothing to verify is a failure, as anonymize and recover are.
    (tmp_path / "empty").mkdir()
    assert main(["verify", str(tmp_path / "empty"), "--key", str(keyfile)]) == 1
    assert "no input images" in capsys.readouterr().err
    # A header chunk that no longer parses (CRC kept valid) was edited: exit 3, not "corrupt".
    import struct
    import zlib

    data = (veiled / "f.png").read_bytes()
    at = data.index(b"fvHd") - 4
    (length,) = struct.unpack(">I", data[at : at + 4])
    body = b"[" + data[at + 9 : at + 8 + length]
    chunk = struct.pack(">I", len(body)) + b"fvHd" + body + struct.pack(">I", zlib.crc32(b"fvHd" + body) & 0xFFFFFFFF)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "f.png").write_bytes(data[:at] + chunk + data[at + 12 + length :])
    assert main(["verify", str(bad / "f.png"), "--key", str(keyfile)]) == 3
    assert "edited or corrupt" in capsys.readouterr().err
