"""Format version 3: the original pixels of every changed region, sealed; recovery needs only the key.

Version 2 recovered by replaying about a hundred network calls, exact only where every
call gave the same bits (DESIGN.md section 10). Version 3 seals, per face, the original
pixels of the region that anonymization changed, so opening a file is an AEAD and a
paste: no model, no GPU, the same bits on any machine. A keyed digest of the whole
original photo checks the result.

Layout of the PNG (8-bit RGB, no interlace; any other chunk fails authentication):

- ``fvHd``: the public header, UTF-8 JSON, authenticated byte for byte:
  ``format``, ``version`` (3), ``faceveil_version``, ``image_size`` [H, W],
  ``pixels_sha256`` (all published pixels), ``faces``: a list of ``{"nonce", "check",
  "sealed_bytes"}``, ``file``: ``{"nonce", "sealed_bytes"}``, ``payload_sha256``;
  sidecar records add ``image_file`` ``{"sha256", "bytes", "format"}``.
- ``fvDt``: the sealed records back to back (faces in header order, then the file record).
- ``fvMc``: HMAC-SHA256 (hex) under the key over the IHDR and the header's exact bytes.

A face record (ChaCha20-Poly1305 under ``key.subkey("face-region", nonce)``, uncompressed
safetensors, so its length is set by the region's shape alone) holds ``box``
[y0, x0, y1, x1], ``inside`` (the region's pixels, packed bits), ``original`` (the
original RGB of each inside pixel, row-major), ``meta`` (JSON: the face's index and
treatment) and, for faces the diffusion replaced, ``affine`` (2x3, photo -> crop) and
``crop_mask`` (packed bits) for recovery from the pixels alone. The file record holds
``digest`` (HMAC of the whole original photo), ``meta`` (JSON: the model that drew the
faces: base id and weights hash, adapter name and hash, settings; never a local path)
and, on request, ``original_file``: the input file's bytes.

A *sidecar* record (:mod:`faceveil.fileformat.sidecar`) is the same header, records
and MAC in a file of its own, so the published image can be any format.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from faceveil.errors import FormatError, KeyMismatchError, TamperedError, escape
from faceveil.fileformat.sealing import at_most, exactly, open_arrays, seal_arrays
from faceveil.jsonfile import parse_json
from faceveil.keys import NONCE_BYTES, SecretKey, new_nonce, tags_equal

VERSION = 3
HEADER_CHUNK = b"fvHd"
DATA_CHUNK = b"fvDt"
MAC_CHUNK = b"fvMc"
CHUNKS = frozenset({HEADER_CHUNK, DATA_CHUNK, MAC_CHUNK})
FACE_PURPOSE = "face-region"
FILE_PURPOSE = "file-record"
MAX_HEADER_BYTES = 1 << 20
MAX_HEADER_DEPTH = 4
MAX_FACES = 1024
MAX_ORIGINAL_FILE = 256 << 20
# The sealed payload is bounded by the image it describes (version 3: 3 bytes and 1 bit a region
# pixel, the original file at most 4 bytes a pixel; version 2 stayed under 8), so a junk chunk is
# refused before it is read.
LIMITS = {HEADER_CHUNK: MAX_HEADER_BYTES, MAC_CHUNK: 64, DATA_CHUNK: lambda w, h: 12 * w * h + (4 << 20)}
FILE_META_BYTES = 4096  # the file record's description, padded: its length is the same for every file
FACE_META_BYTES = 128


def original_file_cap(h: int, w: int) -> int:
    """Largest input file a record may seal for an h x w photo (what any sane encoding of it takes)."""
    return min(MAX_ORIGINAL_FILE, 4 * h * w + (1 << 20))


def padded_size(n: int) -> int:
    """The sealed size of an n-byte original file: the next power of two (its exact size links it to its source)."""
    return 0 if n == 0 else 1 << (n - 1).bit_length()
TREATMENTS = ("diffusion", "blur", "pixelate", "box", "cover")


@dataclass
class SealedFace:
    """One face of a version 3 file: the region anonymization may change and its original pixels."""

    nonce: bytes
    box: tuple[int, int, int, int]  # y0, x0, y1, x1 in image pixels
    inside: np.ndarray  # (y1 - y0, x1 - x0) bool
    index: int = 0
    treatment: str = "diffusion"
    affine: np.ndarray | None = None  # (2, 3) float64 photo -> crop (diffusion faces of photos)
    crop_mask: np.ndarray | None = None  # (S, S) bool mask on the crop
    original: np.ndarray | None = None  # (n, 3) uint8, filled by the writer and by opening
    check: str = ""

    def slices(self) -> tuple[slice, slice]:
        y0, x0, y1, x1 = self.box
        return slice(y0, y1), slice(x0, x1)


@dataclass
class Opened:
    """A version 3 record, opened: the public header, the faces, and the original photo."""

    header: dict[str, Any]
    faces: list[SealedFace]
    model: dict[str, Any] | None
    digest: bytes
    original_file: bytes | None = None
    original_suffix: str | None = None
    bypassed: list[str] = field(default_factory=list)


def full_region(nonce: bytes, mask: np.ndarray) -> SealedFace:
    """The region of an aligned crop: its whole frame, the mask inside."""
    h, w = mask.shape
    return SealedFace(nonce, (0, 0, h, w), np.asarray(mask, dtype=bool))


def original_digest(key: SecretKey, nonce: bytes, image: np.ndarray) -> bytes:
    """Keyed digest of a whole original photo (sealed: nobody without the key can test a candidate)."""
    mac = hmac.new(key.subkey("original-digest", nonce), b"faceveil/v3/original\0", hashlib.sha256)
    mac.update("x".join(map(str, image.shape)).encode() + b"\0")
    mac.update(np.ascontiguousarray(image).tobytes())
    return mac.digest()


def pixels_sha256(image: np.ndarray) -> str:
    h = hashlib.sha256(b"faceveil/v2/pixels\0" + "x".join(map(str, image.shape)).encode() + b"\0")
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def ihdr_body(height: int, width: int) -> bytes:
    """The IHDR of an 8-bit RGB PNG without interlacing, as PIL writes it."""
    return struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)


def header_mac(key: SecretKey, header_bytes: bytes, ihdr: bytes = b"") -> str:
    return key.mac(b"faceveil/v3/header\0" + struct.pack(">I", len(ihdr)) + ihdr + header_bytes)


# --------------------------------------------------------------------------- sealing


def check_regions(image: np.ndarray, original: np.ndarray, faces: list[SealedFace]) -> None:
    """Refuse to write a file whose regions miss a changed pixel: recovery would not be exact."""
    if image.shape != original.shape:
        raise ValueError(f"anonymized image {image.shape} and original {original.shape} differ in size")
    covered = np.zeros(image.shape[:2], dtype=bool)
    for f in faces:
        y0, x0, y1, x1 = f.box
        if not (0 <= y0 < y1 <= image.shape[0] and 0 <= x0 < x1 <= image.shape[1]) or f.inside.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"face {f.index}: region {list(f.box)} does not fit the {image.shape[1]}x{image.shape[0]} image")
        covered[f.slices()] |= f.inside
    changed = np.any(image != original, axis=-1) & ~covered
    if changed.any():
        raise ValueError(f"{int(changed.sum())} changed pixels lie outside every face region")


def seal(image: np.ndarray, original: np.ndarray, faces: list[SealedFace], model: dict[str, Any] | None, key: SecretKey,
         original_file: bytes | None = None, original_suffix: str | None = None,
         image_file: dict[str, Any] | None = None) -> tuple[bytes, bytes]:
    """(header bytes, payload) of a version 3 record for ``image``, made from ``original``."""
    if not 1 <= len(faces) <= MAX_FACES:
        raise ValueError(f"a file holds 1 to {MAX_FACES} faces, got {len(faces)}")
    if len({f.nonce for f in faces}) != len(faces) or any(len(f.nonce) != NONCE_BYTES for f in faces):
        raise ValueError("every face needs its own 16-byte nonce")
    if original_file is not None and len(original_file) > original_file_cap(*original.shape[:2]):
        raise ValueError(f"the original file ({len(original_file)} bytes) is larger than a record keeps for a "
                         f"{original.shape[1]}x{original.shape[0]} photo ({original_file_cap(*original.shape[:2])} bytes)")
    check_regions(image, original, faces)
    sealed, entries = [], []
    for f in faces:
        if f.treatment not in TREATMENTS:
            raise ValueError(f"unknown treatment {f.treatment!r}")
        f.original = np.ascontiguousarray(original[f.slices()][f.inside])
        arrays = {
            "box": np.asarray(f.box, dtype=np.int64),
            "inside": np.packbits(f.inside.ravel()),
            "original": f.original,
            "meta": _json_array({"index": int(f.index), "treatment": f.treatment}, FACE_META_BYTES),
        }
        if f.affine is not None:
            arrays["affine"] = np.asarray(f.affine, dtype=np.float64).reshape(2, 3)
        if f.crop_mask is not None:
            arrays["crop_size"] = np.asarray(f.crop_mask.shape, dtype=np.int64)
            arrays["crop_mask"] = np.packbits(np.asarray(f.crop_mask, bool).ravel())
        sealed.append(seal_arrays(arrays, key, FACE_PURPOSE, f.nonce, compressed=False))
        f.check = key.check_value(f.nonce)
        entries.append({"nonce": f.nonce.hex(), "check": f.check, "sealed_bytes": len(sealed[-1])})
    file_nonce = new_nonce()
    size = None if original_file is None else len(original_file)
    record = {"digest": np.frombuffer(original_digest(key, file_nonce, original), dtype=np.uint8),
              "meta": _json_array({"model": model, "original_suffix": original_suffix, "original_size": size}, FILE_META_BYTES)}
    if original_file is not None:
        record["original_file"] = np.frombuffer(original_file + bytes(padded_size(size) - size), dtype=np.uint8)
    sealed.append(seal_arrays(record, key, FILE_PURPOSE, file_nonce, compressed=False))
    payload = b"".join(sealed)
    from faceveil import __version__

    header: dict[str, Any] = {
        "format": "faceveil",
        "version": VERSION,
        "faceveil_version": __version__,
        "image_size": list(image.shape[:2]),
        "pixels_sha256": pixels_sha256(image),
        "faces": entries,
        "file": {"nonce": file_nonce.hex(), "sealed_bytes": len(sealed[-1])},
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    if image_file is not None:
        header["image_file"] = image_file
    return json.dumps(header, separators=(",", ":")).encode(), payload


def _json_array(obj: Any, pad_to: int) -> np.ndarray:
    """JSON bytes padded with spaces to ``pad_to``, so the sealed length says nothing about the text."""
    raw = json.dumps(obj, separators=(",", ":")).encode()
    if len(raw) > pad_to:
        raise ValueError(f"a sealed description of {len(raw)} bytes is over its {pad_to}")
    return np.frombuffer(raw + b" " * (pad_to - len(raw)), dtype=np.uint8)


# --------------------------------------------------------------------------- opening


def parse_header(path: Path, raw: bytes) -> dict[str, Any]:
    """The header object of any version; malformed JSON is tampering (the writer never makes it)."""
    if len(raw) > MAX_HEADER_BYTES:
        raise FormatError(f"{path}: faceveil header is larger than {MAX_HEADER_BYTES} bytes")
    try:
        header = parse_json(raw, max_depth=MAX_HEADER_DEPTH)
    except ValueError as exc:
        raise TamperedError(f"{path}: faceveil header is not valid JSON ({exc}; edited or corrupt)") from None
    if not isinstance(header, dict) or header.get("format") != "faceveil":
        raise TamperedError(f"{path}: faceveil header is not a faceveil header object (edited or corrupt)")
    return header


def record_lengths(header: dict[str, Any]) -> list[tuple[bytes, int]]:
    """(nonce, sealed length) of each record the header names, faces then the file record, each
    checked against what a record for an image of the header's size can need: a reader knows how
    much to read, at most, before it reads the payload."""
    h, w = _image_size(header)
    faces = header.get("faces")
    if not isinstance(faces, list) or not 1 <= len(faces) <= MAX_FACES:
        raise ValueError(f"faces must list 1 to {MAX_FACES} records")
    parts = [*faces, header.get("file")]
    out = []
    face_cap = 4 * h * w + (1 << 16)
    for i, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("sealed_bytes"), int) or part["sealed_bytes"] < 16:
            raise ValueError("a record lacks its sealed length")
        cap = face_cap if i < len(faces) else 2 * original_file_cap(h, w) + FILE_META_BYTES + (1 << 16)
        if part["sealed_bytes"] > cap:
            raise ValueError(f"a record claims {part['sealed_bytes']} bytes, more than a {w}x{h} image needs")
        nonce = bytes.fromhex(str(part.get("nonce", "")))
        if len(nonce) != NONCE_BYTES:
            raise ValueError("a record's nonce is not 16 bytes")
        out.append((nonce, part["sealed_bytes"]))
    return out


def _image_size(header: dict[str, Any]) -> tuple[int, int]:
    from faceveil.fileformat.png import MAX_PIXELS

    size = header.get("image_size")
    if not isinstance(size, list) or len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size) \
            or size[0] * size[1] > MAX_PIXELS:
        raise ValueError(f"image_size must be two positive integers with at most {MAX_PIXELS} pixels")
    return size[0], size[1]


def check_image_size(path: Path, header: dict[str, Any], height: int, width: int) -> None:
    """The header must describe the image it travels with."""
    if header.get("image_size") != [height, width]:
        raise FormatError(f"{path}: faceveil header is invalid: it describes a {escape(header.get('image_size'))} "
                          f"image but the PNG is {height}x{width}")


def key_matches(header: dict[str, Any], key: SecretKey) -> bool:
    """Whether the first face's check value is ``key``'s (tells a wrong key from an edited file)."""
    try:
        face = header["faces"][0]
        nonce = bytes.fromhex(face["nonce"])
        return len(nonce) == NONCE_BYTES and tags_equal(key.check_value(nonce), face["check"])
    except (KeyError, IndexError, TypeError, ValueError):
        return True  # malformed: let validation say what is wrong


def open_record(path: Path, header_bytes: bytes, header: dict[str, Any], mac: bytes | None, payload: bytes,
                key: SecretKey, force: bool = False, ihdr: bytes = b"") -> Opened:
    """Authenticate a version 3 record (MAC, payload hash, every AEAD tag) and open it.

    A wrong key raises :class:`KeyMismatchError`; a failed MAC or payload hash
    :class:`TamperedError` unless ``force`` (listed in ``bypassed``); a record that does
    not open fails always (force cannot break encryption)."""
    try:
        h, w = _image_size(header)
        parts = record_lengths(header)
        if sum(n for _, n in parts) != len(payload):
            raise ValueError(f"records add up to {sum(n for _, n in parts)} bytes, the payload has {len(payload)}")
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{path}: faceveil header is invalid: {escape(exc)}") from None
    if not key_matches(header, key):
        # An edited check value must not pass for a wrong key: the key holder's own record still opens.
        nonce, n = parts[0]
        if key.open(FACE_PURPOSE, nonce, payload[:n], FACE_PURPOSE.encode()) is not None:
            raise TamperedError(f"{path}: a face's check value was edited (its record opens under this key)")
        raise KeyMismatchError(f"{path}: wrong key: this file was anonymized with another key")
    bypassed: list[str] = []

    def refuse(message: str) -> None:
        if not force:
            raise TamperedError(f"{path}: {message}")
        bypassed.append(message)

    if mac is None or not tags_equal(header_mac(key, header_bytes, ihdr), mac):
        refuse("faceveil metadata was modified (authentication failed)")
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        refuse("sealed records do not match the header's hash")
    faces, pos = [], 0
    for i, (nonce, n) in enumerate(parts[:-1]):
        face = _open_face(path, payload[pos : pos + n], key, nonce, h, w, i)
        face.check = str(header["faces"][i].get("check", ""))
        faces.append(face)
        pos += n
    nonce, n = parts[-1]
    arrays = _open(path, payload[pos : pos + n], key, FILE_PURPOSE, nonce, "the file record", {
        "digest": exactly(("U8",), (32,)),
        "meta": exactly(("U8",), (FILE_META_BYTES,)),
        "original_file": at_most(("U8",), 2 * original_file_cap(h, w), ndim=1),
    })
    meta = _meta(path, arrays["meta"], "the file record")
    model = meta.get("model")
    suffix = meta.get("original_suffix")
    original_file = None
    if "original_file" in arrays:
        n = meta.get("original_size")
        if not isinstance(n, int) or not 0 <= n <= arrays["original_file"].size:
            raise FormatError(f"{path}: the file record's original file has no valid size")
        original_file = arrays["original_file"][:n].tobytes()
    return Opened(header, faces, model if isinstance(model, dict) else None, arrays["digest"].tobytes(), original_file,
                  suffix if isinstance(suffix, str) and len(suffix) <= 16 else None, bypassed)


def _open(path: Path, blob: bytes, key: SecretKey, purpose: str, nonce: bytes, what: str, spec) -> dict[str, np.ndarray]:
    try:
        arrays = open_arrays(blob, key, purpose, nonce, len(blob), spec, compressed=False)
    except FormatError as exc:
        raise FormatError(f"{path}: {what}: {exc}") from None
    if arrays is None:
        raise TamperedError(f"{path}: {what} did not open under this key (altered)")
    if "meta" not in arrays:
        raise FormatError(f"{path}: {what} lacks its description")
    return arrays


def _meta(path: Path, arr: np.ndarray, what: str) -> dict[str, Any]:
    try:
        meta = parse_json(arr.tobytes(), max_depth=6)
    except ValueError as exc:
        raise FormatError(f"{path}: {what}: description is not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise FormatError(f"{path}: {what}: description is not an object")
    return meta


def _open_face(path: Path, blob: bytes, key: SecretKey, nonce: bytes, h: int, w: int, i: int) -> SealedFace:
    what = f"face {i}"
    arrays = _open(path, blob, key, FACE_PURPOSE, nonce, what, {
        "box": exactly(("I64",), (4,)),
        "inside": at_most(("U8",), (h * w + 7) // 8, ndim=1),
        "original": at_most(("U8",), 3 * h * w, ndim=2),
        "meta": exactly(("U8",), (FACE_META_BYTES,)),
        "affine": exactly(("F64",), (2, 3)),
        "crop_size": exactly(("I64",), (2,)),
        "crop_mask": at_most(("U8",), (1 << 28) // 8, ndim=1),
    })
    if "box" not in arrays or "inside" not in arrays or "original" not in arrays:
        raise FormatError(f"{path}: {what}: the record lacks its region")
    y0, x0, y1, x1 = (int(v) for v in arrays["box"])
    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
        raise FormatError(f"{path}: {what}: region {[y0, x0, y1, x1]} lies outside the {w}x{h} image")
    n = (y1 - y0) * (x1 - x0)
    if arrays["inside"].size != (n + 7) // 8:
        raise FormatError(f"{path}: {what}: region bits do not match its box")
    inside = np.unpackbits(arrays["inside"], count=n).astype(bool).reshape(y1 - y0, x1 - x0)
    original = arrays["original"]
    if original.shape != (int(inside.sum()), 3):
        raise FormatError(f"{path}: {what}: {original.shape[0]} original pixels for a region of {int(inside.sum())}")
    meta = _meta(path, arrays["meta"], what)
    treatment = meta.get("treatment")
    crop_mask = None
    if "crop_mask" in arrays and "crop_size" in arrays:
        ch, cw = (int(v) for v in arrays["crop_size"])
        if not (0 < ch <= 1 << 14 and 0 < cw <= 1 << 14) or arrays["crop_mask"].size != (ch * cw + 7) // 8:
            raise FormatError(f"{path}: {what}: crop mask does not match its size")
        crop_mask = np.unpackbits(arrays["crop_mask"], count=ch * cw).astype(bool).reshape(ch, cw)
    index = meta.get("index")
    return SealedFace(nonce, (y0, x0, y1, x1), inside, int(index) if isinstance(index, int) else i,
                      treatment if treatment in TREATMENTS else "cover", arrays.get("affine"), crop_mask, original)


def restore(image: np.ndarray, faces: list[SealedFace]) -> np.ndarray:
    """The published image with every face region's original pixels put back."""
    out = np.array(image, dtype=np.uint8, copy=True)
    for f in faces:
        view = out[f.slices()]
        view[f.inside] = f.original
    return out


def is_original(opened: Opened, key: SecretKey, image: np.ndarray) -> bool:
    """Whether ``image`` is the original photo the record was made from (keyed digest)."""
    nonce = bytes.fromhex(opened.header["file"]["nonce"])
    return hmac.compare_digest(original_digest(key, nonce, image), opened.digest)
