"""An export's recorded training size and anonymize settings win over the eval config."""

from __future__ import annotations

import json
from types import SimpleNamespace

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
