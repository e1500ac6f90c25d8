"""The report's table of linking and keyless-estimation attacks (results of :mod:`faceveil.evaluate.linking`)."""

from __future__ import annotations

from typing import Any


def linking_markdown(res: dict[str, Any]) -> str:
    """The report's table of linking and keyless-estimation attacks."""
    intro = (
        f"**Linking and keyless estimation** ({res.get('cases')} real faces pasted into one shared background inside one "
        f"shared mask, {res.get('backgrounds', 1)} background(s); see `faceveil.evaluate.linking`). A rank of 1 means the attacker "
        "found the true original (or the other file of the same photo); *state public* grants the exact keyed noise that format "
        "version 1 published; *ideal re-encoding* grants an autoencoder that inverts the decoder exactly."
    )
    return intro + "\n\n| Attack | Setting | Result |\n|---|---|---|\n" + "\n".join(table_rows(res))


def table_rows(res: dict[str, Any]) -> list[str]:
    """Markdown rows: attack | setting | rate (used by the evaluation report)."""
    rows = []
    for name, row in (res.get("settings") or {}).items():
        for attack, r in row.items():
            if not isinstance(r, dict):
                continue
            if "signs_right" in r:
                value = (f"rel. error {r['rel_error']:.2f} with the file's own magnitudes vs {r['rel_error_other_files']:.2f} "
                         f"with other files' ({r['signs_right']:.0%} signs right from the prior alone)")
            else:
                feat = f" via {r['feature']}" if "feature" in r else ""
                value = f"top-1 {r['top1']:.0%}, mean rank {r['mean_rank']:.1f} (chance {r['chance_top1']:.0%}, {r['chance_mean_rank']:.1f}){feat}"
            rows.append(f"| {attack} | {name} | {value} |")
    return rows
