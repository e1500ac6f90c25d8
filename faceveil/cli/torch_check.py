"""A torch/torchvision pair that does not belong together, said in one line with the fix.

pip can leave a torchvision built for another torch (an upgrade of one, or the two from
different indexes: CPU and CUDA wheels). It then fails deep inside an import with
``operator torchvision::nms does not exist``. The versions are read from the installed
metadata, without importing either, so the check costs about a millisecond.
"""

from __future__ import annotations

import importlib.metadata

FIX = ("reinstall both from one index, e.g. on a CPU-only machine: pip install --force-reinstall torch torchvision "
       "--index-url https://download.pytorch.org/whl/cpu")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def mismatch(torch_version: str | None, vision_version: str | None) -> str | None:
    """Why the pair does not match, or None. torch 2.N goes with torchvision 0.(N + 15); the local
    build tags (``+cpu``, ``+cu121``) must agree."""
    if not torch_version or not vision_version:
        return None
    t_base, _, t_tag = torch_version.partition("+")
    v_base, _, v_tag = vision_version.partition("+")
    t, v = t_base.split("."), v_base.split(".")
    if t[0] == "2" and v[0] == "0" and len(t) > 1 and len(v) > 1 and t[1].isdigit() and v[1].isdigit():
        if int(v[1]) != int(t[1]) + 15:
            return f"torch {torch_version} and torchvision {vision_version} do not match (torch 2.{t[1]} needs torchvision 0.{int(t[1]) + 15})"
    if t_tag and v_tag and t_tag != v_tag:
        return f"torch {torch_version} and torchvision {vision_version} are builds for different devices"
    return None


def check_installed() -> str | None:
    """One line naming the mismatch and the fix, or None when the installed pair is fine."""
    why = mismatch(_version("torch"), _version("torchvision"))
    return f"{why}; {FIX}" if why else None


def explain(exc: BaseException) -> str | None:
    """The same line for the error a mismatched pair raises at import, else None."""
    if "torchvision::nms does not exist" in str(exc):
        return f"torchvision does not match the installed torch ({_version('torch')} with {_version('torchvision')}); {FIX}"
    return None
