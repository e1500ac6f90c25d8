"""Export -> load -> anonymize -> recover, the model card, and publishing (against local targets)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faceveil.errors import InputError
from faceveil.fileformat import read_header, read_veiled, write_veiled
from faceveil.keys import SecretKey
from faceveil.models.backbones import build_backbone, file_sha256, load_backbone
from faceveil.models.pipeline import Anonymizer, Settings, to_tensor, to_uint8
from faceveil.train.checkpointing import ADAPTER_DIR
from faceveil.train.config_schema import load_train_config
from faceveil.train.export import export_run
from faceveil.train.hub import LocalFolderApi, push_to_hub
from faceveil.train.lora import LORA_WEIGHTS, load_lora
from faceveil.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
FAST = ["anonymize.steps=6", "objective.steps=4", "data.batch_size=2", "data.val_images=2", "output.progress=false",
        "output.validate_at_start=false", "train.max_steps=2", "objective.key_seed=0", "train.cpu_threads=1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    train(load_train_config(ROOT / "configs" / "tiny.yaml", [f"output.run_dir={run_dir}", *FAST]))
    return run_dir


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    return export_run(run, tmp_path_factory.mktemp("exp") / "adapter")


@pytest.fixture(scope="module")
def faces():
    from faceveil.data.loader import make_loader
    from faceveil.train.loop import sample_shards_dir

    b = next(iter(make_loader(sample_shards_dir(64), batch_size=2, image_size=64, shuffle=0)))
    return np.ascontiguousarray(to_uint8(b["image"])), (b["mask"][:, 0] > 0.5).numpy()


def _eps(bb):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 4, 8, 8, generator=g)
    cond = {"mask": torch.ones(2, 1, 8, 8), "masked_latents": torch.randn(2, 4, 8, 8, generator=g)}
    with torch.no_grad():
        return bb.eps(z, 400, cond)


def test_export_folder_contents(run, exported):
    names = {p.name for p in exported.iterdir()}
    assert {"faceveil.json", LORA_WEIGHTS, "prompt_embeds.safetensors", "config.yaml", "README.md"} <= names
    manifest = json.loads((exported / "faceveil.json").read_text())  # strict JSON
    assert manifest["settings"] == {"scheme": "exact", "steps": 6, "transform": "shuffle"}
    assert manifest["base"]["spec"] == "tiny"
    assert manifest["lora"]["sha256"] == file_sha256(exported / LORA_WEIGHTS)
    assert manifest["lora"]["rank"] == 8 and "conv1" in manifest["lora"]["target_modules"]
    assert manifest["training"]["step"] == 2 and manifest["training"]["data"]["samples"] > 0
    assert manifest["metrics"]["val/recovery_latent_error"] <= 1e-4
    # The published weights are the run's last checkpoint's, byte for byte.
    assert file_sha256(exported / LORA_WEIGHTS) == file_sha256(run / "checkpoints" / "step-000002" / ADAPTER_DIR / LORA_WEIGHTS)


def test_model_card(exported):
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlicense:")
    for needle in ("## Base model", "`tiny`", "## Training data", "samples", "```yaml", "identity_weight",
                   "## Evaluation (measured)", "max latent error", "non-commercial research only", "never redistributed",
                   "scheme `exact`, 6 steps"):
        assert needle in card, needle


def test_export_loads_anonymizes_and_recovers(run, exported, faces, tmp_path):
    bb = load_backbone(str(exported))
    assert bb.spec == str(exported.resolve())
    assert bb.adapter_hash == file_sha256(exported / LORA_WEIGHTS)
    assert bb.extra["settings"]["steps"] == 6
    # The same UNet as the trained one, not the base.
    trained = build_backbone("tiny")
    load_lora(trained.unet, run / "checkpoints" / "step-000002" / ADAPTER_DIR / LORA_WEIGHTS)
    assert torch.equal(_eps(bb), _eps(trained))
    assert not torch.equal(_eps(bb), _eps(build_backbone("tiny")))
    # diffusers loads the folder too.
    theirs = build_backbone("tiny")
    theirs.unet.load_lora_adapter(str(exported), weight_name=LORA_WEIGHTS, prefix="unet")
    assert torch.allclose(_eps(theirs), _eps(bb), atol=1e-6)

    images, masks = faces
    key = SecretKey.generate()
    an = Anonymizer(bb, Settings(**bb.extra["settings"]))
    veiled = an.anonymize(list(images), list(masks), key)
    paths = [write_veiled(tmp_path / f"v{i}.png", v, key) for i, v in enumerate(veiled)]
    header = read_header(paths[0])
    assert header["backbone"] == bb.spec and header["adapter_hash"] == bb.adapter_hash
    # Recover with a backbone loaded afresh from the spec the file records.
    again = load_backbone(header["backbone"])
    rec = Anonymizer(again, Settings(**bb.extra["settings"])).recover([read_veiled(p, key) for p in paths], key)
    z0 = bb.encode(to_tensor(images)).double()
    assert float((torch.stack([r.latent for r in rec]).double() - z0).abs().max()) <= 1e-4
    assert all(np.array_equal(r.image, images[i]) for i, r in enumerate(rec))


def test_cli_export_anonymize_recover_and_push(run, faces, tmp_path):
    from faceveil.cli import main

    out, hub = tmp_path / "adapter", tmp_path / "hub"
    assert main(["export", str(run), "-o", str(out), "--merge", "--push-to-hub", hub.as_uri()]) == 0
    assert (hub / "faceveil.json").read_bytes() == (out / "faceveil.json").read_bytes()
    assert (hub / LORA_WEIGHTS).read_bytes() == (out / LORA_WEIGHTS).read_bytes()
    assert main(["export", str(run), "-o", str(out)]) == 2  # no silent overwrite
    # The merged UNet computes what base + adapter compute.
    from diffusers import UNet2DConditionModel

    bb = load_backbone(str(out))
    merged = build_backbone("tiny")
    merged.unet = UNet2DConditionModel.from_pretrained(out / "unet")
    assert torch.allclose(_eps(merged), _eps(bb), atol=1e-5)

    images, masks = faces
    src, mdir = tmp_path / "in", tmp_path / "masks"
    src.mkdir()
    mdir.mkdir()
    for i in range(len(images)):
        Image.fromarray(images[i]).save(src / f"f{i}.png")
        Image.fromarray(masks[i].astype(np.uint8) * 255).save(mdir / f"f{i}.png")
    key = tmp_path / "k.key"
    assert main(["keygen", "-o", str(key)]) == 0
    assert main(["anonymize", str(src), "-o", str(tmp_path / "veiled"), "--key", str(key), "--mask", str(mdir),
                 "--backbone", str(out), "--steps", "6", "--batch-size", "2"]) == 0
    assert main(["recover", str(tmp_path / "veiled"), "-o", str(tmp_path / "rec"), "--key", str(key)]) == 0
    for i in range(len(images)):
        veiled = np.array(Image.open(tmp_path / "veiled" / f"f{i}.png").convert("RGB"))
        rec = np.array(Image.open(tmp_path / "rec" / f"f{i}.png").convert("RGB"))
        assert not np.array_equal(veiled, images[i])
        assert np.array_equal(rec, images[i])


def test_tampered_adapter_is_refused(exported, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    data = bytearray((bad / LORA_WEIGHTS).read_bytes())
    data[-1] ^= 1
    (bad / LORA_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(InputError, match="SHA-256"):
        load_backbone(str(bad))


class RecordingApi:
    """An HfApi stand-in that records the calls push_to_hub makes."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False):
        self.calls.append(("create_repo", repo_id, repo_type, private, exist_ok))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, commit_message=None, **kwargs):
        self.calls.append(("upload_folder", repo_id, Path(folder_path), repo_type))
        return f"https://huggingface.co/{repo_id}/commit/abc"


def test_push_to_hub_calls(exported):
    api = RecordingApi()
    result = push_to_hub(exported, "someone/faceveil-tiny", api=api, private=True)
    assert api.calls == [("create_repo", "someone/faceveil-tiny", "model", True, True),
                         ("upload_folder", "someone/faceveil-tiny", exported, "model")]
    assert result.endswith("/commit/abc")


def test_push_to_local_folder_and_refusals(exported, tmp_path):
    target = tmp_path / "mirror"
    push_to_hub(exported, target.as_uri())
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in exported.iterdir())
    with pytest.raises(InputError, match="not a faceveil export"):
        push_to_hub(tmp_path, target.as_uri())
    with pytest.raises(InputError, match="does not exist"):
        LocalFolderApi(tmp_path / "nowhere").upload_folder(repo_id="x", folder_path=exported)
