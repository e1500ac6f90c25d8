"""The security suite's settings as an attacker sees them, the published seed search and the nonce-reuse scenario."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceveil.evaluate.baselines import LatentPipe, seed_signs, sign_key_fn
from faceveil.evaluate.faces import EvalFace
from faceveil.evaluate.nonces import scan_nonces
from faceveil.evaluate.security import (
    PERMUTATION_TRANSFORMS, LatentFn, MatchEstimate, Setting, Suite, flip_bit, masked_values, match_attack_fn,
)  # fmt: skip


def file_nonces(path: Path) -> bytes:
    """The (single) face nonce a faceveil file publishes."""
    from faceveil.fileformat import read_header

    header = read_header(path) or {}
    return bytes.fromhex(header["faces"][0]["nonce"] if header.get("version", 2) >= 2 else header["nonce"])


def ours_setting(ours: Any, faces: list[EvalFace], paths: Sequence[Path], pipe: LatentPipe, state_public: bool = False) -> Setting:
    """faceveil's files as an attacker reads them: no key, so only the pixels and the public header
    (the exact state is sealed). The attacker is granted the true masks, and with ``state_public``
    the exact sealed state too (the worst case: as if it leaked)."""
    from faceveil.evaluate.methods import read_pixels
    from faceveil.keys import SecretKey

    pixels = [read_pixels(p) for p in paths]
    masks = [f.mask for f in faces]
    if state_public:
        # Files since version 3 hold no state at all; the leak is simulated with the in-memory result.
        c = pipe.condition(pixels, masks)
        z_keyed = pipe.invert_state(torch.stack([ours.written[Path(p)].state for p in paths]), c)
    else:
        z_keyed, c = pipe.noise(pixels, masks)
    z_true, c0 = pipe.noise([f.image for f in faces], masks)
    nonces = [file_nonces(p) for p in paths]

    def unkey(key: Any) -> LatentFn:
        return ours.anonymizer.key_fn(c.mask_lat, key, nonces, inverse=True)

    return Setting(
        "ours", f"faceveil ({ours.settings.transform}, per-image nonces, 256-bit key)", pipe, faces,
        pixels, masks, c, z_true, c0.mask_lat, z_keyed, unkey,
        ours.key, SecretKey.generate(), flip_bit(ours.key), ours.settings.transform in PERMUTATION_TRANSFORMS,
    )  # fmt: skip


def _other_seed(seed: int) -> int:
    rng = np.random.default_rng(seed)
    while True:
        other = int(rng.integers(0, 2**32))
        if other not in (seed, seed ^ 1):
            return other


def published_exact_setting(seed: int, faces: list[EvalFace], pipe: LatentPipe) -> Setting:
    """The published key schedule (one 32-bit seed's signs for every image) on faceveil's exact pipeline."""
    images, masks = [f.image for f in faces], [f.mask for f in faces]
    z_true, c = pipe.noise(images, masks)
    z_keyed = pipe.rekey(z_true, sign_key_fn(seed, c.mask_lat), c)
    return Setting(
        "published-exact", "published key (32-bit seed sign flip) on exact latents", pipe, faces, images, masks, c,
        z_true, c.mask_lat, z_keyed, lambda sd: sign_key_fn(sd, c.mask_lat), seed, _other_seed(seed), seed ^ 1,
    )  # fmt: skip


def published_setting(published: Any, faces: list[EvalFace], paths: Sequence[Path]) -> tuple[Setting, list[bool]]:
    """The published method as released: keyed noise from the re-encoded pixels and a re-detected mask."""
    from faceveil.evaluate.methods import read_pixels

    scheme = published.scheme
    pixels = [read_pixels(p) for p in paths]
    masks, found = scheme.detect_masks(pixels, [f.mask for f in faces])
    z_keyed, c = scheme.noise(pixels, masks)
    z_true, c0 = scheme.noise([f.image for f in faces], [f.mask for f in faces])
    seed = published.seed
    setting = Setting(
        "published", "published method as released (pixels, DDIM, re-detected mask)", scheme, faces, pixels, masks, c,
        z_true, c0.mask_lat, z_keyed, lambda sd: sign_key_fn(sd, c.mask_lat), seed, _other_seed(seed), seed ^ 1,
    )  # fmt: skip
    return setting, found


def key_search(signs: torch.Tensor, seed: int, window: int = 1024, timing: int = 512) -> dict[str, Any]:
    """Exhaustive search of the 32-bit seed from a known pair's sign estimate.

    Scores candidate seeds by their sign agreement with the estimate; measures the rate and
    extrapolates to all 2^32 seeds; checks that the true seed ranks first in a window around it.
    """
    signs = signs.detach().cpu()
    known = signs != 0
    target = signs[known]

    def score(candidate: int) -> float:
        k = seed_signs(candidate, signs.shape)
        return float((k[known] == target).float().mean())

    t0 = time.perf_counter()
    for c in range(timing):
        score(c)
    rate = timing / max(time.perf_counter() - t0, 1e-9)
    lo = max(0, seed - window // 2)
    candidates = list(range(lo, min(2**32, lo + window)))
    scores = {c: score(c) for c in candidates}
    ranked = sorted(candidates, key=lambda c: -scores[c])
    best_wrong = max((v for c, v in scores.items() if c != seed), default=math.nan)
    return {
        "seeds_per_second": rate,
        "hours_for_2^32_one_core": 2**32 / rate / 3600,
        "window": [candidates[0], candidates[-1]],
        "true_seed_rank": ranked.index(seed) + 1 if seed in scores else None,
        "true_seed_agreement": scores.get(seed, math.nan),
        "best_wrong_agreement": best_wrong,
        "found": bool(ranked and ranked[0] == seed and scores[seed] > best_wrong),
    }


def same_mask_scenario(ours: Any, faces: list[EvalFace], pipe: LatentPipe, folder: Path, suite: Suite) -> dict[str, Any]:
    """faceveil's ``shuffle`` with one mask for all images (the CLI's default ellipse), the exact
    state granted (as if it leaked): an attacker who knows one pair learns its keyed permutation
    exactly by sorting magnitudes. Under fresh nonces that is worthless for the other images;
    under a reused nonce it opens them. The nonce scanner runs on both sets of files."""
    from types import SimpleNamespace

    from faceveil.data.images import elliptical_mask
    from faceveil.fileformat import write_veiled
    from faceveil.keys import new_nonce
    from faceveil.models.pipeline import Anonymizer
    from faceveil.models.settings import Settings

    settings = Settings(ours.settings.scheme, ours.settings.steps, "shuffle", ours.settings.residual)
    ours = SimpleNamespace(anonymizer=Anonymizer(ours.backbone, settings), key=ours.key, settings=settings, written={})

    h, w = faces[0].image.shape[:2]
    ell = elliptical_mask(h, w)
    same = [f.__class__(f.id, f.image, ell, f.label, f.source, f.relpath, f.landmarks5, f.landmarks) for f in faces]
    out: dict[str, Any] = {}
    for mode in ("fresh nonces", "reused nonce"):
        sub = folder / mode.split()[0]
        paths = [sub / f"{f.id}.png" for f in same]
        # Always made anew: the state this scenario grants lives in memory (files hold none).
        nonces = None if mode == "fresh nonces" else [new_nonce()] * len(same)
        veiled = ours.anonymizer.anonymize([f.image for f in same], [f.mask for f in same], ours.key, nonces=nonces,
                                              allow_caller_nonces=True, allow_nonce_reuse=True)
        for v, p in zip(veiled, paths):
            write_veiled(p, v, ours.key)
            ours.written[p] = v
        scan = scan_nonces([sub])
        s = ours_setting(ours, same, paths, pipe, state_public=True)
        nonces = [file_nonces(p) for p in paths]
        whole = torch.ones_like(s.c.mask_lat)  # faceveil keys the whole noise
        est_map = MatchEstimate.learn(masked_values(s.z_true[0, 0], whole[0]), masked_values(s.z_keyed[0, 0], whole[0]))
        est = pipe.rekey(s.z_keyed, match_attack_fn(est_map, whole), s.c)
        result = suite.measure(s, est, suite.legit(s), list(range(1, len(same))))
        result["summary"]["nonce_scan"] = scan.to_dict()
        result["summary"]["nonces_distinct"] = len(set(nonces))
        out[mode] = result
    return out
