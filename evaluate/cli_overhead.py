"""Time per file that ``faceveil anonymize --aligned`` spends outside the networks, v2 files against v3.

    python -m faceveil.evaluate.cli_overhead --count 16 --size 128 --steps 4 --threads 2

Runs the real command on ``count`` aligned crops at each batch size, timing the whole run, the
model load and the time inside ``Anonymizer.anonymize`` (the networks, the keying, the residual
for v2). What is left, per file, is reading, masks, sealing and writing. "v2" replays the previous
release's file path in the same process: a sealed autoencoder residual per image (one more decode)
and the version 2 writer.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def _v2_files():
    """The previous file path: residual on, version 2 writer."""
    import faceveil.cli.anonymize as cli_anon
    import faceveil.cli.common as common
    import faceveil.fileformat as ff
    from faceveil.fileformat.write import write_veiled_v2

    resolve, write = common.resolve_settings, ff.write_veiled

    def settings_v2(args, backbone):  # noqa: ANN001, ANN202
        import dataclasses

        return dataclasses.replace(resolve(args, backbone), residual=True)

    cli_anon.resolve_settings = settings_v2
    ff.write_veiled = lambda path, v, key, **_: write_veiled_v2(path, v, key)
    try:
        yield
    finally:
        cli_anon.resolve_settings, ff.write_veiled = resolve, write


def run_once(inp: Path, out: Path, keyfile: Path, bs: int, steps: int, threads: int) -> dict:
    import faceveil.cli.anonymize as cli_anon
    from faceveil.cli import main
    from faceveil.models.pipeline import Anonymizer

    spent = {"net": 0.0, "load": 0.0}
    anonymize, load = Anonymizer.anonymize, cli_anon.load_backbone_for_cli

    def timed_anonymize(self, *a, **k):  # noqa: ANN001, ANN202
        t = time.perf_counter()
        try:
            return anonymize(self, *a, **k)
        finally:
            spent["net"] += time.perf_counter() - t

    def timed_load(*a, **k):  # noqa: ANN202
        t = time.perf_counter()
        try:
            return load(*a, **k)
        finally:
            spent["load"] += time.perf_counter() - t

    Anonymizer.anonymize, cli_anon.load_backbone_for_cli = timed_anonymize, timed_load
    try:
        t = time.perf_counter()
        rc = main(["anonymize", str(inp), "-o", str(out), "--key", str(keyfile), "--aligned", "--backbone", "tiny",
                   "--device", "cpu", "--steps", str(steps), "--batch-size", str(bs), "--threads", str(threads)])
        total = time.perf_counter() - t
    finally:
        Anonymizer.anonymize, cli_anon.load_backbone_for_cli = anonymize, load
    n = len(list(inp.glob("*.png")))
    return {"rc": rc, "total_s": round(total, 2), "networks_s": round(spent["net"], 2), "load_s": round(spent["load"], 2),
            "outside_per_file_s": round((total - spent["net"] - spent["load"]) / n, 4), "images_per_s": round(n / (total - spent["load"]), 2)}


def main(argv: list[str] | None = None) -> int:
    from faceveil.data.images import save_image
    from faceveil.evaluate.benchmark import faces
    from faceveil.keys import SecretKey, save_key

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    args = p.parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i, f in enumerate(faces(args.size, args.count)):
            save_image(tmp / "in" / f"f{i:02d}.png", f)
        keyfile = save_key(SecretKey.generate(), tmp / "k.key")
        for fmt in ("v2", "v3"):
            for bs in args.batch_sizes:
                out = tmp / f"out-{fmt}-{bs}"
                if fmt == "v2":
                    with _v2_files():
                        rows[f"{fmt} batch {bs}"] = run_once(tmp / "in", out, keyfile, bs, args.steps, args.threads)
                else:
                    rows[f"{fmt} batch {bs}"] = run_once(tmp / "in", out, keyfile, bs, args.steps, args.threads)
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
