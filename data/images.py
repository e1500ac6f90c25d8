"""Reading and writing images: RGB uint8 arrays in, atomic writes out."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from faceveil.errors import InputError

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})


def to_rgb_array(img: Image.Image, name: str = "image") -> np.ndarray:
    """Convert a PIL image to an ``(H, W, 3)`` uint8 array, or refuse clearly.

    Grayscale, palette and CMYK are converted. RGBA/LA are accepted only when fully
    opaque: a transparent face cannot be anonymized faithfully. 16-bit and float
    images are refused rather than silently quantized.
    """
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        raise InputError(f"{name}: {mode} ({'16-bit' if mode.startswith('I') else 'float'}) images are not supported; convert to 8-bit RGB first")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"))
        if (rgba[..., 3] != 255).any():
            raise InputError(f"{name}: image has transparent pixels; flatten it onto a background first")
        return np.ascontiguousarray(rgba[..., :3])
    if mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Load an image file as an ``(H, W, 3)`` uint8 RGB array, turned upright by its EXIF orientation."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb_array(ImageOps.exif_transpose(img), str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from None


def load_mask(path: str | os.PathLike[str], size: tuple[int, int] | None = None) -> np.ndarray:
    """Load a mask image as an ``(H, W)`` bool array (nonzero = inside the face).

    ``size`` is ``(height, width)``; a mask of another size is refused.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            colour = img.mode not in ("1", "L", "P", "LA") and len(img.getbands()) >= 3
            rgb = np.asarray(img.convert("RGB")) if colour else None
            arr = np.asarray(img.convert("L"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such mask file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: not a readable mask image ({exc.__class__.__name__})") from None
    # A mask is one channel of (nearly) black and white; a photo given by mistake must not
    # become a mask that leaves the eyes and mouth visible.
    if rgb is not None and (np.abs(rgb.astype(np.int16) - rgb[..., :1]).max(axis=-1) > 8).mean() > 0.01:
        raise InputError(f"{path}: a mask must be one channel (white = face); this is a colour image")
    if ((arr > 32) & (arr < 223)).mean() > 0.05:
        raise InputError(f"{path}: not a mask: more than 5% of its pixels are grey levels (is it a photo?)")
    if size is not None and arr.shape != tuple(size):
        raise InputError(f"{path}: mask is {arr.shape[1]}x{arr.shape[0]} but the image is {size[1]}x{size[0]}")
    return arr >= 128


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None], mode: int | None = None) -> Path:
    """Call ``write(tmp_path)`` then rename into ``path``, so readers never see a partial file.

    The file gets the usual permissions (0666 less the umask), not mkstemp's 0600, unless ``mode``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp_path, mode)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def save_image(path: str | os.PathLike[str], image: np.ndarray, mode: int | None = None, **pil_kwargs: object) -> Path:
    """Atomically write an ``(H, W, 3)`` or ``(H, W)`` uint8 array; the suffix picks the format.

    ``mode`` sets the file's permissions (e.g. 0o600 for a recovered original)."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: unknown image suffix")
    img = Image.fromarray(np.ascontiguousarray(image))
    return atomic_write(path, lambda tmp: img.save(tmp, format=fmt, **pil_kwargs), mode)


def iter_image_files(inputs: list[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into image paths; files are kept as given."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out


def elliptical_mask(height: int, width: int, cx: float = 0.5, cy: float = 0.55, rx: float = 0.34, ry: float = 0.44) -> np.ndarray:
    """Default face mask for aligned crops: an ellipse in relative coordinates.

    The defaults cover the face of an FFHQ-style aligned crop (eyes at about 40 %
    of the height, chin near 90 %) while leaving hair and the corners out.
    """
    yy, xx = np.mgrid[0:height, 0:width]
    return ((xx + 0.5) / width - cx) ** 2 / rx**2 + ((yy + 0.5) / height - cy) ** 2 / ry**2 <= 1.0
