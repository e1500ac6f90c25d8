"""An export's recorded training size and anonymize settings win over the eval config."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from faceveil.evaluate.config import load_eval_config
from faceveil.evaluate.exports import adapter_settings, apply_training_size
from faceveil.evaluate.faces import Notes
from faceveil.evaluate.run import resolve_config_path


def test_export_size_and_settings_win(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "faceveil.json").write_text(json.dumps({"image_size": 64, "settings": {"scheme": "exact", "steps": 6, "transform": "signflip"}}))
    cfg = load_eval_config(resolve_config_path("tiny.yaml"), [f"model.adapter={export}", "model.steps=10"])
    notes = Notes()
    apply_training_size(cfg, notes)
    assert cfg.data.size == 64 and "trained at 64 px" in notes.messages[0]
    bb = SimpleNamespace(extra={"settings": json.loads((export / "faceveil.json").read_text())["settings"]})
    s = adapter_settings(cfg, bb, notes)
    assert (s.scheme, s.steps, s.transform, s.residual) == ("exact", 6, "signflip", True)
    assert "steps 6, transform signflip" in notes.messages[-1]


def test_the_shipped_configs_evaluate_sd2_at_its_training_size():
    for name in ("lfw.yaml", "celebahq.yaml"):
        cfg = load_eval_config(resolve_config_path(name), ["model.adapter=null"])
        notes = Notes()
        apply_training_size(cfg, notes)
        assert cfg.model.backbone == "sd2-inpaint" and cfg.data.size == 512 and not notes.messages, name
    off = load_eval_config(resolve_config_path("lfw.yaml"), ["model.adapter=null", "data.size=256"])
    notes = Notes()
    apply_training_size(off, notes)
    assert notes.messages == ["model.backbone sd2-inpaint was trained at 512 px but runs at data.size 256 px"]


def test_trained_adapters_are_scored_on_held_out_faces_only(tmp_path):
    """ours-adapters must not score the identities its training saw: the export records its split."""
    import json

    import numpy as np

    from faceveil.data.splits import held_out
    from faceveil.errors import ConfigError
    from faceveil.evaluate.faces import EvalFace, Notes
    from faceveil.evaluate.setup import held_out_faces

    export = tmp_path / "export"
    export.mkdir()
    faces = [EvalFace(f"f{i}", np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), bool), label=f"person{i // 2}") for i in range(16)]
    cfg = load_eval_config(resolve_config_path("tiny.yaml"), [f"model.adapter={export}"])
    (export / "faceveil.json").write_text(json.dumps({"training": {"val_holdout": 0.25}}))
    notes = Notes()
    kept = held_out_faces(cfg, faces, notes)
    want = [f for f in faces if held_out({"label": f.label}, 0.25)]
    assert kept == want and 0 < len(kept) < len(faces)
    assert all(f.label == g.label for f, g in zip(kept[::2], kept[1::2]))  # a person is in or out, never split
    assert any("held out" in n for n in notes.messages)
    (export / "faceveil.json").write_text(json.dumps({"training": {"val_holdout": 1e-9}}))
    with pytest.raises(ConfigError, match="none of the 16 faces"):
        held_out_faces(cfg, faces, Notes())
    (export / "faceveil.json").write_text(json.dumps({"training": {}}))
    notes = Notes()
    assert held_out_faces(cfg, faces, notes) == faces and any("may include training identities" in n for n in notes.messages)
