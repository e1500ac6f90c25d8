"""Names and settings shared by the pipeline, the file format and the CLI (no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass

# The exact scheme's fixed-point lattice: latents are multiples of this, held in float64.
LATTICE = 2.0**-20

SCHEMES: tuple[str, ...] = ("ddim", "fixed-point", "exact")
# signflip reproduces the published method and is insecure (see faceveil.models.key_transforms).
TRANSFORMS: tuple[str, ...] = ("rotation", "shuffle", "signflip")


@dataclass
class Settings:
    """The public, non-secret settings recovery must repeat."""

    scheme: str = "exact"
    steps: int = 50
    transform: str = "rotation"
    residual: bool = True  # seal the autoencoder's residual in the file, for pixel-exact recovery

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {self.scheme!r}; choose from {', '.join(SCHEMES)}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"unknown key transform {self.transform!r}; choose from {', '.join(TRANSFORMS)}")
        if self.steps < (2 if self.scheme == "exact" else 1):
            raise ValueError(f"the {self.scheme} scheme needs at least {2 if self.scheme == 'exact' else 1} steps")
