"""Export -> load -> anonymize -> recover, the model card, and publishing (against local targets)."""

from __future__ import annotations

import inspect
import json
import shutil
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
from faceveil.train.export import export_run, strict_json
from faceveil.train.hub import LocalFolderApi, push_to_hub
from faceveil.train.lora import LORA_WEIGHTS, load_lora
from faceveil.train.recipe import recipe_main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["anonymize.steps=6", "data.batch_size=2", "data.val_images=2", "output.progress=false",
        "output.validate_at_start=false", "train.max_steps=2", "objective.key_seed=0", "train.cpu_threads=1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    recipe_main(load_train_config(ROOT / "configs" / "tiny.yaml", [f"output.run_dir={run_dir}", *FAST]))
    return run_dir


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    return export_run(run, tmp_path_factory.mktemp("exp") / "adapter")


@pytest.fixture(scope="module")
def faces():
    from faceveil.data.loader import make_loader
    from faceveil.train.sample_shards import sample_shards_dir

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
    assert manifest["settings"] == {"scheme": "exact", "steps": 6, "transform": "rotation"}
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
    # The public header names no model; the sealed record names the base and the adapter by name and
    # hash (and the base weights' own hash), never the export's local path.
    assert "adapter" not in header and "backbone" not in header and str(tmp_path) not in json.dumps(header)
    model = read_veiled(paths[0], key)
    assert model.backbone == bb.extra["base_spec"] and (model.adapter_name, model.adapter_hash) == (Path(bb.spec).name, bb.adapter_hash)
    assert model.base_sha256 == bb.extra["base_sha256"] and str(tmp_path).encode() not in paths[0].read_bytes()
    again = load_backbone(bb.spec)
    rec = Anonymizer(again, Settings(**bb.extra["settings"])).recover(veiled, key)
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
    # A version 3 file opens with the key alone: no export, no base model.
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
    """An HfApi stand-in that binds each call to the real ``huggingface_hub.HfApi`` method's signature and records
    the bound arguments: a keyword the real API does not take, or a missing required one, fails the bind."""

    def __init__(self):
        self.calls = []

    def _record(self, name, args, kwargs):
        from huggingface_hub import HfApi

        bound = inspect.signature(getattr(HfApi, name)).bind(self, *args, **kwargs)
        self.calls.append((name, {k: v for k, v in bound.arguments.items() if k != "self"}))

    def create_repo(self, *args, **kwargs):
        self._record("create_repo", args, kwargs)
        return f"https://huggingface.co/{kwargs.get('repo_id', args[0] if args else None)}"

    def upload_folder(self, *args, **kwargs):
        self._record("upload_folder", args, kwargs)
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"


def test_push_to_hub_calls(exported):
    api = RecordingApi()
    result = push_to_hub(exported, "someone/faceveil-tiny", api=api, private=True)
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1] == {"repo_id": "someone/faceveil-tiny", "repo_type": "model", "private": True, "exist_ok": True}
    upload = api.calls[1][1]
    assert set(upload) == {"repo_id", "folder_path", "repo_type", "commit_message"}
    assert upload["repo_id"] == "someone/faceveil-tiny" and upload["repo_type"] == "model"
    assert Path(upload["folder_path"]) == exported and upload["commit_message"]
    assert result.endswith("/commit/abc")


def test_recording_api_rejects_what_the_real_api_rejects():
    with pytest.raises(TypeError):
        RecordingApi().create_repo("someone/x", no_such_argument=True)
    with pytest.raises(TypeError):
        RecordingApi().upload_folder("someone/x", folder_path=".")  # repo_id is keyword-only in HfApi


# --------------------------------------------------------------------------- which numbers, which folders


