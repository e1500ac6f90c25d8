"""Fuzz the readers of anonymized files: mutate genuine files and check that every outcome is allowed.

Allowed: the file opens and gives the original exactly (a mutation that changed nothing
that matters, e.g. in a skipped chunk's CRC), or a one-line :class:`~faceveil.errors.FaceveilError`.
Anything else (another exception, a wrong original accepted as exact, memory past the bound)
is a finding. Mutations: bit flips, byte runs, truncation, chunk shuffles and duplicates,
lying chunk lengths, header edits (deep nesting, huge numbers, wrong types), sidecar edits.

``python -m faceveil.evaluate.fuzz_files --cases 2000`` runs a longer campaign than the tests do.
"""

from __future__ import annotations

import argparse
import json
import struct
import tempfile
import time
import tracemalloc
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KINDS = ("flip", "run", "truncate", "shuffle", "duplicate", "length", "header", "sidecar")


@dataclass(frozen=True)
class Mutation:
    kind: str
    a: int  # a position or index, taken modulo what it indexes
    b: int  # a second index, a value or a length


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos + 8 <= len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]))
        pos += 12 + n
    return out


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(b)) + c + b + struct.pack(">I", zlib.crc32(c + b) & 0xFFFFFFFF) for c, b in chunks
    )


HEADER_EDITS = (
    lambda d, v: d.update(image_size=[v, v]),
    lambda d, v: d["faces"][0].update(sealed_bytes=v),
    lambda d, v: d.update(faces=[d["faces"][0]] * (v % 3000)),
    lambda d, v: d.update(version=v),
    lambda d, v: d.update(file={"nonce": "00" * 16, "sealed_bytes": v}),
    lambda d, v: d.update(faces="x" * (v % 100)),
    lambda d, v: d.update(x=json.loads("[" * (v % 2000 + 1) + "]" * (v % 2000 + 1))) if v % 2000 < 900 else d.update(x=None),
    lambda d, v: d["faces"][0].update(nonce="zz" * (v % 20)),
)


def apply(m: Mutation, png: bytes, sidecar: bytes | None) -> tuple[bytes, bytes | None]:
    """The mutated (file, sidecar) pair; ``sidecar`` None for embedded records."""
    if m.kind == "sidecar" and sidecar is not None:
        i = m.a % len(sidecar)
        return png, sidecar[:i] + bytes([sidecar[i] ^ (1 << (m.b % 8))]) + sidecar[i + 1 :]
    if m.kind == "flip":
        i = m.a % len(png)
        return png[:i] + bytes([png[i] ^ (1 << (m.b % 8))]) + png[i + 1 :], sidecar
    if m.kind == "run":
        i = m.a % len(png)
        return png[:i] + bytes([m.b % 256]) * (1 + m.b % 64) + png[i + 1 + m.b % 64 :], sidecar
    if m.kind == "truncate":
        return png[: m.a % len(png)], sidecar
    chunks = _chunks(png)
    if m.kind == "shuffle":
        i, j = m.a % len(chunks), m.b % len(chunks)
        chunks[i], chunks[j] = chunks[j], chunks[i]
        return _png(chunks), sidecar
    if m.kind == "duplicate":
        i = m.a % len(chunks)
        return _png(chunks[: i + 1] + [chunks[i]] + chunks[i + 1 :]), sidecar
    if m.kind == "length":
        i = m.a % len(chunks)
        body = b"".join(struct.pack(">I", len(b)) + c + b + struct.pack(">I", zlib.crc32(c + b) & 0xFFFFFFFF) for c, b in chunks[:i])
        rest = png[8 + len(body) :]
        return png[: 8 + len(body)] + struct.pack(">I", m.b % (1 << 32)) + rest[4:], sidecar
    # header edits, with the chunk's CRC fixed so the edit reaches the parser
    out = []
    for c, b in chunks:
        if c == b"fvHd":
            try:
                doc = json.loads(b)
                HEADER_EDITS[m.a % len(HEADER_EDITS)](doc, m.b)
                b = json.dumps(doc).encode()
            except (ValueError, KeyError, IndexError, TypeError, RecursionError):
                pass
        out.append((c, b))
    return _png(out), sidecar


def genuine(folder: Path, key) -> tuple[Path, Path, np.ndarray]:
    """An embedded file and a PNG with a sidecar record, made from a small synthetic photo."""
    from faceveil.fileformat.v3 import SealedFace
    from faceveil.fileformat.write import write_v3
    from faceveil.keys import new_nonce

    g = np.random.default_rng(0)
    original = g.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    faces = [SealedFace(new_nonce(), (2, 3, 14, 13), np.ones((12, 10), bool), treatment="box"),
             SealedFace(new_nonce(), (10, 20, 20, 30), np.eye(10, dtype=bool), treatment="diffusion",
                        affine=np.eye(2, 3), crop_mask=np.ones((8, 8), bool))]
    image = original.copy()
    for f in faces:
        view = image[f.slices()]
        view[f.inside] = 0
    model = {"backbone": "tiny", "scheme": "exact", "steps": 2, "transform": "rotation"}
    embedded = write_v3(folder / "e.png", image, original, faces, model, key)
    side = write_v3(folder / "s.png", image, original, faces, model, key, record="sidecar")
    return embedded, side, original


def check(path: Path, key, original: np.ndarray, record: Path | None = None, peak_bound: int = 32 << 20) -> str:
    """'ok' (opened, the exact original), 'refused' (one FaceveilError line), or a finding's description."""
    from faceveil.errors import FaceveilError
    from faceveil.fileformat.original import open_original

    tracemalloc.start()
    try:
        o = open_original(path, key, record=record)
        outcome = "ok" if o.exact and np.array_equal(o.image, original) else "FINDING: accepted a wrong original as exact" if o.exact else "ok-inexact"
    except FaceveilError as exc:
        outcome = "refused" if "\n" not in str(exc) else "FINDING: a multi-line error"
    except Exception as exc:  # noqa: BLE001 - anything else is what the fuzzer looks for
        outcome = f"FINDING: {exc.__class__.__name__}: {str(exc)[:120]}"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return outcome if peak <= peak_bound else f"FINDING: peak memory {peak >> 20} MiB"


def run_case(m: Mutation, folder: Path, key, files: tuple[Path, Path, np.ndarray]) -> str:
    embedded, side, original = files
    if m.kind == "sidecar":
        png, rec = apply(m, side.read_bytes(), (Path(str(side) + ".fvrec")).read_bytes())
        target = folder / "case.png"
        target.write_bytes(png)
        (folder / "case.rec").write_bytes(rec)
        return check(target, key, original, record=folder / "case.rec")
    png, _ = apply(m, embedded.read_bytes(), None)
    target = folder / "case-e.png"
    target.write_bytes(png)
    return check(target, key, original)


def main(argv: list[str] | None = None) -> int:
    from faceveil.keys import SecretKey

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    key = SecretKey.generate()
    counts: dict[str, int] = {}
    findings: list[str] = []
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = genuine(folder, key)
        for _ in range(args.cases):
            m = Mutation(KINDS[rng.integers(len(KINDS))], int(rng.integers(1 << 31)), int(rng.integers(1 << 32)))
            outcome = run_case(m, folder, key, files)
            counts[outcome.split(":")[0]] = counts.get(outcome.split(":")[0], 0) + 1
            if outcome.startswith("FINDING"):
                findings.append(f"{m}: {outcome}")
    print(json.dumps({"cases": args.cases, "outcomes": counts, "findings": findings[:20],
                      "seconds": round(time.perf_counter() - t, 1)}, indent=2))
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
