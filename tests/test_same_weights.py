"""The weights check recovery runs: base ids in canonical form, adapters by hash."""

from __future__ import annotations

from faceveil.models.backbones import SD2_INPAINT_ID
from faceveil.models.same_weights import canonical_base, weights_mismatch


def test_canonical_base_names_what_load_backbone_builds(tiny_backbone):
    assert canonical_base("tiny") == "tiny" == tiny_backbone.spec
    assert canonical_base("sd2-inpaint") == f"sd2-inpaint:{SD2_INPAINT_ID}"
    assert canonical_base("sd2-inpaint:random") == canonical_base("sd2-inpaint:random:0") == "sd2-inpaint:random:0"
    assert canonical_base("/runs/x/export") is None and canonical_base("my-export") is None


def test_mismatch_on_base_or_adapter(tiny_backbone):
    assert weights_mismatch("tiny", None, tiny_backbone) is None
    assert weights_mismatch("sd2-inpaint:random:0", None, tiny_backbone) is not None
    why = weights_mismatch("/gone/export", "ab" * 32, tiny_backbone)
    assert why is not None and "abababababab" in why.needs and "no adapter" in why.loaded
    # A file naming its export by a path or name, not a base: the adapter hash decides.
    tiny_backbone.adapter_hash = "cd" * 32
    try:
        assert weights_mismatch("some-export-name", "cd" * 32, tiny_backbone) is None
        assert weights_mismatch("tiny", "cd" * 32, tiny_backbone) is None
    finally:
        tiny_backbone.adapter_hash = None
    # Untrusted header text is printed escaped, on one line.
    assert "\n" not in str(weights_mismatch("evil\nrecovered 1 (key verified)", None, tiny_backbone))


def test_base_weights_hash_tells_other_weights_of_one_name():
    import torch

    from faceveil.models.backbones import Backbone, load_backbone, tiny_components, weights_sha256
    from faceveil.models.same_weights import weights_mismatch

    tiny = load_backbone("tiny")
    other = Backbone(name="tiny", spec="tiny", **tiny_components(1))  # same name, another seed
    assert tiny.extra["base_sha256"] == weights_sha256(Backbone(name="tiny", spec="tiny", **tiny_components(0)))
    assert weights_sha256(other) != tiny.extra["base_sha256"]
    # Hashed before the dtype cast: the weights, not the precision they run in.
    assert load_backbone("tiny", dtype=torch.bfloat16).extra["base_sha256"] == tiny.extra["base_sha256"]
    assert weights_mismatch("tiny", None, tiny, tiny.extra["base_sha256"]) is None
    why = weights_mismatch("tiny", None, tiny, weights_sha256(other))
    assert why is not None and "weights sha256" in str(why) and "--force" in str(why)
