"""Training configs: the shipped ones load; typos, wrong types and nonsense fail at start, naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from faceveil.errors import ConfigError
from faceveil.train.config_schema import TrainConfig, config_yaml, flat_hparams, load_train_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.mark.parametrize("name", ["tiny", "sd2-inpaint", "ldm-ffhq"])
def test_shipped_configs_load(name):
    cfg = load_train_config(CONFIGS / f"{name}.yaml")
    assert isinstance(cfg, TrainConfig)
    assert cfg.model.backbone == name
    assert cfg.anonymize.scheme == "exact"


def _write(tmp: Path, text: str) -> Path:
    p = tmp / "c.yaml"
    p.write_text(text)
    return p


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_train_config(CONFIGS / "tiny.yaml", ["train.max_steps=7", "lora.conv_targets=[conv1]"])
    again = load_train_config(_write(tmp_path, config_yaml(cfg)))
    assert again == cfg
    assert again.train.max_steps == 7 and again.lora.conv_targets == ["conv1"]


def test_tiny_config_is_cpu_sized():
    cfg = load_train_config(CONFIGS / "tiny.yaml")
    assert cfg.train.mixed_precision == "no"
    assert cfg.data.shards == "samples"
    assert cfg.objective.perceptual_backbone == "random"  # LPIPS backbone weights are not downloadable offline
    assert cfg.data.image_size <= 128 and cfg.train.max_steps <= 100


def test_override_typo_names_the_key():
    with pytest.raises(ConfigError, match="identty_weight"):
        load_train_config(CONFIGS / "tiny.yaml", ["objective.identty_weight=2"])


def test_file_typo_names_file_and_key(tmp_path):
    p = _write(tmp_path, "optim:\n  lr: 1.0e-4\n  warmup_step: 10\n")
    with pytest.raises(ConfigError) as err:
        load_train_config(p)
    assert str(p) in str(err.value) and "warmup_step" in str(err.value)


def test_wrong_type_fails():
    with pytest.raises(ConfigError, match="max_steps"):
        load_train_config(CONFIGS / "tiny.yaml", ["train.max_steps=lots"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("objective.grad_steps=50", "objective.grad_steps"),
        ("anonymize.scheme=edict", "anonymize.scheme"),
        ("objective.unroll=truncated", "objective.unroll"),
        ("train.mixed_precision=fp8", "train.mixed_precision"),
        ("objective.identity_weight=-1", "objective.identity_weight"),
        ("lora.rank=0", "lora.rank"),
    ],
)
def test_semantic_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_train_config(CONFIGS / "tiny.yaml", [override])


@pytest.mark.parametrize("key", ["objective.steps", "objective.invert_scheme"])
def test_removed_objective_keys_fail_with_what_replaced_them(tmp_path, key):
    """Training runs the deployed trajectory now: an old config that sets its own steps or scheme fails at load."""
    value = "ddim" if key.endswith("scheme") else "8"
    with pytest.raises(ConfigError, match=rf"key '{key}' was removed: .*anonymize\."):
        load_train_config(CONFIGS / "tiny.yaml", [f"{key}={value}"])
    old = tmp_path / "old.yaml"
    old.write_text(f"objective:\n  {key.split('.')[1]}: {value}\n")
    with pytest.raises(ConfigError, match=rf"old\.yaml: key '{key}' was removed"):
        load_train_config(old)


def test_flat_hparams_are_scalars():
    flat = flat_hparams(load_train_config(CONFIGS / "sd2-inpaint.yaml"))
    assert flat["lora.rank"] == 16 and flat["model.backbone"] == "sd2-inpaint"
    assert all(isinstance(v, (int, float, str, bool)) for v in flat.values())


def test_entry_point_fails_at_start_on_typo(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train" / "finetune.py"), "--config", str(CONFIGS / "tiny.yaml"),
         f"output.run_dir={run_dir}", "objective.perceptual_wieght=0"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "perceptual_wieght" in proc.stderr and "Traceback" not in proc.stderr
    assert not run_dir.exists()  # nothing was built or written


def test_print_config_shows_resolved_values():
    import contextlib
    import io

    from faceveil.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["train", "--config", str(CONFIGS / "tiny.yaml"), "train.max_steps=3", "--print-config"])
    assert rc == 0
    assert "max_steps: 3" in buf.getvalue()


def test_existing_run_without_resume_is_refused(tmp_path):
    from faceveil.train.recipe import recipe_main

    ckpt = tmp_path / "checkpoints" / "step-000002"
    ckpt.mkdir(parents=True)
    (ckpt / "train_state.json").write_text('{"step": 2, "batches": 2, "images": 8}')
    cfg = load_train_config(CONFIGS / "tiny.yaml", [f"output.run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="--resume latest"):
        recipe_main(cfg)


def test_resume_choices(tmp_path):
    from faceveil.train.checkpointing import resolve_resume

    assert resolve_resume(tmp_path, None) is None
    assert resolve_resume(tmp_path, "auto") is None  # nothing yet: start fresh
    with pytest.raises(ConfigError, match="no checkpoint"):
        resolve_resume(tmp_path, "latest")
    for step in (2, 10):
        ckpt = tmp_path / "checkpoints" / f"step-{step:06d}"
        ckpt.mkdir(parents=True)
        (ckpt / "train_state.json").write_text(f'{{"step": {step}}}')
    (tmp_path / "checkpoints" / ".tmp-step-000012").mkdir()  # an interrupted save is never picked
    assert resolve_resume(tmp_path, "auto").name == "step-000010"
    assert resolve_resume(tmp_path, "latest").name == "step-000010"
    assert resolve_resume(tmp_path, "2").name == "step-000002"
    assert resolve_resume(tmp_path, str(tmp_path / "checkpoints" / "step-000002")).name == "step-000002"
    with pytest.raises(ConfigError, match="no such checkpoint"):
        resolve_resume(tmp_path, "7")
