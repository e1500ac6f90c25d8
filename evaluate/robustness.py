"""Recovery from the pixels alone against the published method: ``faceveil evaluate --robustness``.

Both methods anonymize the same faces of the same photos with the same backbone and step count,
then recover from copies that carry no record:

- ``ours``: ``--pixel-recovery`` (template mask, quantized geometry, keyed watermark, the key's
  rotation on the face region, the exact scheme); recovery finds the faces by their marks alone,
  inverts the decoder, then the scheme (:mod:`faceveil.models.pixel_recovery`);
- ``published``: sign flip inside the mask, plain DDIM, re-encoding with the encoder. It is given
  each face's true crop geometry and mask (the published code re-detects the mask; on random
  weights no detector finds a face), so its row is an upper bound for it.

Conditions: the pixels as written, a stripped PNG, JPEG 95/75/50, resize x1/2 and back.
Columns, per method and condition (means over faces): PSNR inside the face regions (photo
pixels), SSIM and LPIPS of the aligned face crop (outside the mask taken from the original),
identity of the recovered face against the original (dlib's descriptor distance; same person
below 0.6), the watermark's raw bit accuracy, and faces found. The anonymized image's own
figures head the table: recovery must beat them to have recovered anything.

::

    faceveil evaluate --robustness --backbone tiny --steps 8 -o runs/robustness
    python -m faceveil.evaluate.robustness --backbone sd2-inpaint --steps 50    # with real weights
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faceveil.evaluate.distortions import half_and_back, jpeg, png

CONDITIONS = ("untouched", "stripped_png", "jpeg95", "jpeg75", "jpeg50", "half_and_back")
PHOTOS = ("astronaut", "grace_hopper")
SEED = 1234  # the published method's key: a seed


DISTORT: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "untouched": lambda a: a.copy(),
    "stripped_png": png,
    "jpeg95": jpeg(95),
    "jpeg75": jpeg(75),
    "jpeg50": jpeg(50),
    "half_and_back": half_and_back,
}


class Scorer:
    """PSNR in the photo regions; SSIM, LPIPS and dlib identity on the aligned crops."""

    def __init__(self, size: int) -> None:
        from faceveil.data.photo_mask import CANONICAL_BOX
        from faceveil.evaluate.metrics import Lpips

        self.size = size
        self.box = np.array([f * size for f in CANONICAL_BOX])
        try:
            self.lpips, self.lpips_kind = Lpips(backbone="pretrained"), "lpips-alex"
        except Exception:  # noqa: BLE001 - torchvision's ImageNet weights are not downloadable here
            self.lpips, self.lpips_kind = Lpips(backbone="random"), "lpips-alex (random backbone: not comparable to published figures)"
        from faceveil.models.recognizers import load_recognizer

        self.dlib = load_recognizer("dlib")

    def crops(self, image: np.ndarray, faces: Sequence[Any], original: np.ndarray) -> list[np.ndarray]:
        from faceveil.data.align import warp_face

        out = []
        for f in faces:
            ref = warp_face(original, f.matrix, self.size)
            out.append(np.where(f.mask[..., None], warp_face(image, f.matrix, self.size), ref))
        return out

    def score(self, image: np.ndarray, original: np.ndarray, faces: Sequence[Any], inside: np.ndarray) -> dict[str, float]:
        from faceveil.evaluate.metrics import ssim

        err = (image[inside].astype(np.float64) - original[inside]) ** 2
        mine, ref = self.crops(image, faces, original), self.crops(original, faces, original)
        boxes = [self.box] * len(mine)
        with np.errstate(all="ignore"):
            dist = (self.dlib.embed(mine, boxes) - self.dlib.embed(ref, boxes)).norm(dim=1).numpy()
        return {
            "psnr_db": float(10 * np.log10(255.0**2 / max(err.mean(), 1e-12))),
            "ssim": float(np.mean(ssim(mine, ref))),
            "lpips": float(np.mean(self.lpips(mine, ref))),
            "identity_dlib_distance": float(np.nanmean(dist)),
        }


def _regions_mask(faces: Sequence[Any], hw: tuple[int, int]) -> np.ndarray:
    inside = np.zeros(hw, dtype=bool)
    for f in faces:
        r = f.region(hw)
        inside[r.slices()] |= r.inside
    return inside


def run(backbone_spec: str, photos: Sequence[str], steps: int, inversion_steps: int, conditions: Sequence[str],
        log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> dict[str, Any]:
    import torch

    from faceveil.data.photo_align import context_crop, context_photo, face_crop, paste_face
    from faceveil.data.photo_detect import FacePolicy
    from faceveil.data.photo_io import load_photo
    from faceveil.data.samples import sample_photo_path
    from faceveil.evaluate.baselines import PublishedScheme
    from faceveil.keys import SecretKey
    from faceveil.models.backbones import load_backbone
    from faceveil.models.photo import PhotoAnonymizer, native_size
    from faceveil.models.photo_api import PhotoFinder
    from faceveil.models.pipeline import Anonymizer
    from faceveil.models.pixel_recovery import PixelRecoverer
    from faceveil.models.settings import Settings
    from faceveil.data.align import warp_face
    from faceveil import watermark as wm

    bb = load_backbone(backbone_spec)
    size = native_size(bb)
    key = SecretKey.generate()
    ours = Anonymizer(bb, Settings(scheme="exact", steps=steps, residual=False))
    recoverer = PixelRecoverer(ours, inversion_steps=inversion_steps)
    published = PublishedScheme(bb, steps, mask_fallback="stored")
    scorer = Scorer(size)
    rows: dict[str, dict[str, list[dict[str, float]]]] = {}
    n_faces = 0
    started = time.time()
    for name in photos:
        photo = load_photo(sample_photo_path(name))
        faces = [f for f in PhotoFinder(size, policy=FacePolicy(pixel_recovery=True)).find(photo) if f.treatment == "diffusion"]
        if not faces:
            continue
        n_faces += len(faces)
        hw = photo.shape[:2]
        inside = _regions_mask(faces, hw)
        [ours_vp] = PhotoAnonymizer(ours).anonymize([(photo, faces)], key)
        regions = [f.region(hw) for f in faces]
        context = context_photo(photo, regions)
        with torch.no_grad():
            pub_crops = published.anonymize([face_crop(photo, context, f.matrix, f.mask) for f in faces], [f.mask for f in faces], SEED)
        pub_image = photo.copy()
        for f, c, r in zip(faces, pub_crops, regions):
            paste_face(pub_image, c, f.matrix, r)
        for method, image in (("ours", ours_vp.image), ("published", pub_image)):
            rows.setdefault(method, {}).setdefault("anonymized (no recovery)", []).append(scorer.score(image, photo, faces, inside))
        for cond in conditions:
            for method, image in (("ours", ours_vp.image), ("published", pub_image)):
                pixels = DISTORT[cond](image)
                if method == "ours":
                    result = recoverer.recover(pixels, key, scales=(1.0, 2.0))
                    found = 0 if result is None else len(result.faces)
                    recovered = pixels if result is None else result.image
                    bits = [float(np.mean(wm.read_bits(pixels, _regions_mask([f], hw), key) == wm.sealed_bits(key, f.body))) for f in faces]
                    extra = {"faces_found": found / len(faces), "watermark_bit_accuracy": float(np.mean(bits))}
                else:
                    ctx = context_photo(pixels, regions)
                    given = [np.where(f.mask[..., None], warp_face(pixels, f.matrix, size), context_crop(ctx, f.matrix, size)) for f in faces]
                    with torch.no_grad():
                        rec_crops, _, _ = published.recover(given, SEED, [f.mask for f in faces])
                    recovered = pixels.copy()
                    for f, c, r in zip(faces, rec_crops, regions):
                        paste_face(recovered, c, f.matrix, r)
                    extra = {"faces_found": float("nan"), "watermark_bit_accuracy": float("nan")}
                scored = scorer.score(recovered, photo, faces, inside) | extra
                rows[method].setdefault(cond, []).append(scored)
                log(f"{name} {cond} {method}: {scored['psnr_db']:.2f} dB ({time.time() - started:.0f} s)")
    table = {m: {c: {k: float(np.nanmean([r[k] for r in v])) if any(k in r for r in v) else None for k in v[0]}
                 for c, v in conds.items()} for m, conds in rows.items()}
    return {"backbone": backbone_spec, "steps": steps, "inversion_steps": inversion_steps, "photos": list(photos),
            "faces": n_faces, "lpips": scorer.lpips_kind, "identity": "dlib descriptor distance (same person < 0.6)",
            "published_geometry": "given (true crop geometry and mask: an upper bound for the published method)",
            "table": table, "seconds": round(time.time() - started, 1)}


def markdown(report: dict[str, Any]) -> str:
    lines = ["| condition | method | PSNR dB | SSIM | LPIPS | dlib distance | mark bits | faces found |", "|---|---|---|---|---|---|---|---|"]
    conds = ["anonymized (no recovery)", *[c for c in CONDITIONS if c in report["table"].get("ours", {})]]

    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)

    for c in conds:
        for m in ("ours", "published"):
            r = report["table"].get(m, {}).get(c)
            if r is None:
                continue
            lines.append(f"| {c} | {m} | {fmt(r['psnr_db'], '.2f')} | {fmt(r['ssim'], '.3f')} | {fmt(r['lpips'], '.3f')} | "
                         f"{fmt(r['identity_dlib_distance'], '.3f')} | {fmt(r.get('watermark_bit_accuracy'), '.3f')} | "
                         f"{fmt(r.get('faces_found'), '.2f')} |")
    return "\n".join(lines)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default=None, help="backbone (default $FACEVEIL_BACKBONE, else sd2-inpaint)")
    p.add_argument("--photos", nargs="+", default=list(PHOTOS), help="bundled photos (astronaut, grace_hopper, tom_hanks, t1_group)")
    p.add_argument("--steps", type=int, default=8, help="sampling steps for both methods (default 8)")
    p.add_argument("--inversion-steps", type=int, default=200, help="decoder inversion steps (ours; default 200)")
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    p.add_argument("-o", "--output", type=Path, default=Path("runs/robustness"), help="folder for robustness.json and .md")


def main_from_args(args: argparse.Namespace) -> int:
    from faceveil.machine import default_backbone

    report = run(args.backbone or default_backbone(), args.photos, args.steps, args.inversion_steps, args.conditions)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "robustness.json").write_text(json.dumps(report, indent=2))
    (args.output / "robustness.md").write_text(markdown(report) + "\n")
    print(markdown(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(ap)
    return main_from_args(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
