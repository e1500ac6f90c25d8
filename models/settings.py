"""Names and settings shared by the pipeline, the file format and the CLI (no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass

SCHEMES: tuple[str, ...] = ("ddim", "fixed-point", "exact")
TRANSFORMS: tuple[str, ...] = ("signflip", "shuffle")


@dataclass
class Settings:
    """The public, non-secret settings recovery must repeat."""

    scheme: str = "exact"
    steps: int = 50
    transform: str = "shuffle"
    residual: bool = True  # seal the autoencoder's residual in the file, for pixel-exact recovery

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {self.scheme!r}; choose from {', '.join(SCHEMES)}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"unknown key transform {self.transform!r}; choose from {', '.join(TRANSFORMS)}")
        if self.steps < (2 if self.scheme == "exact" else 1):
            raise ValueError(f"the {self.scheme} scheme needs at least {2 if self.scheme == 'exact' else 1} steps")
