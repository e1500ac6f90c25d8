"""The security suite: what an attacker without the key gets out of anonymized images.

Every attack works where the key acts, on the starting noise (faceveil keys all of it; the
published method only the latent mask). The attacker knows the model, the scheme and
everything public in the files; from a file they compute the *keyed* noise (faceveil: by
inverting the re-encoded pixels, since format 2 seals the exact latents; the same-mask
scenario grants the exact state as a worst case; the published method: by inverting the
re-encoded pixels with a re-detected mask). The linking and keyless-estimation attacks are
in :mod:`faceveil.evaluate.linking` (run from :func:`run_security` as ``linking``). An attack
turns it into an estimate of the *unkeyed* noise, which is then sampled like a recovery.

Measured for each attack and target image:

- ``restored``: the fraction of the target's keyed noise entries that the attacker un-keys
  exactly as the key holder does (1 = the key stream is known for this image; 0.5 is
  chance for a sign flip, about 0 for a keyed permutation). An attack *opens* images when
  it restores at least ``opened_fraction`` on average;
- ``latent_err``: relative L2 error of the attacker's clean latent against the key holder's;
- ``psnr`` (vs the original), ``psnr_keyholder`` (vs the key holder's latent recovery)
  and the identity cosine to the original per recognizer.

Settings compared:

- ``ours``: faceveil's files (per-image nonces, 256-bit key, the configured transform);
- ``published-exact``: the published key (one sign pattern from a 32-bit torch seed for
  every image) on faceveil's exact pipeline: the key schedule's own weakness, without the
  noise of re-encoding;
- ``published``: the published method as released, from the pixels (its key holder's
  own recovery is approximate, which also blurs what an attacker gets).

Attacks: a wrong random key; the key one bit away; known plaintext (one original /
anonymized pair, image ``a``, given; open the other targets) and averaging over many images
under one key, each with the strongest estimator for the key transform: for sign flips (the
published key, faceveil's ``signflip``) the sign pattern ``sign(z'_a) * sign(z_a)`` on ``a``'s
mask, the sign of a public face average elsewhere, and ``sign(mean z') * sign(mean of public
faces' z)``; for a keyed permutation (faceveil's ``shuffle``) magnitude matching: the
permutation and signs learned by sorting the magnitudes of ``z'_a`` against ``z_a``, and of
``mean z'`` against the public faces' mean ``z`` (``estimator`` in each row names which);
for faceveil, the same-mask scenario with an entry-matching known-plaintext attack (sorting
magnitudes learns a keyed permutation exactly) under fresh nonces and under a reused
nonce, with the nonce scanner run on both sets of files; for the published key, an
exhaustive seed search (rate measured, cost for 2^32 seeds extrapolated).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceveil.evaluate.baselines import Conditioned, LatentPipe
from faceveil.evaluate.faces import EvalFace, Notes
from faceveil.evaluate.metrics import psnr

LatentFn = Callable[[torch.Tensor], torch.Tensor]


def flip_bit(key: Any, bit: int = 0) -> Any:
    """The key with one bit flipped (byte ``bit // 8``, bit ``bit % 8``)."""
    from faceveil.keys import SecretKey

    material = bytearray(key.material)
    material[bit // 8] ^= 1 << (bit % 8)
    return SecretKey(bytes(material))


# --------------------------------------------------------------------------- estimators


def masked_values(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Entries of one latent (C, h, w) inside its mask (1, h, w), channel-major (as the key sees them)."""
    return z.flatten()[mask.expand_as(z).flatten().nonzero().squeeze(1)]


def sign_estimate(z_keyed: torch.Tensor, z_clean: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sign(z') * sign(z) where ``mask`` (the key's positions in a known pair), 0 elsewhere."""
    s = torch.sign(z_keyed) * torch.sign(z_clean)
    return torch.where(mask.expand_as(s), s, torch.zeros_like(s))


def sign_attack_fn(signs: torch.Tensor, prior: torch.Tensor | None, mask_lat: torch.Tensor) -> LatentFn:
    """Un-key a batch (B, C, h, w) inside its masks: multiply by the known ``signs`` (C, h, w) where
    they are nonzero; elsewhere in the mask set the sign to ``prior`` (C, h, w) if given."""

    def fn(z: torch.Tensor) -> torch.Tensor:
        s = signs.to(z)
        known = s != 0
        guess = z * s
        if prior is not None:
            guess = torch.where(known, guess, z.abs() * prior.to(z))
        else:
            guess = torch.where(known, guess, z)
        return torch.where(mask_lat.expand_as(z), guess, z)

    return fn


@dataclass
class MatchEstimate:
    """A keyed permutation with signs learned from one pair by matching magnitudes."""

    source: torch.Tensor  # keyed entry j came from clean entry source[j]
    signs: torch.Tensor

    @classmethod
    def learn(cls, clean: torch.Tensor, keyed: torch.Tensor) -> MatchEstimate:
        order_c = torch.argsort(clean.abs(), stable=True)
        order_k = torch.argsort(keyed.abs(), stable=True)
        source = torch.empty_like(order_k)
        source[order_k] = order_c
        return cls(source, torch.sign(keyed) * torch.sign(clean[source]))

    def undo(self, keyed: torch.Tensor) -> torch.Tensor | None:
        if keyed.numel() != self.source.numel():
            return None
        out = torch.empty_like(keyed)
        out[self.source] = keyed * self.signs.to(keyed)
        return out


def match_attack_fn(est: MatchEstimate, mask_lat: torch.Tensor) -> LatentFn:
    """Apply a learned permutation to each image's masked entries (where the counts agree)."""

    def fn(z: torch.Tensor) -> torch.Tensor:
        out = z.clone()
        for i in range(z.shape[0]):
            sel = mask_lat[i].expand_as(z[i]).flatten().nonzero().squeeze(1)
            undone = est.undo(z[i].flatten()[sel])
            if undone is not None:
                out[i].view(-1)[sel] = undone
        return out

    return fn


def match_each_fn(clean_ref: torch.Tensor, keyed_ref: torch.Tensor, mask_lat: torch.Tensor) -> LatentFn:
    """Un-key each image (B, C, h, w) with the permutation learned, inside that image's mask, by
    matching the magnitudes of ``keyed_ref`` (C, h, w) to those of ``clean_ref`` (C, h, w): the
    averaging attack on a keyed permutation (mean keyed noise against public faces' mean noise)."""

    def fn(z: torch.Tensor) -> torch.Tensor:
        out = z.clone()
        for i in range(z.shape[0]):
            sel = mask_lat[i].expand_as(z[i]).flatten().nonzero().squeeze(1)
            if not sel.numel():
                continue
            est = MatchEstimate.learn(clean_ref.flatten()[sel].to(z), keyed_ref.flatten()[sel].to(z))
            out[i].view(-1)[sel] = est.undo(z[i].flatten()[sel])
        return out

    return fn


# Key transforms that permute the masked entries: a sign estimator cannot un-key them (it leaves
# every entry in the wrong place), so the known-plaintext and averaging attacks match magnitudes.
PERMUTATION_TRANSFORMS: frozenset[str] = frozenset({"shuffle"})
SIGN_ESTIMATOR = "sign flip"
MATCH_ESTIMATOR = "magnitude matching"


# --------------------------------------------------------------------------- settings


@dataclass
class Setting:
    name: str
    label: str
    pipe: LatentPipe
    faces: list[EvalFace]
    pixels: list[np.ndarray]  # what the attacker sees (anonymized)
    masks: list[np.ndarray]  # the masks sampling and pasting use (stored, or re-detected)
    c: Conditioned  # conditioning of the keyed noise
    z_true: torch.Tensor  # the anonymizer's clean noise state
    true_mask_lat: torch.Tensor  # the anonymizer's latent masks
    z_keyed: torch.Tensor  # the keyed noise state the attacker computes
    unkey: Callable[[Any], LatentFn]  # key -> the key holder's un-keying function
    key: Any
    wrong_key: Any
    one_bit_key: Any
    permutes: bool = False  # the key permutes entries (attacks match magnitudes instead of estimating signs)


class Suite:
    def __init__(self, judges: Sequence[Any], notes: Notes, opened_fraction: float = 0.9) -> None:
        self.judges = judges
        self.notes = notes
        self.opened_fraction = opened_fraction

    # ------------------------------------------------------------------ measuring
    @staticmethod
    def restored(est: torch.Tensor, legit: torch.Tensor, mask_lat: torch.Tensor) -> list[float]:
        out = []
        for i in range(est.shape[0]):
            a, b = masked_values(est[i, 0], mask_lat[i]), masked_values(legit[i, 0], mask_lat[i])
            out.append(float(torch.isclose(a.double(), b.double(), rtol=1e-6, atol=1e-7).float().mean()) if a.numel() else math.nan)
        return out

    @staticmethod
    def sign_agreement(est: torch.Tensor, true: torch.Tensor, mask: torch.Tensor) -> float:
        a, b = masked_values(est, mask), masked_values(true, mask)
        return float((torch.sign(a) == torch.sign(b)).float().mean()) if a.numel() else math.nan

    def legit(self, s: Setting) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """The key holder's un-keyed noise, recovered latents and images (the reference of every attack)."""
        noise = s.pipe.rekey(s.z_keyed, s.unkey(s.key), s.c)
        images, z0 = s.pipe.finish(noise, s.c, s.pixels, s.masks)
        return images, z0, noise

    def measure(self, s: Setting, est: torch.Tensor, legit: tuple[np.ndarray, torch.Tensor, torch.Tensor], idx: Sequence[int]) -> dict[str, Any]:
        """Sample the estimated noise (the whole batch) and score the images ``idx`` against the key holder."""
        legit_img, legit_z0, legit_noise = legit
        images, z0 = s.pipe.finish(est, s.c, s.pixels, s.masks)
        sub = list(idx)
        faces = [s.faces[i] for i in sub]
        rows: dict[str, Any] = {
            "restored": [v for i, v in enumerate(self.restored(est, legit_noise, s.c.mask_lat)) if i in sub],
            "signs_vs_true": [self.sign_agreement(est[i, 0], s.z_true[i, 0], s.true_mask_lat[i]) for i in sub],
            "latent_err": [float((z0[i] - legit_z0[i]).norm() / legit_z0[i].norm().clamp_min(1e-12)) for i in sub],
            "psnr": psnr([images[i] for i in sub], [f.image for f in faces]).tolist(),
            "psnr_keyholder": psnr([images[i] for i in sub], [legit_img[i] for i in sub]).tolist(),
            "id_cos": {},
        }
        for j in self.judges:
            e = j.embed([images[i] for i in sub], faces)
            o = j.embed([f.image for f in faces], faces)
            rows["id_cos"][j.name] = j.cosine(e, o).tolist()
        summary: dict[str, Any] = {k: _mean(v) for k, v in rows.items() if k != "id_cos"}
        summary["id_cos"] = {k: _mean(v) for k, v in rows["id_cos"].items()}
        summary["targets"] = [s.faces[i].id for i in sub]
        summary["opened"] = bool(summary["restored"] >= self.opened_fraction)
        return {"summary": summary, "per_image": rows, "images": [images[i] for i in sub]}

    # ------------------------------------------------------------------ attacks
    def run_setting(self, s: Setting, reference_noise: torch.Tensor | None) -> dict[str, Any]:
        n = len(s.faces)
        legit = self.legit(s)
        legit_noise = legit[2]
        everyone = list(range(n))
        others = list(range(1, n))
        prior = None
        if reference_noise is not None and reference_noise.shape[0] > 0:
            prior = torch.sign(reference_noise[:, 0].mean(0))
        results: dict[str, Any] = {}
        results["key holder"] = self.measure(s, legit_noise, legit, everyone)
        results["wrong random key"] = self.measure(s, s.pipe.rekey(s.z_keyed, s.unkey(s.wrong_key), s.c), legit, everyone)
        results["key one bit away"] = self.measure(s, s.pipe.rekey(s.z_keyed, s.unkey(s.one_bit_key), s.c), legit, everyone)
        if n >= 2:
            # Known plaintext: image 0's original and anonymized file are given.
            if s.permutes:
                # faceveil keys the whole noise, so the permutation spans the whole latent.
                whole = torch.ones_like(s.c.mask_lat)
                est_map = MatchEstimate.learn(masked_values(s.z_true[0, 0], whole[0]), masked_values(s.z_keyed[0, 0], whole[0]))
                est = s.pipe.rekey(s.z_keyed, match_attack_fn(est_map, whole), s.c)
                results["known plaintext (1 pair)"] = self.measure(s, est, legit, others)
            else:
                signs = sign_estimate(s.z_keyed[0, 0], s.z_true[0, 0], s.true_mask_lat[0])
                est = s.pipe.rekey(s.z_keyed, sign_attack_fn(signs, prior, s.c.mask_lat), s.c)
                results["known plaintext (1 pair)"] = self.measure(s, est, legit, others)
                results["known plaintext (1 pair)"]["signs"] = signs
        if n >= 2 and prior is not None:
            # Averaging: all targets are under one key; public faces give the mean clean noise.
            if s.permutes:
                fn = match_each_fn(reference_noise[:, 0].mean(0), s.z_keyed[:, 0].mean(0), torch.ones_like(s.c.mask_lat))
            else:
                fn = sign_attack_fn(torch.sign(s.z_keyed[:, 0].mean(0)) * prior, None, s.c.mask_lat)
            est = s.pipe.rekey(s.z_keyed, fn, s.c)
            results[f"averaging ({n} images)"] = self.measure(s, est, legit, everyone)
        for name, r in results.items():
            if name.startswith(("known plaintext", "averaging")):
                r["summary"]["estimator"] = MATCH_ESTIMATOR if s.permutes else SIGN_ESTIMATOR
        return results


def _mean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if not arr.size:
        return math.nan
    finite = arr[np.isfinite(arr)]
    return float(finite.mean()) if finite.size else float(arr[0])


# --------------------------------------------------------------------------- the suite


def _pack(setting: Setting, results: dict[str, Any]) -> dict[str, Any]:
    return {"label": setting.label, "attacks": {name: r["summary"] for name, r in results.items()}}


def run_security(
    cfg: Any,
    ours: Any | None,
    published: Any | None,
    targets: list[EvalFace],
    reference: list[EvalFace],
    ours_paths: Sequence[Path] | None,
    published_paths: Sequence[Path] | None,
    judges: Sequence[Any],
    notes: Notes,
    folder: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run every attack (see the module docstring). Returns (JSON-able results, images for figures)."""
    from faceveil.evaluate.security_settings import key_search, ours_setting, published_exact_setting, published_setting, same_mask_scenario

    suite = Suite(judges, notes, cfg.opened_fraction)
    results: dict[str, Any] = {"targets": [f.id for f in targets], "reference": [f.id for f in reference], "settings": {}}
    images: dict[str, Any] = {"targets": targets}
    if len(targets) < 2:
        notes.note("security suite: fewer than 2 target images; the known-plaintext and averaging attacks need 2")
    if ours is not None:
        pipe = LatentPipe(ours.backbone, ours.settings.scheme, ours.settings.steps)
    elif published is not None:
        pipe = LatentPipe(published.backbone, "exact", published.steps)
    else:
        return results, images
    ref_images, ref_masks = [f.image for f in reference], [f.mask for f in reference]
    ref_noise = pipe.noise(ref_images, ref_masks)[0] if reference else None
    if reference == []:
        notes.note("security suite: no public reference faces (other identities); the averaging attack is skipped")
    if ours is not None and ours_paths is not None:
        s = ours_setting(ours, targets, ours_paths, pipe)
        res = suite.run_setting(s, ref_noise)
        results["settings"]["ours"] = _pack(s, res)
        images["ours"] = {k: v["images"] for k, v in res.items()}
        images["ours_anonymized"] = s.pixels
        if len(targets) >= 2:
            scenario = same_mask_scenario(ours, targets, pipe, folder / "same-mask", suite)
            results["same_mask"] = {mode: r["summary"] for mode, r in scenario.items()}
    if published is not None:
        s = published_exact_setting(published.seed, targets, pipe)
        res = suite.run_setting(s, ref_noise)
        packed = _pack(s, res)
        if "known plaintext (1 pair)" in res:
            packed["key_search"] = key_search(res["known plaintext (1 pair)"]["signs"], published.seed)
        results["settings"]["published-exact"] = packed
        images["published-exact"] = {k: v["images"] for k, v in res.items()}
        if published_paths is not None:
            s2, found = published_setting(published, targets, published_paths)
            ref2 = published.scheme.noise(ref_images, ref_masks)[0] if reference else None
            res2 = suite.run_setting(s2, ref2)
            packed2 = _pack(s2, res2)
            packed2["mask_redetected"] = float(np.mean(found)) if found else math.nan
            if "known plaintext (1 pair)" in res2:
                packed2["key_search"] = key_search(res2["known plaintext (1 pair)"]["signs"], published.seed)
            results["settings"]["published"] = packed2
            images["published"] = {k: v["images"] for k, v in res2.items()}
            images["published_anonymized"] = s2.pixels
    if getattr(cfg, "linking", True) and len(targets) + len(reference) >= 2:
        results["linking"] = linking_suite(cfg, pipe, ours, published, targets + reference)
    return results, images


def linking_suite(cfg: Any, pipe: LatentPipe, ours: Any | None, published: Any | None, faces: list[EvalFace]) -> dict[str, Any]:
    """The linking and keyless-estimation attacks (faceveil.evaluate.linking) on the run's faces."""
    from faceveil.data.images import elliptical_mask
    from faceveil.evaluate.linking import method_settings, run_linking

    h, w = faces[0].image.shape[:2]
    images = [f.image for f in faces if f.image.shape[:2] == (h, w)]
    backgrounds = images[: max(1, int(getattr(cfg, "linking_backgrounds", 1)))]
    exact = pipe if pipe.scheme.name == "exact" else LatentPipe(pipe.backbone, "exact", pipe.schedule.steps)
    return run_linking(exact, method_settings(ours, published), images, elliptical_mask(h, w), backgrounds,
                       int(getattr(cfg, "linking_reconstruct", 0)))  # fmt: skip
