"""``report.md`` and the figures of an evaluation run (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

ARROWS = {"down": "↓", "up": "↑"}


# --------------------------------------------------------------------------- formatting


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, str):
        return {"inf": "∞", "-inf": "-∞"}.get(x, x)
    if isinstance(x, dict):  # a summary
        if x.get("n", 0) == 0:
            return "—"
        mean = x.get("mean")
        text = fmt(mean, digits)
        if x.get("n_inf") and mean is not None and not (isinstance(mean, float) and math.isinf(mean)) and mean not in ("inf", "-inf"):
            text += f" ({x['n_inf']}/{x['n']} exact)"
        return text
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(f):
        return "—"
    if math.isinf(f):
        return "∞" if f > 0 else "-∞"
    if f != 0 and abs(f) < 10 ** (-digits):
        return f"{f:.1e}"
    return f"{f:.{digits}f}"


def pct(x: Any) -> str:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return "—"
    return "—" if math.isnan(f) else f"{100 * f:.1f} %"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


# --------------------------------------------------------------------------- the report


def main_table(m: dict[str, Any]) -> str:
    judges = m["recognizers"]
    j = judges[0]
    far = pct(m["config"]["pairs"]["far"])
    header = [
        "Method", f"ID cos anon↔orig ↓ ({j})", f"TAR@FAR {far} anon ↓", "Rank-1 anon ↓", "FID ↓", "Detected ↑",
        "Drift ↓", "Outside mask unchanged", "Rec. PSNR ↑", "Rec. SSIM ↑", "Rec. LPIPS ↓", "Rec. ID cos ↑", "TAR rec ↑",
    ]  # fmt: skip
    clean = m["clean"]
    rows = [[
        "*clean originals*", "1.000", pct(_get(clean, "verification", j, "tar")), pct(_get(clean, "rank1", j)), "—",
        pct(clean.get("detection_rate")), "0.000", "—", "—", "—", "—", "—", "—",
    ]]  # fmt: skip
    for name, r in m["methods"].items():
        rec = _get(r, "recovery", "file") or {}
        rows.append([
            f"**{name}**",
            fmt(_get(r, "anonymized", "id_cos", j)),
            pct(_get(r, "verification", j, "anonymized", "tar")),
            pct(_get(r, "rank1", j, "anonymized")),
            fmt(_get(r, "fid", "fid"), 2),
            pct(_get(r, "anonymized", "detection_rate")),
            fmt(_get(r, "anonymized", "landmark_drift")),
            pct(_get(r, "anonymized", "outside_unchanged")),
            fmt(rec.get("psnr"), 2) if rec else "n/a",
            fmt(rec.get("ssim")) if rec else "n/a",
            fmt(rec.get("lpips")) if rec else "n/a",
            fmt(_get(rec, "id_cos", j)) if rec else "n/a",
            pct(_get(r, "verification", j, "recovered:file", "tar")) if rec else "n/a",
        ])  # fmt: skip
    return table(header, rows)


def identity_tables(m: dict[str, Any]) -> str:
    parts = []
    far = pct(m["config"]["pairs"]["far"])
    for j in m["recognizers"]:
        v = _get(m, "clean", "verification", j) or {}
        head = f"#### {j}\n\nClean pairs: TAR {pct(v.get('tar'))} at FAR {pct(v.get('far'))} (target {far}), threshold {fmt(v.get('threshold'), 4)}, AUC {fmt(v.get('auc'))}, rank-1 {pct(_get(m, 'clean', 'rank1', j))}."
        header = ["Method", "cos anon↔orig ↓", "TAR anon ↓", "AUC anon", "Rank-1 anon ↓", "cos rec↔orig ↑", "TAR rec ↑", "Rank-1 rec ↑"]
        rows = []
        for name, r in m["methods"].items():
            rec = r.get("recoverable")
            rows.append([
                name,
                fmt(_get(r, "anonymized", "id_cos", j)),
                pct(_get(r, "verification", j, "anonymized", "tar")),
                fmt(_get(r, "verification", j, "anonymized", "auc")),
                pct(_get(r, "rank1", j, "anonymized")),
                fmt(_get(r, "recovery", "file", "id_cos", j)) if rec else "n/a",
                pct(_get(r, "verification", j, "recovered:file", "tar")) if rec else "n/a",
                pct(_get(r, "rank1", j, "recovered:file")) if rec else "n/a",
            ])  # fmt: skip
        parts.append(head + "\n\n" + table(header, rows))
    return "\n\n".join(parts)


def recovery_table(m: dict[str, Any]) -> str:
    from faceveil.evaluate.run import variant_label

    judges = m["recognizers"]
    header = ["Method", "File", "PSNR ↑", "SSIM ↑", "LPIPS ↓", "Pixel-exact", "Latent error ↓", *[f"ID cos ({j}) ↑" for j in judges], f"TAR ({judges[0]}) ↑", "Outside mask kept", "Mask re-detected"]
    rows = []
    for name, r in m["methods"].items():
        for v, rec in (r.get("recovery") or {}).items():
            rows.append([
                name, variant_label(v), fmt(rec["psnr"], 2), fmt(rec["ssim"]), fmt(rec["lpips"]), pct(rec["exact"]),
                fmt(rec["latent_err"], 4), *[fmt(_get(rec, "id_cos", j)) for j in judges],
                pct(_get(r, "verification", judges[0], f"recovered:{v}", "tar")),
                pct(rec.get("outside_unchanged")),
                pct(rec.get("mask_redetected")) if "mask_redetected" in rec else "stored",
            ])  # fmt: skip
    return table(header, rows) if rows else "_No recoverable method ran._"


def quality_table(m: dict[str, Any]) -> str:
    header = ["Method", "PSNR anon↔orig", "SSIM anon↔orig", "LPIPS anon↔orig", "FID ↓", "KID ↓", "Detected ↑", "Landmark drift ↓", "Outside mask unchanged", "Max |Δ| outside"]
    rows = []
    for name, r in m["methods"].items():
        a = r["anonymized"]
        rows.append([
            name, fmt(a["psnr"], 2), fmt(a["ssim"]), fmt(a["lpips"]), fmt(_get(r, "fid", "fid"), 2), fmt(_get(r, "fid", "kid"), 4),
            pct(a["detection_rate"]), fmt(a["landmark_drift"]), pct(a["outside_unchanged"]), str(a["outside_max_abs"]),
        ])  # fmt: skip
    return table(header, rows)


def diversity_table(m: dict[str, Any]) -> str:
    d = m.get("diversity") or {}
    judges = m["recognizers"]
    header = ["Method", *[f"pairwise ID cos ({j}) ↓" for j in judges], *[f"cos to original ({j}) ↓" for j in judges], "pairwise LPIPS ↑", "pairwise PSNR ↓"]
    rows = []
    for name in m["methods"]:
        r = d.get(name)
        if not isinstance(r, dict):
            continue
        label = name if r.get("keyed") else f"{name} (no key)"
        rows.append([label, *[fmt(_get(r, "pairwise_id_cos", j)) for j in judges], *[fmt(_get(r, "id_cos_to_original", j)) for j in judges],
                     fmt(r.get("pairwise_lpips")), fmt(r.get("pairwise_psnr"), 2)])  # fmt: skip
    if not rows:
        return "_Diversity was not measured._"
    return f"One face ({', '.join(d.get('faces', []))}) under {d.get('keys')} keys.\n\n" + table(header, rows)


def security_tables(m: dict[str, Any]) -> str:
    s = m.get("security") or {}
    if not s.get("settings"):
        return "_The security suite did not run._"
    j = m["recognizers"][0]
    header = ["Setting", "Attack", "Key stream restored", "Signs vs true noise", "Latent err vs key holder", "PSNR vs original", "PSNR vs key holder", f"ID cos ({j})", "Opens images?"]
    rows = []
    for sname, setting in s["settings"].items():
        for aname, a in setting["attacks"].items():
            rows.append([
                sname, aname + (f" [{a['estimator']}]" if a.get("estimator") else ""), pct(a.get("restored")), pct(a.get("signs_vs_true")), fmt(a.get("latent_err")), fmt(a.get("psnr"), 2),
                fmt(a.get("psnr_keyholder"), 2), fmt(_get(a, "id_cos", j)), "**yes**" if a.get("opened") else "no",
            ])  # fmt: skip
    intro = (
        f"Targets: {', '.join(s.get('targets', []))}; public reference faces (other identities): {len(s.get('reference', []))}. "
        "Every attack works on the starting noise the key acts on. *Key stream restored*: the share of a target's keyed noise entries "
        "that the attacker un-keys exactly as the key holder does (0.5 is chance for a sign flip, about 0 for a keyed permutation); "
        "an attack *opens* images at 90 % or more. *Signs vs true noise*: sign agreement with the noise the anonymizer started from "
        "(below 1 for the key holder when recovery is approximate). Known plaintext: the first target's original and anonymized image "
        "are given, the others are attacked. Averaging: all targets are under one key, against public faces' mean noise. Both use the "
        "strongest estimator for the key transform (in brackets): sign flip for sign keys, magnitude matching for a keyed permutation. "
        "Pixel and identity columns only mean something on a trained backbone."
    )
    parts = [intro, table(header, rows)]
    legend = "\n".join(f"- `{k}`: {v['label']}" + (f"; mask re-detected on {pct(v['mask_redetected'])} of the anonymized images" if "mask_redetected" in v else "") for k, v in s["settings"].items())
    if "published" in s["settings"]:
        legend += ("\n\nThe as-released rows depend on how well the autoencoder round-trips the 8-bit pixels: where it does "
                   "(a trained backbone), they approach the exact-latent rows; where it does not, even the key holder's recovery is approximate.")
    parts.append(legend)
    sm = s.get("same_mask")
    if sm:
        rows = []
        for mode, a in sm.items():
            scan = a.get("nonce_scan", {})
            rows.append([mode, str(a.get("nonces_distinct")), f"{scan.get('reused_nonces', 0)} reused nonce(s), {scan.get('files_sharing_a_nonce', 0)} files flagged",
                         pct(a.get("restored")), fmt(a.get("latent_err")), "**yes**" if a.get("opened") else "no"])  # fmt: skip
        parts.append(
            "**Nonce reuse.** faceveil with one mask for every image (the CLI's default ellipse); the attacker knows one "
            "(original, anonymized) pair and learns its keyed permutation exactly by sorting magnitudes, then applies it to the other images.\n\n"
            + table(["Nonces", "Distinct nonces", "Nonce scanner", "Key stream restored", "Latent err vs key holder", "Opens images?"], rows)
        )
    if s.get("linking"):
        from faceveil.evaluate.linking_report import linking_markdown

        parts.append(linking_markdown(s["linking"]))
    ks = [(k, v["key_search"]) for k, v in s["settings"].items() if "key_search" in v]
    if ks:
        rows = [[k, f"{v['seeds_per_second']:.0f}", fmt(v["hours_for_2^32_one_core"], 1), str(v["true_seed_rank"]), fmt(v["true_seed_agreement"]),
                 fmt(v["best_wrong_agreement"]), "**yes**" if v["found"] else "no"] for k, v in ks]  # fmt: skip
        parts.append(
            "**Exhaustive search of the published 32-bit seed** from one known pair (score: agreement of a seed's signs with the pair's sign estimate; "
            "window of 1,024 seeds around the true one; faceveil's key space is 2^256).\n\n"
            + table(["Setting", "Seeds / s (one core)", "Hours for all 2^32", "True seed's rank", "True seed's agreement", "Best wrong seed's agreement", "Found?"], rows)
        )
    return "\n\n".join(parts)


def render(m: dict[str, Any], figures: dict[str, str]) -> str:
    cfg = m["config"]
    d = m["data"]
    mdl = cfg["model"]
    lines = [
        f"# faceveil evaluation: {m['name']}",
        "",
        f"Backbone `{mdl['backbone']}`" + (f", adapters `{mdl['adapter']}`" if mdl.get("adapter") else "") +
        f"; scheme `{mdl['scheme']}`, {mdl['steps']} steps, transform `{mdl['transform']}`; "
        f"published baseline: seed-keyed sign flip, plain DDIM, {cfg['published']['steps'] or mdl['steps']} steps, mask re-detected by dlib.",
        f"Data: `{cfg['data']['source']}`" + (f" `{cfg['data']['path']}`" if cfg["data"].get("path") else "") +
        f", {cfg['data']['size']} px crops; {d['probes']} anonymized faces (probes), {d['references']} clean references, "
        f"{d['genuine_pairs']} genuine / {d['impostor_pairs']} impostor pairs; {d['skipped_inputs']} inputs skipped.",
        f"Recognizers: {', '.join(f'`{r}`' for r in m['recognizers'])}. Key fingerprint `{m['key_fingerprint']}`. "
        f"Run time {m['seconds']} s ({m['torch_threads']} torch threads).",
        "",
        "## Main results",
        "",
        main_table(m),
        "",
        "ID cos: cosine between the embeddings of the anonymized (or recovered) face and the original, first recognizer. "
        "TAR: genuine pairs (clean reference, probe) accepted at the threshold that gives the target FAR on *clean* pairs. "
        "Rank-1: probes identified against a gallery of one clean reference per identity. Detected / drift: dlib finds the face "
        "where the original's was / mean landmark displacement in inter-ocular distances. Rec.: recovery with the key from the saved, untouched file.",
        "",
    ]
    if "grid" in figures:
        lines += [f"![image grid]({figures['grid']})", ""]
    lines += ["## Identity (every recognizer)", "", identity_tables(m), ""]
    for k in sorted(figures):
        if k.startswith("hist_") or k.startswith("roc_"):
            lines.append(f"![{k}]({figures[k]})")
    lines += ["", "## Recovery from the saved files", "",
              "Untouched: the file as written. JPEG: the pixels re-compressed; metadata stripped: the pixels re-saved without faceveil's chunks. "
              "Degraded files lose the stored latents and the sealed residual; faceveil's public header and mask are taken from beside the file "
              "(as `faceveil inspect` prints them). The published method stores nothing: it always starts from the pixels and re-detects the mask. "
              "Latent error: relative L2 distance of the recovered clean latent to E(original). Outside mask kept: the recovered image "
              "leaves the pixels outside the (true) face mask as they were in the file it was given.",
              "", recovery_table(m), "",
              "## Anonymized images: change, realism, utility", "", quality_table(m), "",
              "## Diversity", "", diversity_table(m), ""]  # fmt: skip
    if "diversity" in figures:
        lines += [f"![diversity]({figures['diversity']})", ""]
    lines += ["## Security", "", security_tables(m), ""]
    for k in ("security", "security_images"):
        if k in figures:
            lines += [f"![{k}]({figures[k]})", ""]
    scan = m.get("nonce_scan") or {}
    if scan:
        lines += ["**Nonce scan of this run's files:** " + "; ".join(
            f"`{k}`: {v['with_metadata']} files, {v['reused_nonces']} reused nonces" for k, v in scan.items()), ""]  # fmt: skip
    if m.get("notes") or m.get("skipped_inputs"):
        lines += ["## Notes", ""]
        lines += [f"- {n}" for n in m.get("notes", [])]
        if m.get("skipped_inputs"):
            lines += [f"- skipped input: {s}" for s in m["skipped_inputs"][:50]]
            if len(m["skipped_inputs"]) > 50:
                lines.append(f"- ... and {len(m['skipped_inputs']) - 50} more (metrics.json lists them all)")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _savefig(fig: Any, path: Path) -> None:
    """Save a figure as PNG atomically (a reader never sees a partial file)."""
    from faceveil.data.images import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def _image_grid(
    plt: Any,
    cells: list[list[np.ndarray | None]],
    path: Path,
    size: tuple[float, float],
    col_titles: list[str] | None = None,
    row_labels: list[str] | None = None,
    fontsize: int = 8,
) -> None:
    """Save rows of images (None leaves a cell blank) as one figure; ``size`` is a cell's inches."""
    n_rows, n_cols = len(cells), max(len(r) for r in cells)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size[0] * n_cols, size[1] * n_rows + 0.4), squeeze=False)
    for r, row in enumerate(cells):
        for c in range(n_cols):
            ax = axes[r][c]
            if c < len(row) and row[c] is not None:
                ax.imshow(row[c])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and col_titles:
                ax.set_title(col_titles[c], fontsize=fontsize)
            if c == 0 and row_labels:
                ax.set_ylabel(row_labels[r], fontsize=fontsize)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def make_figures(
    ctx: Any, methods: list[Any], folders: dict[str, Path], plots: dict[str, Any], div_images: dict[str, list],
    security: dict[str, Any], sec_images: dict[str, Any], out: Path,
) -> dict[str, str]:
    from faceveil.evaluate.methods import read_pixels

    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    figs: dict[str, str] = {}

    # Image grid: original, every method's anonymization, recoveries.
    ids = ctx.probes[: ctx.cfg.grid_faces]
    cols: list[tuple[str, Any]] = [("original", lambda i: ctx.faces[i].image)]
    for m in methods:
        cols.append((m.name, lambda i, m=m: read_pixels(folders[m.name] / f"{i}.png")))
    for m in methods:
        if m.recoverable:
            cols.append((f"{m.name}\nrecovered", lambda i, m=m: read_pixels(folders[m.name] / f"{i}.rec.png")))
    ids = [i for i in ids if all((folders[m.name] / f"{i}.png").is_file() for m in methods)]
    if ids:

        def load(get: Any, fid: Any) -> np.ndarray | None:
            try:
                return get(fid)
            except OSError:
                return None

        cells = [[load(get, fid) for _, get in cols] for fid in ids]
        _image_grid(plt, cells, out / "grid.png", (1.6, 1.6), col_titles=[t for t, _ in cols])
        figs["grid"] = "figures/grid.png"

    # Identity cosine histograms and ROC curves, per recognizer.
    for j in ctx.judges:
        safe = j.name.replace(":", "-").replace("/", "-")
        fig, ax = plt.subplots(figsize=(6, 3.5))
        bins = np.linspace(-1, 1, 41)
        for name, p in plots.items():
            vals = np.asarray(p["id_cos"].get(j.name, []), dtype=float)
            vals = vals[np.isfinite(vals)]
            if vals.size:
                ax.hist(vals, bins=bins, histtype="step", linewidth=1.5, label=name)
        ax.set_xlabel(f"identity cosine to the original ({j.name})")
        ax.set_ylabel("images")
        ax.legend(fontsize=7)
        fig.tight_layout()
        _savefig(fig, out / f"hist_{safe}.png")
        plt.close(fig)
        figs[f"hist_{safe}"] = f"figures/hist_{safe}.png"

        from faceveil.evaluate.verification import roc_curve

        fig, ax = plt.subplots(figsize=(5, 4))
        drawn = False
        curves: list[tuple[str, Any]] = []
        for name, p in plots.items():
            sc = p["scores"].get(j.name, {})
            if "clean" in sc and not any(lbl == "clean" for lbl, _ in curves):
                curves.append(("clean", sc["clean"]))
            if "anonymized" in sc:
                curves.append((f"{name} anonymized", sc["anonymized"]))
            if "recovered:file" in sc:
                curves.append((f"{name} recovered", sc["recovered:file"]))
        for label, sc in curves:
            far, tar, _ = roc_curve(sc.genuine, sc.impostor)
            ax.step(np.maximum(far, 1e-4), tar, where="post", label=label, linestyle="--" if "recovered" in label else "-")
            drawn = True
        if drawn:
            ax.set_xscale("log")
            ax.set_xlim(1e-4, 1)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("FAR")
            ax.set_ylabel("TAR")
            ax.axvline(ctx.cfg.pairs.far, color="gray", linewidth=0.8)
            ax.legend(fontsize=6, loc="lower right")
            ax.set_title(f"ROC ({j.name})", fontsize=9)
            fig.tight_layout()
            _savefig(fig, out / f"roc_{safe}.png")
            figs[f"roc_{safe}"] = f"figures/roc_{safe}.png"
        plt.close(fig)

    # Diversity: one face under every key.
    rows = [(k, v) for k, v in div_images.items() if v]
    if rows:
        _image_grid(plt, [list(v) for _, v in rows], out / "diversity.png", (1.3, 1.4),
                    row_labels=[k for k, _ in rows])
        figs["diversity"] = "figures/diversity.png"

    # Security: how much of the key stream each attack restores.
    sec = (security or {}).get("settings", {})
    if sec:
        labels, series = [], {}
        for sname, setting in sec.items():
            for aname, a in setting["attacks"].items():
                if aname not in labels:
                    labels.append(aname)
                series.setdefault(sname, {})[aname] = a.get("restored")
        for mode, a in ((security or {}).get("same_mask") or {}).items():
            label = f"entry matching,\nsame mask, {mode}"
            labels.append(label)
            series.setdefault("ours", {})[label] = a.get("restored")
        fig, ax = plt.subplots(figsize=(8.5, 3.8))
        width = 0.8 / max(1, len(series))
        x = np.arange(len(labels))
        for k, (sname, vals) in enumerate(series.items()):
            heights = [vals.get(lbl) for lbl in labels]
            bars = ax.bar(x + k * width, [float(h or 0) for h in heights], width, label=sname)
            ax.bar_label(bars, labels=["" if h is None else f"{float(h):.2f}" for h in heights], fontsize=5, padding=1)
        ax.axhline(0.5, color="gray", linewidth=0.8, linestyle=":")
        ax.set_xticks(x + width * (len(series) - 1) / 2)
        ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=7)
        ax.set_ylabel("key stream restored")
        ax.set_ylim(0, 1.1)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        _savefig(fig, out / "security.png")
        plt.close(fig)
        figs["security"] = "figures/security.png"
    if sec_images and len(sec_images.get("targets", [])) >= 2:
        strip: list[tuple[str, np.ndarray]] = [("original", sec_images["targets"][1].image)]
        for key, label in (("ours", "ours"), ("published-exact", "published key\n(exact latents)"), ("published", "published\n(as released)")):
            if key in sec_images and "known plaintext (1 pair)" in sec_images[key]:
                if key == "ours":
                    strip.append(("ours anonymized", sec_images["ours_anonymized"][1]))
                if key == "published":
                    strip.append(("published anonymized", sec_images["published_anonymized"][1]))
                strip.append((f"{label}\nknown-plaintext attack", sec_images[key]["known plaintext (1 pair)"][0]))
        _image_grid(plt, [[img for _, img in strip]], out / "security_images.png", (1.9, 2.2),
                    col_titles=[t for t, _ in strip], fontsize=7)
        figs["security_images"] = "figures/security_images.png"
    elif (out / "security_images.png").is_file():
        figs["security_images"] = "figures/security_images.png"
    return figs
