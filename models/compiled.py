"""An opt-in compiled UNet path (``torch.compile``) sharing the eager backbone's weights.

Compiled kernels fuse and reorder floating-point work, so their bits can differ from
eager ones; the path a file was anonymized on is recorded (``Veiled.compute["unet"]``)
and recovery runs the same one. Attention already goes through PyTorch's SDPA
(diffusers' default processor) on both paths.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from faceveil.models.backbones import Backbone


def compiled_backbone(backbone: Backbone) -> Backbone:
    """A backbone whose UNet forward is compiled for fixed shapes; the autoencoder stays eager.

    The UNet object is a shallow copy (same parameters, same class, so the layout checks
    still hold) whose ``forward`` is the compiled one; the eager backbone is untouched.
    """
    unet = copy.copy(backbone.unet)
    unet.forward = torch.compile(backbone.unet.forward, dynamic=False)
    return dataclasses.replace(backbone, unet=unet)
