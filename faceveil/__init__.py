"""faceveil: secure, reversible face anonymization with a key-conditioned diffusion model."""

__version__ = "0.1.0"