def _copy_run(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _write_metrics(run: Path, records: list[dict]) -> None:
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_export_publishes_the_validation_of_the_exported_step_only(run, tmp_path):
    r = _copy_run(run, tmp_path / "run")
    recs = _metrics(r)
    own = [x for x in recs if x["step"] == 2 and "val/recovery_latent_error" in x]
    assert own  # the run validated its last step
    # Another segment validated other weights afterwards (and before): those numbers must not be published.
    foreign = {"val/recovery_latent_error": 123.0, "val/identity_cos": 0.5}
    _write_metrics(r, [{"step": 1, **foreign}, *recs, {"step": 7, **foreign}])
    (r / "final.json").write_text(json.dumps({"step": 7, "wall_time_s": 4242.0}))
    out = export_run(r, tmp_path / "a")
    manifest = json.loads((out / "faceveil.json").read_text())
    assert manifest["metrics"] == strict_json(own[-1])
    card = (out / "README.md").read_text()
    assert "Validation at step 2" in card and "123" not in card
    assert "4242" not in card  # final.json belongs to a segment that ended at step 7
    # No validation record at the exported step: none is published, and the card says so.
    _write_metrics(r, [x for x in _metrics(r) if not (x["step"] == 2 and any(k.startswith("val/") for k in x))])
    out = export_run(r, tmp_path / "b")
    assert json.loads((out / "faceveil.json").read_text())["metrics"] == {}
    card = (out / "README.md").read_text()
    assert "No validation numbers were recorded at step 2" in card and "123" not in card


def test_export_refuses_outputs_that_would_destroy_the_run(run, tmp_path):
    r = _copy_run(run, tmp_path / "run")
    before = sorted(str(p.relative_to(r)) for p in r.rglob("*"))
    for out, what in ((r, "is the run directory"), (r / "checkpoints" / "x", "is inside the run directory"),
                      (tmp_path, "contains the run directory")):
        with pytest.raises(InputError, match=what) as err:
            export_run(r, out, overwrite=True)
        assert str(out) in str(err.value)
    assert sorted(str(p.relative_to(r)) for p in r.rglob("*")) == before
    # --overwrite replaces an earlier export only, never another folder or a file.
    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.png").write_bytes(b"x")
    with pytest.raises(InputError, match="not a faceveil export folder"):
        export_run(r, other, overwrite=True)
    assert (other / "keep.png").read_bytes() == b"x"
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(InputError, match="is not a folder") as err:
        export_run(r, afile, overwrite=True)
    assert str(afile) in str(err.value) and afile.read_text() == "x"
    out = export_run(r, tmp_path / "exp")
    (out / "stale.txt").write_text("x")
    export_run(r, out, overwrite=True)
    assert (out / "faceveil.json").is_file() and not (out / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exp.")]


def test_eval_json_errors_are_one_line_naming_the_file(run, tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(InputError, match="no such file") as err:
        export_run(run, tmp_path / "a", eval_json=missing)
    assert str(err.value).startswith(str(missing))
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(InputError, match="not valid JSON") as err:
        export_run(run, tmp_path / "a", eval_json=bad)
    assert str(err.value).startswith(str(bad)) and "\n" not in str(err.value)
    assert not (tmp_path / "a").exists()
    from faceveil.cli import main

    assert main(["export", str(run), "-o", str(tmp_path / "a"), "--eval-json", str(bad)]) == 2


def test_model_card_keeps_evaluation_numbers_not_paths(run, tmp_path):
    report = {
        "name": "/home/alice/eval-run",
        "config": {"key": "/home/alice/secret.key", "data": {"path": "/data/faces"}, "output": "/home/alice/out"},
        "methods": {"ours": {"tar_at_far": 0.125, "folder": "/home/alice/out/ours", "ok": True},
                    "blur": {"tar_at_far": 0.75}},
        "security": {"wrong_key_psnr": float("inf")},
        "notes": ["read /data/faces/x.png"],
        "skipped_inputs": ["/data/faces/y.png"],
    }
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(report, allow_nan=True))
    out = export_run(run, tmp_path / "a", eval_json=path)
    card, manifest_text = (out / "README.md").read_text(), (out / "faceveil.json").read_text()
    for text in (card, manifest_text):
        assert "/home/alice" not in text and "/data/faces" not in text and "secret.key" not in text
    assert "| methods.ours.tar_at_far | 0.125 |" in card and "| methods.blur.tar_at_far | 0.75 |" in card
    assert "security.wrong_key_psnr" in card
    assert json.loads(manifest_text)["evaluation"] == {"methods": {"ours": {"tar_at_far": 0.125}, "blur": {"tar_at_far": 0.75}},
                                                       "security": {"wrong_key_psnr": "inf"}}


def test_push_to_local_folder_and_refusals(exported, tmp_path):
    target = tmp_path / "mirror"
    push_to_hub(exported, target.as_uri())
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in exported.iterdir())
    with pytest.raises(InputError, match="not a faceveil export"):
        push_to_hub(tmp_path, target.as_uri())
    with pytest.raises(InputError, match="does not exist"):
        LocalFolderApi(tmp_path / "nowhere").upload_folder(repo_id="x", folder_path=exported)


def _other_export(exported: Path, dest: Path) -> Path:
    """A second, loadable export of the same base whose adapter weights differ (scaled by 1.5)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    shutil.copytree(exported, dest)
    weights = dest / LORA_WEIGHTS
    with safe_open(str(weights), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) * 1.5 for k in f.keys()}
    save_file(tensors, str(weights), metadata=meta)
    manifest = json.loads((dest / "faceveil.json").read_text())
    manifest["lora"]["sha256"] = file_sha256(weights)
    (dest / "faceveil.json").write_text(json.dumps(manifest))
    return dest


def test_recover_refuses_other_weights_unless_forced(exported, faces, tmp_path, capsys):
    from faceveil.cli import main

    other = _other_export(exported, tmp_path / "other")
    mine, theirs = file_sha256(exported / LORA_WEIGHTS), file_sha256(other / LORA_WEIGHTS)
    assert mine != theirs
    images, masks = faces
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(images[0]).save(src / "f.png")
    Image.fromarray(masks[0].astype(np.uint8) * 255).save(tmp_path / "m.png")
    key = tmp_path / "k.key"
    assert main(["keygen", "-o", str(key)]) == 0
    common = ["--key", str(key), "--device", "cpu"]
    # Version 2 files, which recover by replaying the model: the weights check is theirs.
    from faceveil.fileformat.write import write_veiled_v2
    from faceveil.keys import load_key

    for name, backbone in (("ex", str(exported)), ("base", "tiny")):
        bb = load_backbone(backbone)
        settings = Settings(**{**(bb.extra.get("settings") or {}), "steps": 6})
        [v] = Anonymizer(bb, settings).anonymize([images[0]], [masks[0]], load_key(key))
        write_veiled_v2(tmp_path / name / "f.png", v, load_key(key))
    capsys.readouterr()

    def recover(veiled: str, out: str, *extra: str) -> tuple[int, str]:
        rc = main(["recover", str(tmp_path / veiled), "-o", str(tmp_path / out), *common, *extra])
        return rc, capsys.readouterr().err

    # Another export, and the base model, are refused with one line saying what is needed and how to load it.
    rc, err = recover("ex", "r1", "--backbone", str(other))
    line = next(x for x in err.splitlines() if "wrong weights" in x)
    assert rc == 1 and "recovered 0, failed 1" in err and not (tmp_path / "r1" / "f.png").exists()
    # Files name the base model and the adapter's hash, never the export's path.
    assert f"made with tiny with adapter sha256 {mine[:12]}, but tiny with adapter sha256 {theirs[:12]} is loaded" in line
    assert str(exported) not in err
    assert "--backbone EXPORT_DIR" in line and "--force" in line
    rc, err = recover("ex", "r2", "--backbone", "tiny")
    assert rc == 1 and f"made with tiny with adapter sha256 {mine[:12]}, but tiny with no adapter is loaded" in err
    rc, err = recover("base", "r3", "--backbone", str(exported))
    assert rc == 1 and f"made with tiny with no adapter, but tiny with adapter sha256 {mine[:12]}" in err
    assert "--backbone tiny (the base model, no adapter)" in err
    # --force recovers anyway, says what it bypassed, and the face is not the original.
    rc, err = recover("ex", "r4", "--backbone", str(other), "--force")
    assert rc == 0 and "--force bypasses the weights check" in err
    assert not np.array_equal(np.array(Image.open(tmp_path / "r4" / "f.png").convert("RGB")), images[0])
    # The right weights: a copy of the export elsewhere has the same adapter hash, and recovery is exact.
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    for veiled, out, extra in (("ex", "r5", ["--backbone", str(copy)]), ("base", "r6", [])):
        rc, err = recover(veiled, out, *extra)
        assert rc == 0 and "wrong weights" not in err
        assert np.array_equal(np.array(Image.open(tmp_path / out / "f.png").convert("RGB")), images[0])


def test_evaluation_runs_an_export_at_its_recorded_size_and_settings(exported, tmp_path):
    from faceveil.evaluate.config import load_eval_config
    from faceveil.evaluate.run import resolve_config_path, run_evaluation

    cfg = load_eval_config(resolve_config_path("tiny.yaml"), [
        f"output={tmp_path / 'eval'}", f"model.adapter={exported}", "methods=[ours-adapters]", "model.steps=10",
        "model.transform=signflip", "data.size=128", "data.limit=2", "metrics.recognizers=[dlib]", "metrics.jpeg_qualities=[]",
        "metrics.stripped=false", "metrics.fid.enabled=false", "security.enabled=false", "diversity.enabled=false",
        "figures=false", "progress=false",
    ])  # fmt: skip
    m = run_evaluation(cfg)
    assert m["config"]["data"]["size"] == 64  # the export was trained at 64 px
    files = list((tmp_path / "eval" / "cache").glob("ours-adapters-*/*.png"))
    from faceveil.keys import load_key

    v = read_veiled(next(f for f in files if not f.name.endswith(".rec.png")), load_key(tmp_path / "eval" / "eval.key"))
    assert (v.settings.scheme, v.settings.steps, v.settings.transform) == ("exact", 6, "rotation")  # the manifest's, not model.*
    assert (v.adapter_name, v.adapter_hash) == (exported.name, file_sha256(exported / LORA_WEIGHTS))  # sealed, never a path
    assert m["methods"]["ours-adapters"]["recovery"]["file"]["exact"] == 1.0
    assert any("trained at 64 px" in n for n in m["notes"]) and any("recorded settings" in n for n in m["notes"])


def test_photos_run_an_export_at_the_size_it_was_trained_at(exported):
    from faceveil.models.photo import native_size

    bb = load_backbone(str(exported))
    assert bb.extra["export"]["image_size"] == 64 and native_size(bb) == 64  # trained at 64 px
    assert native_size(load_backbone("tiny")) == 256  # the base: the size it was built for
