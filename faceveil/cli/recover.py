"""faceveil recover INPUT... -o OUTDIR --key KEYFILE [--force] [--record FILE] [--meta JSON_OR_DIR --mask MASK]

Version 3 files (everything faceveil writes) open with the key alone: no model is loaded,
and the result is checked against the sealed digest of the original. Version 2 files are
recovered by replaying the model, exact only on the kind of machine that made them; version 1
files only with ``--allow-v1``.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from faceveil.cli.common import (
    Report,
    add_model_args,
    add_scheme_args,
    positive_int,
    check_output_folder,
    batches_by,
    find_mask,
    load_backbone_for_cli,
    planned_outputs,
    progress,
    quiet_libraries,
    resolve_device,
    resolve_dtype,
    settle,
    Writer,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recover", help="turn anonymized images back into the originals with the right key")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="anonymized PNGs, videos (NAME.mkv with NAME.fvvid) or folders")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    p.add_argument("--key", required=True, type=Path, help="the key file used to anonymize")
    p.add_argument(
        "--force",
        action="store_true",
        help="recover even when a file fails authentication (edited metadata, records or pixels); says what it "
        "bypassed. Version 2 files then need --backbone. Cannot open records sealed under another key",
    )
    p.add_argument(
        "--meta",
        type=Path,
        help="for files whose metadata was stripped: the JSON 'faceveil inspect' printed for the file, or a "
        "folder of NAME.json (recovery then re-encodes the pixels and is approximate)",
    )
    p.add_argument("--mask", type=Path, help="with --meta: the face mask (file or folder), as given to anonymize")
    p.add_argument("--record", type=Path, help="the sidecar record of a single published image (default: IMAGE.fvrec beside it)")
    p.add_argument("--allow-v1", action="store_true",
                   help="recover version 1 files (their pixels and settings were never authenticated)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_model_args(p, backbone_default=None)
    add_scheme_args(p)
    g = p.add_argument_group("copies without a record (pixel-only recovery of --pixel-recovery faces)")
    g.add_argument("--scales", default="1,2", metavar="S[,S...]",
                   help="resize factors to search for marks: 2 reads a copy shrunk to 1/2 (default 1,2)")
    g.add_argument("--inversion-steps", type=positive_int, default=200,
                   help="decoder inversion steps per face (default 200; more is slower and closer)")
    # Version 3 files open without torch; the thread count is set when a version 1/2 file needs the model.
    p.set_defaults(func=run, threads_on_demand=True)


class Loader:
    """Reads anonymized files, or stripped ones with --meta/--mask, and checks them against the key."""

    def __init__(self, args: argparse.Namespace, key, report: Report) -> None:
        self.args, self.key, self.report = args, key, report
        self.meta_used: dict[Path, Path] = {}

    def _meta_for(self, src: Path) -> dict:
        from faceveil.errors import InputError
        from faceveil.jsonfile import load_json_object

        meta = self.args.meta / f"{src.stem}.json" if self.args.meta.is_dir() else self.args.meta
        if meta in self.meta_used:
            raise InputError(f"{meta} already serves {self.meta_used[meta]}; each image has its own nonce, so give a folder of NAME.json")
        header = load_json_object(meta, "--meta (the JSON 'faceveil inspect' printed)")
        self.meta_used[meta] = src
        return header

    def load(self, src: Path):  # -> Veiled
        from faceveil.data.images import load_image
        from faceveil.errors import FormatError, KeyMismatchError, TamperedError
        from faceveil.fileformat import header_authentic, pixels_sha256, read_file, read_header, veiled_from_file, veiled_from_header

        args, key = self.args, self.key
        if read_header(src) is not None:
            vf = read_file(src, key, force=args.force, allow_v1=args.allow_v1)
            if vf.version == 1:
                self.report.note(f"{src}: a version 1 file: recovered without authentication (--allow-v1)")
            elif vf.version == 2:
                self.report.note(f"{src}: {V2_NOTE}")
            for what in vf.bypassed:
                self.report.note(f"{src}: --force bypassed: {what}")
            if not vf.records:
                raise KeyMismatchError(f"{src}: the sealed face record does not open under this key (--force cannot bypass encryption)")
            if len(vf.records) != 1:
                raise FormatError(f"{src}: a photo with {len(vf.records)} faces; recover it as a photo")
            return veiled_from_file(vf)
        if args.meta is None or args.mask is None:
            raise FormatError(f"{src}: no faceveil record: not a faceveil file, or its metadata was stripped or it was "
                              "re-encoded; an image published with --record sidecar needs its NAME.fvrec beside it (or "
                              "--record FILE); --meta and --mask recover only version 2 aligned crops")
        header = self._meta_for(src)
        if header.get("version") not in (1, 2):
            raise FormatError(f"{src}: --meta takes a version 1 or 2 header; a version 3 file's record is sealed, "
                              "so keep the file as written (or its .fvrec sidecar)")
        image = load_image(src)
        v = veiled_from_header(header, image, find_mask(src, args.mask, image.shape[:2]), None)
        v.authenticated = header_authentic(header, key)
        if not v.key_matches(key) and not args.force:
            raise KeyMismatchError(f"{src}: wrong key: the --meta header was made with another key (use --force to try anyway)")
        if v.authenticated is False:
            if not args.force:
                raise TamperedError(f"{src}: the --meta header was modified (authentication failed; use --force to try anyway)")
            self.report.note(f"{src}: --force bypassed: the --meta header does not authenticate under this key")
        if pixels_sha256(image) != header.get("pixels_sha256"):
            what = "pixels differ from the anonymized ones (re-encoded or edited; a replaced face would recover as garbage)"
            if not args.force:
                raise TamperedError(f"{src}: {what}; --force recovers approximately anyway")
            self.report.note(f"{src}: --force bypassed: {what}")
        self.report.note(f"{src}: no faceveil metadata; re-encoding the pixels with the given mask (approximate recovery)")
        return v


V2_NOTE = ("a version 2 file: recovered by replaying the model, exact only on the kind of machine (device, kernels, "
           "library versions) that made it, and nothing can check the result; re-anonymize originals to version 3")


def recover_v3(src: Path, dst: Path, args: argparse.Namespace, key, report: Report, taken: set[Path]) -> None:
    """Open a version 3 file (or image + sidecar record) and write the original: no model, checked.

    ``taken`` holds every output path of the run (resolved): the input file's own bytes, written
    beside the recovered PNG, must never replace another output or an existing file."""
    from faceveil.data.images import atomic_write, save_image
    from faceveil.errors import InputError
    from faceveil.fileformat.original import open_original

    o = open_original(src, key, force=args.force, record=args.record)
    keep = None
    if o.original_file is not None:
        keep = dst.with_name(f"{dst.stem}.original{o.original_suffix or ''}")
        if keep.resolve() in taken or (keep.exists() and not args.overwrite):
            raise InputError(f"{keep} (the input file's own bytes) exists or is another output; recover this file "
                             "to another -o, or use --overwrite")
        taken.add(keep.resolve())
    for what in o.bypassed:
        report.note(f"{src}: --force bypassed: {what}")
    save_image(dst, o.image, mode=0o600)  # a recovered original is as private as the key
    if keep is not None:
        atomic_write(keep, lambda tmp: tmp.write_bytes(o.original_file), mode=0o600)
    if o.exact:
        report.ok += 1
    elif o.lossy:
        report.note(f"{src}: faces restored exactly; outside them the pixels are the published lossy image's, not the original's")
        report.ok += 1
    else:
        report.fail(src, "the written photo is NOT the original: it does not match the sealed digest (see the bypassed checks)")


def is_v3(src: Path, record: Path | None) -> bool:
    from faceveil.errors import FormatError
    from faceveil.fileformat.original import file_version, has_sidecar

    if record is not None or has_sidecar(src):
        return True
    try:
        return file_version(src) == 3
    except FormatError:
        return False  # the legacy path reports it


def same_weights_only(batch: list, bb, force: bool, report: Report, bar) -> list:
    """The items of ``batch`` made with ``bb``'s weights; the others fail (or, with --force, go on with a note)."""
    from faceveil.models.same_weights import weights_mismatch

    kept = []
    for it in batch:
        why = weights_mismatch(it[2].backbone, it[2].adapter_hash, bb, it[2].base_sha256)
        if why is None:
            kept.append(it)
        elif force:
            report.note(f"{it[0]}: --force bypasses the weights check: {why.needs}, recovering with {why.loaded}")
            kept.append(it)
        else:
            report.fail(it[0], f"wrong weights: {why}")
            bar.update(1)
    return kept


