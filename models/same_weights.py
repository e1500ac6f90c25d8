"""Does a loaded backbone hold the weights an anonymized file was made with?

Recovery with other weights silently produces another face, so recovery compares the base weights'
own SHA-256 where the file records it (version 3: ``Backbone.extra["base_sha256"]``, sealed), and two ids:

- the *base* id: the layout and where its weights came from (``tiny``, ``sd2-inpaint:random:0``,
  ``sd2-inpaint:stabilityai/...``), in the canonical form ``load_backbone`` gives ``Backbone.spec``;
- the *adapter* id: the SHA-256 of the LoRA weights file (None for a base model).

A file whose recorded backbone is not a base spec (an export folder, or an export's name) has an
unknown base here; the adapter hash alone then decides, which is enough because an adapter only
loads on the base it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

from faceveil.fileformat.records import escape
from faceveil.models.backbones import LAYOUTS, Backbone


def canonical_base(spec: str) -> str | None:
    """``spec`` as ``load_backbone`` would name the base it builds, or None if it names no layout."""
    name, _, rest = spec.partition(":")
    layout = LAYOUTS.get(name)
    if layout is None:
        return None
    if layout.pretrained is None:
        return name  # random-only layouts: one set of weights
    if rest.startswith("random"):
        seed = rest.partition(":")[2] or "0"
        return f"{name}:random:{int(seed) if seed.isdigit() else seed}"
    return f"{name}:{rest or layout.default_source}"


def loaded_base(bb: Backbone) -> str:
    """The base id of a loaded backbone; for an export, the base its manifest names."""
    export = (bb.extra or {}).get("export") or {}
    base = export.get("base") or {}
    for spec in (base.get("resolved"), bb.extra.get("base_spec") if bb.extra else None, bb.spec):
        if isinstance(spec, str) and canonical_base(spec) is not None:
            return canonical_base(spec)  # type: ignore[return-value]
    return bb.spec


def _short(adapter: str | None) -> str:
    return f"adapter sha256 {adapter[:12]}" if adapter else "no adapter"


@dataclass(frozen=True)
class WeightsMismatch:
    needs: str  # what the file was made with
    loaded: str  # what this process loaded
    how: str  # how to load the right weights

    def __str__(self) -> str:
        return f"made with {self.needs}, but {self.loaded} is loaded; {self.how}"


def weights_mismatch(recorded_backbone: str, recorded_adapter: str | None, bb: Backbone,
                     recorded_base_sha256: str | None = None) -> WeightsMismatch | None:
    """None when ``bb`` holds the weights a file records (base id, the base weights' own hash when the
    file has one, and the adapter hash), else what differs."""
    file_base = canonical_base(recorded_backbone)
    have_base, have_adapter = loaded_base(bb), bb.adapter_hash
    have_hash = (bb.extra or {}).get("base_sha256")
    if recorded_base_sha256 and have_hash and recorded_base_sha256 != have_hash:
        # Same name, other weights: another seed, another hub revision, a retrained autoencoder.
        return WeightsMismatch(
            f"{escape(file_base or recorded_backbone)} weights sha256 {escape(recorded_base_sha256[:12])}",
            f"{escape(have_base)} weights sha256 {have_hash[:12]}",
            "recover with the very weights it was made with (the same revision and files), or --force to try these "
            "anyway (the face will be wrong)",
        )
    if recorded_adapter == have_adapter and (file_base is None or file_base == have_base):
        return None
    if file_base is None and recorded_adapter:
        needs = f"{escape(recorded_backbone)} ({_short(recorded_adapter)})"
    else:
        needs = f"{escape(file_base or recorded_backbone)} with {_short(recorded_adapter)}"
    loaded = f"{escape(have_base)} with {_short(have_adapter)}"
    if recorded_adapter:
        how = (f"recover with --backbone EXPORT_DIR, the export whose faceveil.json lists lora sha256 "
               f"{recorded_adapter[:12]}...")
    else:
        how = f"recover with --backbone {escape(file_base or recorded_backbone)} (the base model, no adapter)"
    return WeightsMismatch(needs, loaded, how + ", or --force to try these weights anyway (the face will be wrong)")
