"""Linking and estimation attacks by a party without the key (threat model: DESIGN.md section 7).

Held-out cases: N real faces pasted, inside one shared face mask, into one shared background,
so candidates differ only where the face is: nothing outside the face can single one out.
Every case is anonymized by each setting; the attacker then tries to

- ``file -> original``: rank the true original first among the N candidates, from what the
  file publishes (for faceveil: pixels and a header with nothing tied to the original, so the
  attacker inverts the pixels; ``state public`` grants the exact keyed noise that format
  version 1 published), scoring the noise outside the mask (cosine), the multiset of
  magnitudes inside it and over the whole latent;
- ``file -> original (pixels)``: the same from pixel distance inside the mask;
- ``file <-> file``: link two files of one photo made under different keys (seeds);
- ``prior estimator``: recover signs as |z'| x sign(mean noise of other public faces);
  the fraction of signs right where the key acts (chance 0.5);
- ``latent reconstruction``: fit a clean latent, by gradient descent through DDIM inversion,
  to the values the keying leaves the original's own (noise outside the mask, magnitudes
  inside), then rank the candidates by their distance to it.

Ranks are 1-based; ``top1`` is the rate of true matches ranked first (chance 1/N) and
``mean_rank`` its mean (chance (N + 1) / 2). Settings: faceveil with each key transform
(whole noise keyed, per-file nonces) and the published key (sign flip inside the mask, one
seed for every image) on the same exact pipeline, so only the keying differs.

Command line: ``python -m faceveil.evaluate.linking --out runs/linking`` (tiny backbone,
the bundled sample faces; see ``--help``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from faceveil.evaluate.baselines import LatentPipe, sign_key_fn

LatentFn = Callable[[torch.Tensor], torch.Tensor]
KeyFnFactory = Callable[[torch.Tensor, int], LatentFn]  # (latent masks, variant 0/1) -> keying function


def paste_cases(faces: Sequence[np.ndarray], mask: np.ndarray, background: np.ndarray) -> list[np.ndarray]:
    """Each face inside ``mask`` over one shared ``background``."""
    return [np.where(mask[..., None], f, background) for f in faces]


def ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of the true match (the diagonal) in each row of a (N, N) score matrix (higher = closer)."""
    diag = np.diag(scores)[:, None]
    return 1 + (scores > diag).sum(1) + 0.5 * ((scores == diag).sum(1) - 1)  # ties share the rank


def summarize(r: np.ndarray, n: int | None = None) -> dict[str, float]:
    """Top-1 rate and mean rank of true matches among ``n`` candidates (default: len(r))."""
    n = len(r) if n is None else n
    return {"top1": float(np.mean(r == 1)), "mean_rank": float(np.mean(r)), "chance_top1": 1.0 / n, "chance_mean_rank": (n + 1) / 2}


def _flat(z: torch.Tensor) -> torch.Tensor:
    return z.reshape(z.shape[0], -1).double()


def noise_scores(a: torch.Tensor, b: torch.Tensor, inside: torch.Tensor) -> dict[str, np.ndarray]:
    """Similarity of every noise in ``a`` (N, C, h, w) to every one in ``b``, per feature."""
    sel_in = inside.expand(a.shape[1:]).reshape(-1)
    fa, fb = _flat(a), _flat(b)
    out: dict[str, np.ndarray] = {}
    if (~sel_in).any():
        oa, ob = fa[:, ~sel_in], fb[:, ~sel_in]
        oa, ob = oa / oa.norm(dim=1, keepdim=True), ob / ob.norm(dim=1, keepdim=True)
        out["noise outside the mask"] = (oa @ ob.T).numpy()
    ma, mb = fa[:, sel_in].abs().sort(1).values, fb[:, sel_in].abs().sort(1).values
    out["magnitudes inside the mask"] = -torch.cdist(ma, mb).numpy()
    wa, wb = fa.abs().sort(1).values, fb.abs().sort(1).values
    out["magnitudes, whole latent"] = -torch.cdist(wa, wb).numpy()
    return out


def pixel_scores(a: Sequence[np.ndarray], b: Sequence[np.ndarray], mask: np.ndarray) -> np.ndarray:
    fa = torch.from_numpy(np.stack([x[mask] for x in a]).reshape(len(a), -1).astype(np.float64))
    fb = torch.from_numpy(np.stack([x[mask] for x in b]).reshape(len(b), -1).astype(np.float64))
    return -torch.cdist(fa, fb).numpy()


