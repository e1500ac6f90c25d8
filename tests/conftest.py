"""Shared fixtures: the tiny backbone, a real face crop and its mask, keys."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from faceveil.data.images import elliptical_mask, load_image
from faceveil.data.samples import sample_photo_path
from faceveil.keys import SecretKey


@pytest.fixture(scope="session")
def tiny_backbone():
    from faceveil.models.backbones import load_backbone

    return load_backbone("tiny")


def _face(name: str, size: int) -> np.ndarray:
    img = load_image(sample_photo_path(name))
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.LANCZOS))


@pytest.fixture(scope="session")
def face128() -> np.ndarray:
    """Tom Hanks (insightface's aligned sample) at 128 px, uint8 RGB."""
    return _face("tom_hanks", 128)


@pytest.fixture(scope="session")
def face128_b() -> np.ndarray:
    """A second person: the astronaut's face region at 128 px."""
    img = load_image(sample_photo_path("astronaut"))[20:276, 130:386]
    return np.asarray(Image.fromarray(img).resize((128, 128), Image.Resampling.LANCZOS))


@pytest.fixture(scope="session")
def mask128() -> np.ndarray:
    return elliptical_mask(128, 128)


@pytest.fixture(scope="module")
def one_thread():
    """Toy-sized ops: one intra-op thread is as fast, and far faster on a busy 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def key() -> SecretKey:
    return SecretKey.generate()
