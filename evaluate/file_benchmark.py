"""File format v2 against v3: bytes per face, time to write, time to open, time to recover.

    python -m faceveil.evaluate.file_benchmark --steps 50

Rows:
- ``crop-128 (tiny)``: an aligned 128 px crop anonymized by the tiny backbone, written both ways;
- ``crop-512 (sd2 layout)``: a 512 px crop with the sd2-inpaint layout's state shape (2, 4, 64, 64)
  and residual, made without running the 865M-parameter UNet here: the state is drawn as the
  lattice noise it is, the residual sealed at its real length (ciphertext does not compress), so
  the byte counts are those of the format, not of one image;
- ``t1.jpg (tiny)``: insightface's six-face photo through the photo pipeline.

Per row: bytes of the sealed part and of the whole file; seconds to write; seconds to open (read,
authenticate, open the records, decode); and for rows with a model, seconds to recover (v2:
replay through the model; v3: open, no model) and whether the result is the original bit for bit.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from faceveil.data.images import elliptical_mask, load_image
from faceveil.data.samples import sample_photo_path
from faceveil.keys import SecretKey, new_nonce


def _timed(fn):  # noqa: ANN001, ANN202
    t = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t, 3)


def _sealed(path: Path) -> int:
    from faceveil.fileformat import read_chunks

    return len(read_chunks(path).get(b"fvDt", b""))


def crop_row(name: str, veiled, key: SecretKey, tmp: Path, anonymizer=None) -> dict:  # noqa: ANN001
    from faceveil.fileformat import read_file, write_veiled
    from faceveil.fileformat.original import open_original
    from faceveil.fileformat.write import write_veiled_v2

    p2, t_w2 = _timed(lambda: write_veiled_v2(tmp / f"{name}-v2.png", veiled, key))
    p3, t_w3 = _timed(lambda: write_veiled(tmp / f"{name}-v3.png", veiled, key))
    vf2, t_o2 = _timed(lambda: read_file(p2, key))
    o3, t_o3 = _timed(lambda: open_original(p3, key))
    row = {"row": name, "mask_fraction": round(float(veiled.mask.mean()), 3),
           "v2": {"sealed_bytes": _sealed(p2), "file_bytes": p2.stat().st_size, "write_s": t_w2, "open_s": t_o2},
           "v3": {"sealed_bytes": _sealed(p3), "file_bytes": p3.stat().st_size, "write_s": t_w3, "open_s": t_o3,
                  "exact": bool(o3.exact and np.array_equal(o3.image, veiled.original))}}
    if anonymizer is not None:
        from faceveil.fileformat import veiled_from_file

        rec, t_r2 = _timed(lambda: anonymizer.recover([veiled_from_file(vf2)], key)[0])
        row["v2"].update(recover_s=round(t_o2 + t_r2, 3), exact=bool(np.array_equal(rec.image, veiled.original)))
        row["v3"]["recover_s"] = t_o3
    return row


def sd2_layout_crop(size: int = 512) -> "object":
    """A Veiled with the sd2-inpaint layout's shapes at ``size`` px (see the module docstring)."""
    from faceveil.models.inversion import LATTICE
    from faceveil.models.pipeline import Veiled
    from faceveil.models.residual import seal_residual
    from faceveil.models.settings import Settings

    key = SecretKey.generate()
    g = np.random.default_rng(0)
    mask = elliptical_mask(size, size)
    original = g.integers(0, 256, (size, size, 3), dtype=np.uint8)
    image = original.copy()
    image[mask] = g.integers(0, 256, (int(mask.sum()), 3), dtype=np.uint8)
    state = torch.from_numpy(np.round(g.normal(size=(2, 4, size // 8, size // 8)) / LATTICE) * LATTICE)
    nonce = new_nonce()
    ref = np.clip(original.astype(int) + g.integers(-6, 7, original.shape), 0, 255).astype(np.uint8)
    v = Veiled(image=image, mask=mask, nonce=nonce, settings=Settings(), key_check=key.check_value(nonce),
               backbone="sd2-inpaint:stabilityai/stable-diffusion-2-inpainting", state=state,
               sealed_residual=seal_residual(original, ref, mask, key, nonce), original=original,
               compute={"dtype": "bfloat16", "device": "cuda"})
    return v, key


def photo_row(steps: int, tmp: Path) -> dict:
    from faceveil.fileformat.original import open_original
    from faceveil.models.backbones import load_backbone
    from faceveil.models.photo import PhotoAnonymizer
    from faceveil.models.photo_api import anonymize_photo
    from faceveil.models.pipeline import Anonymizer
    from faceveil.models.settings import Settings
    from faceveil.photofile import read_photo, write_photo, write_photo_v2

    bb = load_backbone("tiny")
    key = SecretKey.generate()
    original = load_image(sample_photo_path("t1_group"))
    vp, t_anon = _timed(lambda: anonymize_photo(original, key, backbone=bb, settings=Settings(steps=steps)))
    p2, t_w2 = _timed(lambda: write_photo_v2(tmp / "t1-v2.png", vp, key))
    p3, t_w3 = _timed(lambda: write_photo(tmp / "t1-v3.png", vp, key))

    def replay():  # noqa: ANN202
        photo = read_photo(p2, key)
        return PhotoAnonymizer(Anonymizer(load_backbone("tiny"), Settings(steps=steps))).recover([photo], key)[0]

    rec2, t_r2 = _timed(replay)
    o3, t_r3 = _timed(lambda: open_original(p3, key))
    return {"row": f"t1.jpg (tiny, {len(vp.faces)} faces, {steps} steps)", "anonymize_s": t_anon,
            "v2": {"sealed_bytes": _sealed(p2), "file_bytes": p2.stat().st_size, "write_s": t_w2, "recover_s": t_r2,
                   "exact": bool(np.array_equal(rec2, original))},
            "v3": {"sealed_bytes": _sealed(p3), "file_bytes": p3.stat().st_size, "write_s": t_w3, "recover_s": t_r3,
                   "exact": bool(o3.exact and np.array_equal(o3.image, original))}}


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    from faceveil.models.backbones import load_backbone
    from faceveil.models.pipeline import Anonymizer
    from faceveil.models.settings import Settings

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--skip-photo", action="store_true")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        face = load_image(sample_photo_path("tom_hanks"))
        face = np.asarray(Image.fromarray(face).resize((128, 128), Image.Resampling.LANCZOS))
        an = Anonymizer(load_backbone("tiny"), Settings(steps=args.steps))
        key = SecretKey.generate()
        [v] = an.anonymize([face], [elliptical_mask(128, 128)], key)
        rows.append(crop_row("crop-128 (tiny)", v, key, tmp, an))
        v512, key512 = sd2_layout_crop()
        rows.append(crop_row("crop-512 (sd2 layout)", v512, key512, tmp))
        if not args.skip_photo:
            rows.append(photo_row(args.steps, tmp))
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
