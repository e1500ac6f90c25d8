"""faceveil detect PHOTO... -o OUTDIR: see what anonymize would find and do, before it does.

For each photo, writes ``OUTDIR/NAME.png`` (a copy with each face's box, index,
score, size and planned treatment drawn on it; no metadata) and ``OUTDIR/NAME.json``
(the same as data, ``{"faces": [{"box": [x, y, w, h], ...}]}``), and prints one
line per photo. A JSON file, edited (a missed face added, say), goes back to
``faceveil anonymize --regions FILE.json``. The face options are anonymize's, so
the plan shown is the plan anonymize follows. Loads no diffusion model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from faceveil.cli.common import Report, check_output_folder, planned_outputs, quiet_libraries

PLAN_SIZE = 512  # alignment is planned at sd2-inpaint's crop (the default backbone's)
COLOURS = {"diffusion": (40, 200, 60), "left": (230, 30, 30)}  # RGB; covers are amber
COVER_COLOUR = (250, 170, 20)


def register(sub: argparse._SubParsersAction) -> None:
    from faceveil.cli.photo_args import add_face_args
    from faceveil.data.photo_io import DEFAULT_MAX_PIXELS

    p = sub.add_parser("detect", help="show the faces found in photos and what anonymize would do with each (preview + JSON)")
    p.add_argument("inputs", nargs="+", metavar="PHOTO", help="photos or folders of photos")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder for NAME.png previews and NAME.json")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help=f"refuse larger photos (default {DEFAULT_MAX_PIXELS})")
    add_face_args(p.add_argument_group("faces (as for anonymize)"))
    p.set_defaults(func=run)


def face_entries(faces) -> list[dict]:
    """The JSON of planned faces: box as [x, y, w, h] in photo pixels."""
    out = []
    for f in faces:
        x0, y0, x1, y1 = (round(float(v), 1) for v in f.bbox)
        out.append({"index": f.index, "box": [x0, y0, round(x1 - x0, 1), round(y1 - y0, 1)],
                    "score": None if f.score is None else round(float(f.score), 3), "size": round(min(x1 - x0, y1 - y0), 1),
                    "treatment": f.treatment, "why": f.why})
    return out


def draw_faces(image: np.ndarray, faces) -> np.ndarray:
    """A copy of ``image`` with each face's box and a label ``index treatment score size``; a small
    photo is enlarged (pixels kept square) so that the labels fit."""
    import cv2

    zoom = max(1, -(-800 // max(image.shape[:2])))
    out = cv2.resize(image, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST) if zoom > 1 else image.copy()
    thick = max(1, round(max(out.shape[:2]) / 800))
    for f in faces:
        colour = COLOURS.get(f.treatment, COVER_COLOUR)
        b = np.asarray(f.bbox, dtype=np.float64)
        x0, y0, x1, y1 = (int(round(float(v) * zoom)) for v in b)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thick)
        score = "" if f.score is None else f" {f.score:.2f}"
        label = f"{f.index} {f.treatment}{score} {min(b[2] - b[0], b[3] - b[1]):.0f}px"
        scale = 0.35 * thick
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y0 - 3 if y0 - th - 4 >= 0 else y1 + th + 3
        cv2.rectangle(out, (x0, ty - th - 2), (x0 + tw + 2, ty + 2), colour, -1)
        cv2.putText(out, label, (x0 + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def run(args: argparse.Namespace) -> int:
    from faceveil.cli.photo_args import face_policy, hand_regions
    from faceveil.data.images import atomic_write, save_image
    from faceveil.data.photo_detect import LEFT, NoFaceError
    from faceveil.data.photo_io import load_photo
    from faceveil.errors import FaceveilError
    from faceveil.models.photo import treatment_summary
    from faceveil.models.photo_api import PhotoFinder

    quiet_libraries()
    check_output_folder(args.inputs, args.output)
    report = Report("detect")
    finder = PhotoFinder(PLAN_SIZE, args.detector, face_policy(args), args.detect_size, args.sideways)
    regions = hand_regions(args)
    for src, dst in planned_outputs(args.inputs, args.output, args.overwrite, report):
        try:
            image = load_photo(src, args.max_pixels, allow_anonymized=True)
            try:
                faces = finder.find(image, str(src), regions)
            except NoFaceError:
                faces = []
            doc = {"source": str(src), "width": image.shape[1], "height": image.shape[0], "faces": face_entries(faces)}
            save_image(dst, draw_faces(image, faces))
            atomic_write(dst.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(doc, indent=1) + "\n"))
        except FaceveilError as exc:
            report.fail(src, exc)
            continue
        report.ok += 1
        print(f"{src}: {treatment_summary(faces) if faces else 'no face found'} -> {dst.with_suffix('.json')}", flush=True)
        if any(f.treatment == LEFT for f in faces):
            report.left_visible.append(str(src))
    return report.finish("detected", args.output)
