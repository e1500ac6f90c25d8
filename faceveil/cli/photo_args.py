"""The options that find and plan the faces of photos, shared by ``anonymize`` and ``detect``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from faceveil.cli.common import positive_int


def add_face_args(g: argparse._ArgumentGroup) -> None:
    from faceveil.data.backends import DETECTORS
    from faceveil.data.photo_cover import COVERS
    from faceveil.data.photo_detect import DEFAULT_MIN_FACE, DEFAULT_TILE, METHODS, PHOTO_FACE_POLICIES
    from faceveil.data.photo_mask import DEFAULT_MASK_EXTENT, MASK_EXTENTS

    g.add_argument("--method", choices=METHODS, default="diffusion",
                   help="what every face gets: a keyed synthetic face (diffusion, default) or an irreversible cover")
    g.add_argument("--cover", choices=COVERS, default="blur",
                   help="the cover of a face the diffusion cannot take (under --min-face, alignment failed, "
                   "given by hand); default blur")
    g.add_argument("--min-face", type=float, default=DEFAULT_MIN_FACE, metavar="PX",
                   help=f"faces smaller than this get --cover instead of the diffusion (default {DEFAULT_MIN_FACE:g})")
    g.add_argument("--leave-small", action="store_true",
                   help="leave faces under --min-face as they were (the run then exits 1 and names them)")
    g.add_argument("--faces", choices=PHOTO_FACE_POLICIES, default="all",
                   help="treat all faces (default), or only the largest and leave the others (the run then exits 1)")
    g.add_argument("--mask-extent", choices=tuple(MASK_EXTENTS), default=DEFAULT_MASK_EXTENT,
                   help="what the diffusion replaces: face (default: skin from the jaw line to the hairline, and the "
                   "ears) or head (also the hair around the face)")
    g.add_argument("--region", action="append", default=[], metavar="X,Y,W,H",
                   help="a face given by hand, in pixels (repeatable); it gets a cover")
    g.add_argument("--regions", type=Path, metavar="FILE.json",
                   help="faces given by hand: {\"faces\": [{\"box\": [x, y, w, h]}, ...]}, as 'faceveil detect' writes")
    g.add_argument("--detector", choices=[d for d in DETECTORS if d != "precomputed"], default="centerface",
                   help="face detector (default centerface: offline, best measured recall)")
    g.add_argument("--sideways", action="store_true",
                   help="also search the photo turned a quarter each way, for faces lying on their side "
                   "(an upright detector misses them); three times the detection time")
    g.add_argument("--detect-size", type=positive_int, default=DEFAULT_TILE, metavar="PX",
                   help=f"detector tile side: the photo is searched in overlapping tiles at full size and at halving "
                   f"scales (default {DEFAULT_TILE})")


def face_policy(args: argparse.Namespace):
    from faceveil.data.photo_detect import FacePolicy

    return FacePolicy(args.method, args.cover, args.min_face, args.leave_small, args.faces, args.mask_extent,
                      pixel_recovery=getattr(args, "pixel_recovery", False))


def hand_regions(args: argparse.Namespace) -> list[np.ndarray]:
    """The boxes of ``--region`` and ``--regions`` (one line naming the bad one, before any work)."""
    from faceveil.data.photo_regions import load_regions, parse_region

    boxes = [parse_region(r) for r in args.region]
    if args.regions is not None:
        boxes += load_regions(args.regions)
    return boxes
