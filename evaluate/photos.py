"""Photo-level evaluation: does every face of an ordinary photo get anonymized, and come back?

    python -m faceveil.evaluate.photos [--backbone tiny] [--steps 4] [--reference dlib-cnn] [--json OUT]

On the bundled photos and their harder variants (:mod:`faceveil.evaluate.photo_variants`)
it runs the photo pipeline as ``faceveil anonymize`` does (default detector, every
face, file written and read back) and measures, per variant:

- **anonymization recall** (the privacy number): the share of true faces, and of the
  faces a strong reference detector finds in the original, whose central box lies
  mostly (>= 50 %) inside an anonymized region;
- **detected after**: the share of true faces the reference detector still finds
  in the anonymized photo (utility: a face is still there);
- **dlib distance**: dlib's descriptor distance between each true face before and
  after, at the same landmarks (> 0.6 is "another person" for dlib);
- **outside unchanged**: photos whose pixels outside every face region are bit-identical;
- **exact recovery**: photos recovered bit for bit from the written file.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from faceveil.errors import FaceveilError
from faceveil.evaluate.photo_variants import VARIANTS, EvalPhoto, eval_photos, matches
from faceveil.evaluate.report import table


def _covered(boxes: np.ndarray, region: np.ndarray) -> np.ndarray:
    """(N,) bool: at least half of each box's central half lies in ``region``."""
    h, w = region.shape
    out = np.zeros(len(boxes), bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        qx, qy = (x1 - x0) / 4, (y1 - y0) / 4
        a0, a1 = int(np.clip(x0 + qx, 0, w - 1)), int(np.clip(np.ceil(x1 - qx), 1, w))
        b0, b1 = int(np.clip(y0 + qy, 0, h - 1)), int(np.clip(np.ceil(y1 - qy), 1, h))
        out[i] = region[b0:b1, a0:a1].mean() >= 0.5 if a1 > a0 and b1 > b0 else False
    return out


def dlib_distances(before: np.ndarray, after: np.ndarray, boxes: np.ndarray) -> list[float]:
    """Descriptor distance per box, both images described at the landmarks found in ``before``."""
    import dlib

    from faceveil.data.dlib_models import face_descriptor_model, shape_predictor

    model, predictor = face_descriptor_model(), shape_predictor(68)
    out = []
    for x0, y0, x1, y1 in boxes:
        rect = dlib.rectangle(int(x0), int(y0), int(x1), int(y1))
        shape = predictor(before, rect)
        a = np.array(model.compute_face_descriptor(before, shape))
        b = np.array(model.compute_face_descriptor(after, shape))
        out.append(float(np.linalg.norm(a - b)))
    return out


class PhotoEval:
    def __init__(self, backbone: str, steps: int, reference: str, detector: str) -> None:
        from faceveil.data.backends import DetectorSpec, make_detector
        from faceveil.models.backbones import load_backbone
        from faceveil.models.photo import PhotoAnonymizer, native_size
        from faceveil.models.photo_api import PhotoFinder
        from faceveil.models.pipeline import Anonymizer
        from faceveil.models.settings import Settings

        bb = load_backbone(backbone)
        self.photos = PhotoAnonymizer(Anonymizer(bb, Settings(steps=steps)))
        self.finder = PhotoFinder(native_size(bb), detector)
        from faceveil.evaluate.detectors import CANDIDATES

        self.reference = make_detector(CANDIDATES.get(reference, DetectorSpec(reference)))

    def one(self, p: EvalPhoto, tmp: Path) -> dict:
        from faceveil.keys import SecretKey
        from faceveil.fileformat.original import open_original
        from faceveil.photofile import write_photo

        key = SecretKey.generate()
        ref = np.array([f.bbox for f in self.reference.detect(p.image)]).reshape(-1, 4)
        t = time.perf_counter()
        try:
            faces = self.finder.find(p.image)
        except FaceveilError:
            faces = []
        if not faces:  # nothing written: no face of the photo is anonymized
            n = len(p.boxes)
            return {"faces": n, "anon_true": 0, "ref": len(ref), "anon_ref": 0, "after": n, "dlib": [], "outside": None,
                    "exact": None, "seconds": time.perf_counter() - t}
        [vp] = self.photos.anonymize([(p.image, faces)], key)
        region = np.zeros(p.image.shape[:2], bool)
        for f in faces:
            r = f.region(p.image.shape[:2])
            region[r.slices()] |= r.inside
        path = tmp / f"{p.name}-{p.variant}.png"
        write_photo(path, vp, key)
        recovered = open_original(path, key).image
        seconds = time.perf_counter() - t
        after = np.array([f.bbox for f in self.reference.detect(vp.image)]).reshape(-1, 4)
        return {
            "faces": len(p.boxes),
            "anon_true": int(_covered(p.boxes, region).sum()),
            "ref": len(ref),
            "anon_ref": int(_covered(ref, region).sum()),
            "after": int(matches(p.boxes, after).sum()),
            "dlib": dlib_distances(p.image, vp.image, p.boxes),
            "outside": bool(np.array_equal(vp.image[~region], p.image[~region])),
            "exact": bool(np.array_equal(recovered, p.image)),
            "seconds": seconds,
        }


def summarize(results: list[tuple[EvalPhoto, dict]]) -> dict[str, dict]:
    by: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    for p, r in results:
        for k, v in r.items():
            by[p.variant][k].append(v)
        for k, v in r.items():
            by["all"][k].append(v)
    out = {}
    for variant, d in by.items():
        written = [x for x in d["outside"] if x is not None]
        exact = [x for x in d["exact"] if x is not None]
        dl = [x for xs in d["dlib"] for x in xs]
        out[variant] = {
            "photos": len(d["faces"]),
            "faces": sum(d["faces"]),
            "anonymization_recall": sum(d["anon_true"]) / max(sum(d["faces"]), 1),
            "reference_faces": sum(d["ref"]),
            "anonymization_recall_reference": sum(d["anon_ref"]) / max(sum(d["ref"]), 1),
            "detected_after": sum(d["after"]) / max(sum(d["faces"]), 1),
            "dlib_distance_mean": float(np.mean(dl)) if dl else None,
            "dlib_distance_min": float(np.min(dl)) if dl else None,
            "outside_unchanged": f"{sum(written)}/{len(written)}",
            "exact_recovery": f"{sum(exact)}/{len(exact)}",
            "seconds_per_photo": float(np.mean(d["seconds"])),
        }
    return out


def render(summary: dict[str, dict]) -> str:
    header = ["variant", "photos", "faces", "anon. recall (true)", "anon. recall (reference)", "detected after",
              "dlib dist. mean / min", "outside unchanged", "exact recovery", "s / photo"]
    rows = []
    for v in [*VARIANTS, "all"]:
        if v not in summary:
            continue
        s = summary[v]
        dl = "—" if s["dlib_distance_mean"] is None else f"{s['dlib_distance_mean']:.2f} / {s['dlib_distance_min']:.2f}"
        rows.append([v, str(s["photos"]), str(s["faces"]), f"{100 * s['anonymization_recall']:.0f} %",
                     f"{100 * s['anonymization_recall_reference']:.0f} % of {s['reference_faces']}",
                     f"{100 * s['detected_after']:.0f} %", dl, s["outside_unchanged"], s["exact_recovery"],
                     f"{s['seconds_per_photo']:.1f}"])
    return table(header, rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m faceveil.evaluate.photos", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="tiny", help="backbone spec (default tiny: offline, random weights)")
    p.add_argument("--steps", type=int, default=4, help="DDIM steps (default 4)")
    p.add_argument("--detector", default="centerface", help="the pipeline's detector (default centerface)")
    p.add_argument("--reference", default="dlib-cnn", help="the strong reference detector: a name from faceveil.evaluate.detectors, e.g. dlib-cnn-up1 "
                   "(default dlib-cnn; insightface when its weights are present)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    p.add_argument("--json", help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    variants = tuple(v for v in args.variants.split(",") if v)
    ev = PhotoEval(args.backbone, args.steps, args.reference, args.detector)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for photo in eval_photos(variants):
            results.append((photo, ev.one(photo, Path(tmp))))
    summary = summarize(results)
    print(render(summary))
    if args.json:
        from faceveil.evaluate.jsonio import write_json

        write_json(args.json, {"settings": vars(args), "summary": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
