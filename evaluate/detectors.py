"""Which face detector finds the faces of ordinary photos: recall on the bundled photos and variants.

    python -m faceveil.evaluate.detectors [--detectors dlib,dlib-up1,dlib-cnn,centerface,insightface] [--json OUT]

Prints a Markdown table: per detector, faces found / true faces for each variant
(:mod:`faceveil.evaluate.photo_variants`), false positives, and seconds per
photo on this machine. A detector that cannot run here (``insightface`` without
its ``buffalo_l`` weights) gets a row that says why. The photo pipeline's
default detector is the one with the best recall here.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from faceveil.data.backends import DetectorSpec, make_detector
from faceveil.errors import FaceveilError
from faceveil.evaluate.photo_variants import VARIANTS, eval_photos, matches
from faceveil.evaluate.report import table

# name -> detector spec; dlib's HOG and CNN windows start at about 80 px, "-up1" upsamples once.
CANDIDATES: dict[str, DetectorSpec] = {
    "dlib": DetectorSpec("dlib"),
    "dlib-up1": DetectorSpec("dlib", upsample=1),
    "dlib-cnn": DetectorSpec("dlib-cnn"),
    "dlib-cnn-up1": DetectorSpec("dlib-cnn", upsample=1),
    "centerface": DetectorSpec("centerface"),
    "insightface": DetectorSpec("insightface"),
}


def compare(names: list[str], variants: tuple[str, ...] = VARIANTS) -> list[dict]:
    photos = eval_photos(variants)
    rows = []
    for name in names:
        try:
            det = make_detector(CANDIDATES[name])
        except FaceveilError as exc:
            rows.append({"detector": name, "error": str(exc)})
            continue
        per: dict[str, list[int]] = {v: [0, 0] for v in variants}
        false_pos, seconds = 0, 0.0
        for p in photos:
            t = time.perf_counter()
            faces = det.detect(p.image)
            seconds += time.perf_counter() - t
            found = np.array([f.bbox for f in faces]).reshape(-1, 4)
            hit = matches(p.boxes, found)
            per[p.variant][0] += int(hit.sum())
            per[p.variant][1] += len(p.boxes)
            false_pos += int((~matches(found, p.boxes)).sum())
        found_all = sum(a for a, _ in per.values())
        total = sum(b for _, b in per.values())
        rows.append({"detector": name, "per_variant": per, "recall": found_all / total, "false_positives": false_pos,
                     "seconds_per_photo": seconds / len(photos)})
    return rows


def render(rows: list[dict], variants: tuple[str, ...] = VARIANTS) -> str:
    header = ["detector", *variants, "recall", "false pos.", "s / photo"]
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["detector"], *(["—"] * len(variants)), "not run: " + r["error"].split(";")[0], "—", "—"])
            continue
        cells = [f"{a}/{b}" for a, b in (r["per_variant"][v] for v in variants)]
        body.append([r["detector"], *cells, f"{100 * r['recall']:.0f} %", str(r["false_positives"]), f"{r['seconds_per_photo']:.2f}"])
    return table(header, body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m faceveil.evaluate.detectors", description=__doc__.split("\n\n")[0])
    p.add_argument("--detectors", default=",".join(CANDIDATES), help="comma-separated: " + ", ".join(CANDIDATES))
    p.add_argument("--json", help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.detectors.split(",") if n.strip()]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        p.error(f"unknown detector(s): {', '.join(unknown)}")
    rows = compare(names)
    print(render(rows))
    if args.json:
        from faceveil.evaluate.jsonio import write_json

        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