@dataclass
class Setting:
    name: str
    label: str
    key_fn: KeyFnFactory  # keyed bijection for variant 0 (the file) or 1 (a second key)
    region: str  # where the key acts: "whole" or "mask"


def _keyed(pipe: LatentPipe, cases: list[np.ndarray], masks: list[np.ndarray], noise: torch.Tensor, c: Any, fn: LatentFn):
    keyed = pipe.rekey(noise, fn, c)
    images, z0 = pipe.finish(keyed, c, cases, masks)
    return keyed, [np.ascontiguousarray(x) for x in images], z0


def prior_estimates(keyed: torch.Tensor, true: torch.Tensor, where: torch.Tensor) -> dict[str, float]:
    """The keyless estimate |z'_i| x sign(prior) of each original noise z_i, where the key acts.

    The prior is the mean noise of the other (public) faces. ``signs_right`` comes from the prior
    alone (|z'| >= 0), so what a file adds is the value error with its own magnitudes
    (``rel_error``) against that with the other files' magnitudes (``rel_error_other_files``).
    """
    n = true.shape[0]
    sel = where.expand_as(true[0])
    own, other, signs = [], [], []
    for i in range(n):
        z = true[i][sel].double()
        s = torch.sign(torch.cat([true[:i], true[i + 1 :]]).mean(0)[sel]).double()
        err = [float((keyed[j][sel].abs().double() * s - z).norm() / z.norm()) for j in range(n)]
        own.append(err[i])
        other.append(float(np.mean(err[:i] + err[i + 1 :])))
        signs.append(float((s == torch.sign(z)).double().mean()))
    return {"signs_right": float(np.mean(signs)), "rel_error": float(np.mean(own)), "rel_error_other_files": float(np.mean(other))}


