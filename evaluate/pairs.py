"""Verification pairs: LFW's ``pairs.txt`` and pairs made from identity labels.

LFW's format (``pairs.txt``, ``pairsDevTrain.txt``, ``pairsDevTest.txt``)::

    10	300                       <- optional header: folds, pairs of each kind per fold
    Abel_Pacheco	1	4          <- genuine: name, image number, image number
    Abdel_Madi_Shabneh	1	Dean_Barker	1   <- impostor: name, number, name, number

A one-number header (``1100``, the dev files) means one fold of that many pairs
of each kind. Without a header every line is a pair. Photo ``n`` of ``Name`` is
``Name/Name_000n`` (the LFW layout, suffix left out). Following the G2Face
protocol, the *second* image of each pair is the one that gets anonymized (the
probe); the first stays clean (the reference).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from faceveil.errors import InputError


@dataclass(frozen=True)
class PairSpec:
    first: str  # relpath without suffix, e.g. "Abel_Pacheco/Abel_Pacheco_0001"
    second: str
    same: bool
    fold: int | None = None


@dataclass(frozen=True)
class Pair:
    ref: str  # face id of the clean reference
    probe: str  # face id of the probe (anonymized / recovered)
    same: bool
    fold: int | None = None


def lfw_name(name: str, number: int) -> str:
    return f"{name}/{name}_{number:04d}"


def _int(token: str, where: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise InputError(f"{where}: {token!r} is not an image number") from None
    if value < 1:
        raise InputError(f"{where}: image numbers start at 1, got {value}")
    return value


def parse_lfw_pairs(text: str, source: str = "pairs.txt", warn=None) -> list[PairSpec]:
    """Parse LFW pairs text; see the module docstring. ``warn(line)`` gets count mismatches."""
    lines = [(i + 1, ln.split()) for i, ln in enumerate(text.splitlines())]
    lines = [(n, toks) for n, toks in lines if toks and not toks[0].startswith("#")]
    folds = per_fold = None
    if lines and len(lines[0][1]) in (1, 2) and all(t.isdigit() for t in lines[0][1]):
        head = [int(t) for t in lines[0][1]]
        folds, per_fold = (1, head[0]) if len(head) == 1 else (head[0], head[1])
        lines = lines[1:]
    pairs: list[PairSpec] = []
    for k, (n, toks) in enumerate(lines):
        where = f"{source}:{n}"
        fold = k // (2 * per_fold) if per_fold else None
        if len(toks) == 3:
            name, a, b = toks
            pairs.append(PairSpec(lfw_name(name, _int(a, where)), lfw_name(name, _int(b, where)), True, fold))
        elif len(toks) == 4:
            n1, a, n2, b = toks
            pairs.append(PairSpec(lfw_name(n1, _int(a, where)), lfw_name(n2, _int(b, where)), n1 == n2, fold))
        else:
            raise InputError(f"{where}: expected 'name n1 n2' or 'name1 n1 name2 n2', got {len(toks)} fields")
    if folds is not None and per_fold is not None and len(pairs) != 2 * folds * per_fold:
        msg = f"{source}: header announces {folds} x 2 x {per_fold} = {2 * folds * per_fold} pairs, found {len(pairs)}"
        if warn is not None:
            warn(msg)
    return pairs


def read_lfw_pairs(path: str | os.PathLike[str], warn=None) -> list[PairSpec]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: no such pairs file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: unreadable pairs file ({exc.__class__.__name__})") from None
    return parse_lfw_pairs(text, str(path), warn)


def resolve_pairs(specs: list[PairSpec], relpath_to_id: dict[str, str]) -> tuple[list[Pair], list[str]]:
    """Pairs whose two photos are both among the faces; and the names of the missing photos."""
    pairs, missing = [], []
    for s in specs:
        a, b = relpath_to_id.get(s.first), relpath_to_id.get(s.second)
        for name, fid in ((s.first, a), (s.second, b)):
            if fid is None and name not in missing:
                missing.append(name)
        if a is not None and b is not None:
            pairs.append(Pair(a, b, s.same, s.fold))
    return pairs, missing


def pairs_from_labels(faces: list[tuple[str, str]], max_impostors: int | None = None) -> list[Pair]:
    """Pairs from ``(face id, label)``: per label with two or more faces, the first face (by id)
    is the reference and the last the probe (a genuine pair); every reference with every other
    identity's probe makes the impostor pairs (the first ``max_impostors``)."""
    by_label: dict[str, list[str]] = {}
    for fid, label in faces:
        if label:
            by_label.setdefault(label, []).append(fid)
    groups = {lab: sorted(ids) for lab, ids in sorted(by_label.items()) if len(ids) >= 2}
    pairs = [Pair(ids[0], ids[-1], True) for ids in groups.values()]
    impostors = [Pair(a[0], b[-1], False) for la, a in groups.items() for lb, b in groups.items() if la != lb]
    if max_impostors is not None:
        impostors = impostors[:max_impostors]
    return pairs + impostors


def gallery_and_probes(pairs: list[Pair], labels: dict[str, str]) -> tuple[list[str], list[str]]:
    """Rank-1 set-up: the gallery holds one reference per identity (its first reference in the
    pairs), the probes are the genuine pairs' probes whose identity is in the gallery."""
    gallery: dict[str, str] = {}
    for p in pairs:
        lab = labels.get(p.ref, "")
        if lab and lab not in gallery:
            gallery[lab] = p.ref
    probes = []
    for p in pairs:
        if p.same and labels.get(p.probe, "") in gallery and p.probe not in probes and p.probe not in gallery.values():
            probes.append(p.probe)
    return list(gallery.values()), probes
