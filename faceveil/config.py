"""Typed YAML configs: an OmegaConf structured schema (a dataclass) + YAML file + dotted overrides.

A misspelt key or a value of the wrong type fails at start with one line that
names the file and the key. Secrets never belong in a config: keys are files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from faceveil.errors import ConfigError

T = TypeVar("T")


def load_config(schema: type[T], path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> T:
    """Merge ``path`` (YAML) and ``overrides`` (``a.b=value``) onto the schema's defaults.

    Returns an instance of ``schema`` (a dataclass), validated by OmegaConf.
    """
    where = str(path) if path is not None else "<defaults>"
    try:
        cfg: DictConfig = OmegaConf.structured(schema)
        OmegaConf.set_struct(cfg, True)
        if path is not None:
            if not Path(path).is_file():
                raise ConfigError(f"{path}: no such config file")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
        if overrides:
            where = f"{where} + overrides"
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        msg = str(exc).splitlines()[0]
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"{where}: {'key ' + repr(key) + ': ' if key else ''}{msg}") from None


def dump_config(cfg: Any) -> str:
    """YAML text of a config object (for saving with a run)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