def reconstruct(pipe: LatentPipe, pixels: list[np.ndarray], masks: list[np.ndarray], keyed: torch.Tensor, iters: int, lr: float = 0.05) -> torch.Tensor:
    """Fit clean latents whose DDIM-inverted noise matches the public keyed noise where the
    published keying leaves it the original's own: outside the mask, and |z| inside."""
    from faceveil.models.inversion import make_scheme

    ddim = make_scheme("ddim", pipe.schedule)
    c = pipe.condition(pixels, masks)
    with torch.no_grad():
        z0 = pipe.backbone.encode(c.x).float()
    inside = c.mask_lat.expand_as(z0)
    target = keyed.float()
    delta = torch.zeros_like(z0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    for _ in range(iters):
        opt.zero_grad()
        z = z0 + torch.where(inside, delta, torch.zeros_like(delta))
        noise = ddim.invert(z.unsqueeze(1), c.eps)[:, 0]
        loss = ((noise - target)[~inside] ** 2).sum() + ((noise.abs() - target.abs())[inside] ** 2).sum()
        loss.backward()
        opt.step()
    return (z0 + torch.where(inside, delta, torch.zeros_like(delta))).detach()


def _ranked(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: ranks(sc) for name, sc in features.items()}


def pair_invariants(state: torch.Tensor) -> torch.Tensor:
    """(N, 3): the norms of both halves of a (N, 2, C, h, w) scheme state and their inner product.
    One keyed rotation applied to both halves keeps all three."""
    f = state.reshape(state.shape[0], 2, -1).double()
    return torch.stack([f[:, 0].norm(dim=1), f[:, 1].norm(dim=1), (f[:, 0] * f[:, 1]).sum(1)], 1)


def _trial(pipe: LatentPipe, attackers: dict[str, LatentPipe], settings: Sequence[Setting], cases: list[np.ndarray],
           mask: np.ndarray, reconstruct_iters: int) -> dict[str, dict[str, Any]]:
    """One background: per setting and attack, the true match's rank per feature (or estimates)."""
    masks = [mask] * len(cases)
    true_noise, c = pipe.noise(cases, masks)
    true_x = true_noise[:, 0]
    inside = c.mask_lat[0]
    cand = {name: a.noise(cases, masks)[0][:, 0] for name, a in attackers.items()}
    with torch.no_grad():
        clean_lat = pipe.backbone.encode(c.x).double()
    fp = attackers["fixed-point"]
    out: dict[str, dict[str, Any]] = {}
    for s in settings:
        keyed, anon, anon_z0 = _keyed(pipe, cases, masks, true_noise, c, s.key_fn(c.mask_lat, 0))
        _, anon2, _ = _keyed(pipe, cases, masks, true_noise, c, s.key_fn(c.mask_lat, 1))
        where = torch.ones_like(inside) if s.region == "whole" else inside
        granted = noise_scores(keyed[:, 0], true_x, inside)
        if keyed.shape[1] == 2 and true_noise.shape[1] == 2:
            granted["norms and inner product of both halves"] = -torch.cdist(pair_invariants(keyed), pair_invariants(true_noise)).numpy()
        row: dict[str, Any] = {
            "file -> original (state public)": _ranked(granted),
            "prior estimator (state public)": prior_estimates(keyed[:, 0], true_x, where),
        }
        # An autoencoder that inverts the decoder exactly: the strongest attacker from pixels.
        cz = fp.condition(anon, masks)
        ideal = fp.scheme.invert(fp.scheme.lift(anon_z0.to(cand["fixed-point"]), cz.eps), cz.eps)[:, 0]
        row["file -> original (ideal re-encoding)"] = _ranked(noise_scores(ideal, cand["fixed-point"], inside))
        to_orig: dict[str, np.ndarray] = {}
        pair: dict[str, np.ndarray] = {"pixels inside the mask": pixel_scores(anon, anon2, mask)}
        for name, a in attackers.items():
            seen = a.noise(anon, masks)[0][:, 0]  # what a keyless party computes from the pixels
            seen2 = a.noise(anon2, masks)[0][:, 0]
            to_orig.update({f"{k} ({name})": v for k, v in noise_scores(seen, cand[name], inside).items()})
            pair.update({f"{k} ({name})": v for k, v in noise_scores(seen, seen2, inside).items()})
            if name == "exact":
                row["prior estimator"] = prior_estimates(seen, true_x, where)
                exact_seen = seen
        row["file -> original"] = _ranked(to_orig)
        row["file -> original (pixels)"] = _ranked({"pixels inside the mask": pixel_scores(anon, cases, mask)})
        row["file <-> file (two keys)"] = _ranked(pair)
        if reconstruct_iters:
            fit = reconstruct(pipe, anon, masks, exact_seen, reconstruct_iters).double()
            sel = inside.expand_as(fit[0]).reshape(-1)
            with torch.no_grad():
                base = pipe.backbone.encode(pipe.condition(anon, masks).x).double()
            row["latent reconstruction"] = _ranked({
                "fitted latent": -torch.cdist(_flat(fit)[:, sel], _flat(clean_lat)[:, sel]).numpy(),
                "anonymized latent (no fit)": -torch.cdist(_flat(base)[:, sel], _flat(clean_lat)[:, sel]).numpy(),
            })  # fmt: skip
        out[s.name] = row
    return out


def run_linking(
    pipe: LatentPipe,
    settings: Sequence[Setting],
    faces: Sequence[np.ndarray],
    mask: np.ndarray,
    backgrounds: Sequence[np.ndarray],
    reconstruct_iters: int = 0,
) -> dict[str, Any]:
    """Every attack of the module docstring, on the cases made from ``faces`` over each background
    in turn (ranks pooled over backgrounds).

    From pixels the attacker inverts with the exact scheme, plain DDIM and fixed-point DDIM
    (stabler under re-encoding error) and keeps whichever feature links best.
    """
    attackers = {name: LatentPipe(pipe.backbone, name, pipe.schedule.steps) for name in ("ddim", "fixed-point")}
    attackers = {"exact": pipe, **attackers}
    trials = [_trial(pipe, attackers, settings, paste_cases(faces, mask, bg), mask, reconstruct_iters) for bg in backgrounds]
    results: dict[str, Any] = {"cases": len(faces), "backgrounds": len(backgrounds), "settings": {}}
    for s in settings:
        row: dict[str, Any] = {"label": s.label, "key_region": s.region}
        for attack, first in trials[0][s.name].items():
            if "signs_right" in first:
                row[attack] = {k: float(np.mean([t[s.name][attack][k] for t in trials])) for k in first}
            else:
                pooled = {f: np.concatenate([t[s.name][attack][f] for t in trials]) for f in first}
                per = {f: summarize(r, len(faces)) for f, r in pooled.items()}
                best = min(per, key=lambda k: (-per[k]["top1"], per[k]["mean_rank"]))
                row[attack] = {**per[best], "feature": best, "features": per}
        results["settings"][s.name] = row
    return results


def standard_settings(backbone: Any, steps: int, seed: int, transforms: Sequence[str] = ("rotation", "shuffle", "signflip")) -> list[Setting]:
    """faceveil with each transform (fresh keys and nonces) and the published key (seeds ``seed``, ``seed + 1``)."""
    from faceveil.keys import SecretKey, new_nonce
    from faceveil.models.pipeline import Anonymizer
    from faceveil.models.settings import Settings

    out = []
    for t in transforms:
        an = Anonymizer(backbone, Settings("exact", steps, t))
        keys = [SecretKey.generate(), SecretKey.generate()]

        def factory(mask_lat: torch.Tensor, variant: int, an: Anonymizer = an, keys: list = keys) -> LatentFn:
            nonces = [new_nonce() for _ in range(mask_lat.shape[0])]
            return an.key_fn(mask_lat, keys[variant], nonces)

        insecure = " (insecure: published transform)" if t == "signflip" else ""
        out.append(Setting(f"ours-{t}", f"faceveil, {t}{insecure}, whole noise, per-file nonces", factory, "whole"))
    out.append(Setting("published", "published key: sign flip inside the mask, one 32-bit seed",
                       lambda m, v: sign_key_fn(seed + v, m), "mask"))  # fmt: skip
    return out


def method_settings(ours: Any | None, published: Any | None) -> list[Setting]:
    """The evaluation's own methods: faceveil with its key (and a second one), the published seed."""
    from faceveil.keys import SecretKey, new_nonce

    out = []
    if ours is not None:
        keys = [ours.key, SecretKey.generate()]

        def factory(mask_lat: torch.Tensor, variant: int) -> LatentFn:
            return ours.anonymizer.key_fn(mask_lat, keys[variant], [new_nonce() for _ in range(mask_lat.shape[0])])

        out.append(Setting("ours", f"faceveil ({ours.settings.transform}, whole noise, per-file nonces)", factory, "whole"))
    if published is not None:
        out.append(Setting("published", "published key: sign flip inside the mask, one 32-bit seed",
                           lambda m, v: sign_key_fn(published.seed + v, m), "mask"))  # fmt: skip
    return out


def sample_faces(folder: Any, size: int) -> list[np.ndarray]:
    """The bundled sample set's aligned faces (16: 8 people, each also mirrored) at ``size`` px."""
    from faceveil.data.sample_set import build_sample_shards
    from faceveil.evaluate.faces import Notes, _from_shards

    shards = build_sample_shards(folder, size=size)
    return [f.image for f in _from_shards(sorted(str(p) for p in shards.glob("*.tar")), Notes())]


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    from pathlib import Path

    from faceveil.data.images import elliptical_mask
    from faceveil.evaluate.jsonio import write_json
    from faceveil.evaluate.linking_report import linking_markdown
    from faceveil.models.backbones import load_backbone

    p = argparse.ArgumentParser(prog="python -m faceveil.evaluate.linking", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for linking.json (and the sample shards)")
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--size", type=int, default=64, help="face crop size (a multiple of the backbone's)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=20251001, help="the published key's seed")
    p.add_argument("--reconstruct", type=int, default=40, help="gradient steps of the reconstruction attack (0: skip)")
    p.add_argument("--backgrounds", type=int, default=2, help="trials, each with another sample face as the shared background")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    faces = sample_faces(args.out / "samples", args.size)
    backbone = load_backbone(args.backbone, device="cpu")
    pipe = LatentPipe(backbone, "exact", args.steps)
    res = run_linking(pipe, standard_settings(backbone, args.steps, args.seed), faces,
                      elliptical_mask(args.size, args.size), faces[: args.backgrounds], args.reconstruct)  # fmt: skip
    res["command"] = "python -m faceveil.evaluate.linking " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    write_json(args.out / "linking.json", res)
    print(linking_markdown(res))
    print(json.dumps({"cases": res["cases"], "out": str(args.out / "linking.json")}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