def run(args: argparse.Namespace) -> int:
    from faceveil.errors import FaceveilError
    from faceveil.keys import load_key

    # Recovered originals are private: never inside the folder of the anonymized (public) files.
    check_output_folder(args.inputs, args.output, private=True)
    # --- videos: their own path (faceveil.video.cli); images go on below
    from faceveil.video.cli import recover_videos, split_inputs

    videos, rest = split_inputs(args.inputs) if not getattr(args, "videos_routed", False) else ([], args.inputs)
    if videos:
        args.inputs, args.videos_routed = rest, True  # the photos in them, once
        status = recover_videos(args, videos)
        return status if not rest else max(status, run(args))
    # --- end videos
    report = Report("recover")
    key = load_key(args.key)
    pairs = list(planned_outputs(args.inputs, args.output, args.overwrite, report))
    if args.record is not None and len(pairs) != 1:
        report.fail(args.record, "--record names the sidecar of one image; give exactly one input")
        return report.finish("recovered", args.output)
    legacy, pixels = [], []
    taken = {dst.resolve() for _, dst in pairs}
    for src, dst in pairs:
        if not is_v3(src, args.record):
            (pixels if args.meta is None and has_no_record(src) else legacy).append((src, dst))
            continue
        try:
            recover_v3(src, dst, args, key, report, taken)
        except (FaceveilError, OSError, ValueError) as exc:
            report.fail(src, exc)
    if legacy and args.force and not args.backbone:
        # A file that fails authentication must not choose the model (or a hub repo to contact).
        for src, _ in legacy:
            report.fail(src, "--force on a version 1/2 file needs --backbone: an unauthenticated file never chooses the model")
        legacy = []
    if legacy:
        recover_legacy(args, key, legacy, report)
    if pixels:
        from faceveil.cli.recover_pixels import recover_pixel_files

        recover_pixel_files(args, key, pixels, report)
    return report.finish("recovered", args.output)


def has_no_record(src: Path) -> bool:
    """No faceveil header at all (stripped, re-encoded or any other image): only its pixels can say more."""
    from faceveil.errors import FormatError
    from faceveil.fileformat import read_header

    try:
        return read_header(src) is None
    except (FormatError, OSError):
        return False  # a damaged faceveil file: the legacy path names what is wrong


def recover_legacy(args: argparse.Namespace, key, legacy: list[tuple[Path, Path]], report: Report) -> None:
    """Version 1 and 2 files (and stripped ones with --meta): replayed through the model."""
    import torch

    from faceveil.cli.recover_photos import is_photo_file, recover_photo_files
    from faceveil.data.images import save_image
    from faceveil.errors import FaceveilError, InputError, TamperedError
    from faceveil.fileformat import escape
    from faceveil.models.pipeline import Anonymizer

    from faceveil.cli.common import apply_threads

    apply_threads(args.threads)
    quiet_libraries()
    loader = Loader(args, key, report)

    items = []
    photo_pairs = [(src, dst) for src, dst in legacy if is_photo_file(src)]
    if photo_pairs:
        recover_photo_files(args, key, photo_pairs, report)
    for src, dst in legacy:
        if (src, dst) in photo_pairs:
            continue
        try:
            items.append((src, dst, loader.load(src)))
        except FaceveilError as exc:
            report.fail(src, exc)
    if items:
        device = resolve_device(args.device)
        backbones: dict[tuple[str, torch.dtype], object] = {}
        bar = progress(len(items), "recover")

        def dtype_for(v) -> torch.dtype:
            # Exact recovery needs the UNet in the dtype it was anonymized with.
            recorded = v.compute.get("dtype")
            if args.dtype == "auto" and recorded in ("float32", "bfloat16", "float16"):
                return getattr(torch, recorded)
            return resolve_dtype(args.dtype, device)

        def group(it):
            v = it[2]
            return (args.backbone or v.backbone, dtype_for(v), v.settings.scheme, v.settings.steps,
                    v.settings.transform, v.image.shape, v.state is None)

        writer = Writer(report)
        for batch in batches_by(items, group, args.batch_size):
            start, total = bar.n, len(batch)
            spec, dtype = group(batch[0])[:2]
            v0 = batch[0][2]
            try:
                if v0.adapter_hash and not args.backbone:
                    raise InputError(f"made with adapter {escape(v0.adapter_name)} (sha256 {escape(v0.adapter_hash)}); "
                                     "pass --backbone EXPORT_FOLDER")
                if (spec, dtype) not in backbones:
                    backbones[(spec, dtype)] = load_backbone_for_cli(spec, device, dtype)
                bb = backbones[(spec, dtype)]
                recorded = v0.compute.get("dtype")
                if recorded and recorded != str(dtype).removeprefix("torch."):
                    report.note(f"{batch[0][0]}: anonymized with {escape(recorded)}, recovering with {dtype}; expect it to be inexact")
                if v0.compute.get("device", device.type) != device.type:
                    report.note(f"{batch[0][0]}: anonymized on {escape(v0.compute['device'])}, recovering on {device.type}; "
                                "expect last-bit differences")
                batch = same_weights_only(batch, bb, args.force, report, bar)  # advances the bar for refusals
                if not batch:
                    continue
                anonymizer = Anonymizer(bb, v0.settings, on_progress=bar.update)
                rec = anonymizer.recover([it[2] for it in batch], key, force=True)
            except (FaceveilError, ValueError, RuntimeError, OSError) as exc:
                for src, _, _ in batch:
                    report.fail(src, exc)
                rec = []
            for (src, dst, _), r in zip(batch, rec):
                if r.residual_opened is False:
                    if not args.force:
                        report.fail(src, TamperedError(f"{src}: the sealed pixel residual does not open under this key (altered?)"))
                        continue
                    report.note(f"{src}: --force bypassed: the sealed pixel residual does not open; pixels are approximate")
                # A recovered original is as private as the key.
                writer.submit(src, functools.partial(save_image, mode=0o600), dst, r.image)
            settle(bar, start, total)
        writer.close()
        bar.close()
