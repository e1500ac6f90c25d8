"""End to end: the tiny evaluation on the bundled real faces, its report, the attacks, resuming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceveil.errors import ConfigError
from faceveil.evaluate.config import load_eval_config
from faceveil.evaluate.run import resolve_config_path, run_evaluation

TINY = resolve_config_path("tiny.yaml")  # the packaged config, from any folder
FAST = ["progress=false", "model.steps=6", "data.limit=4", "security.images=3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("eval") / "run"
    metrics = run_evaluation(load_eval_config(TINY, [*FAST, f"output={out}"]))
    return out, metrics


def _strict(path: Path):
    def no_constants(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=no_constants)


def test_outputs_and_report(run) -> None:
    out, metrics = run
    on_disk = _strict(out / "metrics.json")
    assert set(on_disk["methods"]) == {"ours", "published", "blur", "pixelate", "blackbox"}
    assert metrics["data"]["probes"] == 4 and metrics["data"]["genuine_pairs"] == 4
    report = (out / "report.md").read_text()
    # arcface:tiny has random weights, so dlib (trained) heads the table, in its own unit.
    assert on_disk["headline_recognizer"] == "dlib"
    assert "## Main results" in report and "| Method | dlib dist anon↔orig ↑ (same < 0.60) | dlib matched at 0.60 ↓ |" in report
    assert "### Classic baselines over strengths" in report and "(sigma 0.1 x side) **(kept)**" in report
    for name in on_disk["methods"]:
        assert f"| **{name}** |" in report
    assert "ours-adapters skipped" in report  # no adapter export in this config: said, not silently dropped
    for fig in ("grid", "hist_dlib", "roc_dlib", "diversity", "security", "security_images"):
        path = out / "figures" / f"{fig}.png"
        assert path.is_file() and f"figures/{fig}.png" in report
        with Image.open(path) as img:
            assert img.size[0] > 100
    assert "facenet skipped" in " ".join(on_disk["notes"])  # weights not installed here
    # Written atomically: the resolved config is there and no temporary file is left behind.
    assert load_eval_config(str(out / "config.yaml")).model.steps == 6
    assert not [p for p in out.rglob("*.part")]
    assert "[sign flip]" in report  # the estimator against rotation (the default) and the published key
    assert "**Linking and keyless estimation**" in report and "| file -> original | ours |" in report


def test_json_helpers_strict_and_cache_round_trip(tmp_path) -> None:
    import math

    import torch

    from faceveil.evaluate.jsonio import clean_json, read_json, write_json

    data = {"nan": float("nan"), "inf": np.float32("inf"), "ninf": -math.inf, "i": np.int64(3), "b": np.bool_(True),
            "arr": np.arange(3), "t": torch.tensor([0.5]), "p": Path("a/b"), 1: (1.5, None)}  # fmt: skip
    strict = clean_json(data, strict=True)
    assert strict == {"nan": None, "inf": "inf", "ninf": "-inf", "i": 3, "b": True, "arr": [0, 1, 2], "t": [0.5], "p": "a/b", "1": [1.5, None]}
    write_json(tmp_path / "m.json", data, strict=True)
    assert _strict(tmp_path / "m.json") == strict
    write_json(tmp_path / "row.json", {"psnr": math.inf, "x": math.nan})  # cache rows keep inf / nan
    row = read_json(tmp_path / "row.json")
    assert math.isinf(row["psnr"]) and math.isnan(row["x"])
    assert read_json(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{")
    assert read_json(tmp_path / "bad.json") is None
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*"))
    with pytest.raises(TypeError):
        clean_json(object())


def test_clean_originals_verify_and_are_detected(run) -> None:
    _, m = run
    assert m["clean"]["verification"]["dlib"]["tar"] == 1.0
    # Mirror pairs are easy; what matters is that dlib separates them at its *own* threshold, not only at
    # one fitted to these pairs: every genuine pair under 0.6, every impostor pair over it.
    assert m["clean"]["verification"]["dlib"]["native"] == {"threshold": 0.6, "tar": 1.0, "far": 0.0}
    assert m["clean"]["rank1"]["dlib"] == 1.0
    assert m["clean"]["detection_rate"] == 1.0


def test_pixels_outside_the_mask_are_untouched_by_every_method(run) -> None:
    _, m = run
    for name, r in m["methods"].items():
        assert r["anonymized"]["outside_unchanged"] == 1.0 and r["anonymized"]["outside_max_abs"] == 0, name
    # Our recovery keeps the pixels outside the stored mask as the file had them, degraded or not.
    for v, rec in m["methods"]["ours"]["recovery"].items():
        assert rec["outside_unchanged"] == 1.0, v
    # The published recovery pastes with the mask it re-detects on the anonymized image. The tiny model's
    # faces are noise: dlib finds none, the fallback ellipse is not the true mask, so every recovery
    # changes pixels outside the true face mask.
    pub = m["methods"]["published"]["recovery"]["file"]
    assert pub["mask_redetected"] == 0.0 and pub["outside_unchanged"] == 0.0


def test_recovery_from_saved_files(run) -> None:
    _, m = run
    ours = m["methods"]["ours"]["recovery"]
    assert set(ours) == {"file", "jpeg95", "jpeg90", "jpeg75", "stripped"}
    exact = ours["file"]
    assert exact["latent_err"]["mean"] < 1e-4  # the exact scheme from the stored latents
    psnr = exact["psnr"]["mean"]
    assert psnr == "inf" or psnr > 40
    for judge in ("dlib", "arcface:tiny"):
        assert exact["id_cos"][judge]["mean"] > 0.99
    assert m["methods"]["ours"]["verification"]["dlib"]["recovered:file"]["tar"] == 1.0
    for v in ("jpeg95", "jpeg90", "jpeg75", "stripped"):  # re-encoded pixels: the latents are approximate
        assert ours[v]["latent_err"]["mean"] > 100 * exact["latent_err"]["mean"]
    published = m["methods"]["published"]["recovery"]
    assert published["file"]["latent_err"]["mean"] > 100 * exact["latent_err"]["mean"]
    assert "mask_redetected" in published["file"]
    assert all(not r["recoverable"] for k, r in m["methods"].items() if k in ("blur", "pixelate", "blackbox"))


def test_anonymized_metrics_present_and_sane(run) -> None:
    _, m = run
    for name, r in m["methods"].items():
        a = r["anonymized"]
        # The tiny model's faces are noise, and the kept (most private) blur / pixelation and the black box
        # hide the face: dlib finds at most one of the four (tiny's scaled-down UNet keeps the head's outline
        # around the noise: measured 1 of 4 for ours), where it found every clean face; and it matches none.
        assert a["detection_rate"] <= 0.25, name
        assert a["id_matched"]["dlib"] == 0.0 and a["id_dist"]["dlib"]["mean"] > 0.6, name  # no face matched at 0.6
        assert a["psnr"]["n"] == 4 and a["psnr"]["mean"] < 60
        assert r["fid"]["n"] == 4 and r["fid"]["feature"] == "tiny"
        assert "dlib" in r["verification"] and "anonymized" in r["verification"]["dlib"]
    # The black box leaves nothing of the face: TAR collapses from 100 % on clean pairs.
    assert m["methods"]["blackbox"]["verification"]["dlib"]["anonymized"]["tar"] < 1.0


def test_blur_and_pixelation_are_kept_at_their_most_private_strength(run) -> None:
    _, m = run
    blur = m["sweeps"]["blur"]
    assert [x["strength"] for x in blur["strengths"]] == [0.02, 0.05, 0.1, 0.2] and blur["judge"] == "dlib"
    # The lightest blur leaves every face verifiable; the kept one is the first that no pair survives.
    assert blur["strengths"][0]["tar"] == 1.0 and blur["kept"] == 0.1
    assert m["methods"]["blur"]["label"] == "Gaussian blur (sigma 0.1 x side)"
    assert m["methods"]["blur"]["verification"]["dlib"]["anonymized"]["tar"] == 0.0
    assert [x["strength"] for x in m["sweeps"]["pixelate"]["strengths"]] == [16, 8, 4]
    # Ours recovers the exact face: dlib distance 0, against 0.79 for its anonymized face.
    ours = m["methods"]["ours"]
    assert ours["recovery"]["file"]["id_dist"]["dlib"]["mean"] == 0.0 and ours["anonymized"]["id_dist"]["dlib"]["mean"] > 0.6


def test_diversity_ten_keys(run) -> None:
    _, m = run
    d = m["diversity"]
    assert d["keys"] == 10
    for name in ("blur", "pixelate", "blackbox"):  # no key: the same image every time
        assert d[name]["pairwise_lpips"] == 0.0 and d[name]["pairwise_id_cos"]["dlib"] == pytest.approx(1.0)
        assert d[name]["pairwise_psnr"] == "inf"
    for name in ("ours", "published"):
        assert d[name]["pairwise_lpips"] > 0 and d[name]["pairwise_psnr"] != "inf"


def test_security_attacks(run) -> None:
    _, m = run
    s = m["security"]["settings"]
    ours, pub = s["ours"]["attacks"], s["published-exact"]["attacks"]
    # The key holder un-keys exactly what the attacker sees (the pixels' noise: the exact state is sealed).
    assert ours["key holder"]["restored"] == 1.0
    assert pub["key holder"]["restored"] == 1.0
    # Wrong key and a key one bit away: nothing of our key stream (a permutation) is restored;
    # the published sign flip stays at chance.
    for attack in ("wrong random key", "key one bit away"):
        assert ours[attack]["restored"] < 0.05 and not ours[attack]["opened"]
        assert 0.3 < pub[attack]["restored"] < 0.7 and not pub[attack]["opened"]
    # Known plaintext: one pair opens the published key's other images, not ours.
    kp = "known plaintext (1 pair)"
    assert pub[kp]["opened"] and pub[kp]["restored"] > 0.85
    assert not ours[kp]["opened"] and ours[kp]["restored"] < 0.05
    # Averaging many images under one key leaks the published signs (above chance), not ours.
    avg = next(k for k in ours if k.startswith("averaging"))
    # Against a keyed permutation both attacks match magnitudes (the attack that learns a permutation);
    # against rotations (the default) and the published key they estimate signs.
    from faceveil.evaluate.security import MATCH_ESTIMATOR, PERMUTATION_TRANSFORMS, SIGN_ESTIMATOR

    expected = MATCH_ESTIMATOR if m["config"]["model"]["transform"] in PERMUTATION_TRANSFORMS else SIGN_ESTIMATOR
    assert ours[kp]["estimator"] == ours[avg]["estimator"] == expected
    assert pub[kp]["estimator"] == pub[avg]["estimator"] == "sign flip"
    assert ours[avg]["restored"] < 0.05 and not ours[avg]["opened"]
    assert pub[avg]["restored"] > 0.55
    # The published 32-bit seed is found by search from one pair; the rate gives the full-space cost.
    search = s["published-exact"]["key_search"]
    assert search["found"] and search["true_seed_rank"] == 1 and search["hours_for_2^32_one_core"] > 0
    # The published method as released ran too (its own recovery is approximate).
    assert "published" in s and s["published"]["attacks"]["key holder"]["signs_vs_true"] < 1.0


def test_nonce_reuse_is_detected_and_would_open_images(run) -> None:
    _, m = run
    same = m["security"]["same_mask"]
    fresh, reused = same["fresh nonces"], same["reused nonce"]
    assert fresh["nonce_scan"]["reused_nonces"] == 0 and fresh["nonces_distinct"] == 3
    assert not fresh["opened"] and fresh["restored"] < 0.05
    assert reused["nonce_scan"]["reused_nonces"] == 1 and reused["nonce_scan"]["files_sharing_a_nonce"] == 3
    # Exact but for entries whose magnitudes tie on the latent lattice (a pair now and then).
    assert reused["opened"] and reused["restored"] > 0.95
    assert m["nonce_scan"]["ours"]["reused_nonces"] == 0 and m["nonce_scan"]["ours"]["with_metadata"] == 4


def test_rerun_resumes_from_the_cache(run, capsys) -> None:
    from faceveil.cli import main

    out, first = run
    folder = next((out / "cache").glob("ours-*"))
    pngs = {p: p.stat().st_mtime_ns for p in folder.glob("*.png") if not p.name.endswith(".rec.png")}
    rows = sorted(folder.glob("*.json"))
    kept = {p: p.stat().st_mtime_ns for p in rows[1:]}
    rows[0].unlink()  # as if the run had been interrupted before this image's row was written
    assert main(["evaluate", "--config", TINY, *FAST, f"output={out}"]) == 0
    assert rows[0].is_file()  # recomputed ...
    assert {p: p.stat().st_mtime_ns for p in rows[1:]} == kept  # ... and nothing else
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*.png") if p in pngs} == pngs  # anonymized files reused
    again = _strict(out / "metrics.json")
    for judge, before in first["methods"]["ours"]["recovery"]["file"]["id_cos"].items():
        assert again["methods"]["ours"]["recovery"]["file"]["id_cos"][judge]["mean"] == pytest.approx(before["mean"], abs=1e-3)
    assert "report.md" in capsys.readouterr().err


def test_config_errors_name_the_key(tmp_path) -> None:
    with pytest.raises(ConfigError, match="metrics.recognisers|recognisers"):
        load_eval_config(TINY, ["metrics.recognisers=[dlib]"])
    with pytest.raises(ConfigError, match="unknown method 'gan'"):
        load_eval_config(TINY, ["methods=[ours,gan]"])
    with pytest.raises(ConfigError, match="32-bit"):
        load_eval_config(TINY, ["published.seed=5000000000"])
    for name in ("tiny", "lfw", "celebahq"):
        assert load_eval_config(resolve_config_path(f"{name}.yaml")).name == name


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("model.scheme=bogus", "model.scheme 'bogus'"),
        ("model.transform=bogus", "model.transform 'bogus'"),
        ("model.steps=0", "model.steps"),
        ("model.steps=1", "model.steps must be at least 2 for the exact scheme"),
        ("data.detector=bogus", "data.detector 'bogus'"),
        ("data.faces=bogus", "data.faces 'bogus'"),
        ("security.images=0", "security.images"),
        ("diversity.faces=0", "diversity.faces"),
        ("metrics.fid.feature=incepton", "metrics.fid.feature 'incepton'"),
        ("metrics.fid.feature=torchscript:/no/such/net.pt", "no such torchscript"),
        ("metrics.fid.feature=module:faceveil.evaluate.metrics:NoSuch", "NoSuch"),
    ],
)
def test_config_typos_fail_at_load(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_eval_config(TINY, [override])


def test_config_settings_that_are_fine_still_load() -> None:
    cfg = load_eval_config(TINY, ["model.scheme=ddim", "model.steps=1", "model.transform=signflip", "data.faces=all",
                                  "data.detector=insightface", "metrics.fid.enabled=false", "metrics.fid.feature=whatever"])  # fmt: skip
    assert cfg.model.scheme == "ddim" and cfg.model.steps == 1


def test_missing_config_path_fails_instead_of_using_a_packaged_file(tmp_path, monkeypatch, capsys) -> None:
    from faceveil.evaluate.run import run_from_args

    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    # A path with a folder part is taken as given: no silent fallback to the packaged tiny.yaml.
    for path in ("configs/eval/tiny.yaml", str(tmp_path / "tiny.yaml"), "elsewhere/tiny.yaml"):
        with pytest.raises(ConfigError, match="no such config file"):
            resolve_config_path(path)
    with pytest.raises(ConfigError, match="no such config file: nosuch.yaml"):
        resolve_config_path("nosuch.yaml")
    assert run_from_args("configs/eval/tiny.yaml", ["progress=false"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such config file: configs/eval/tiny.yaml" in err
    assert not (tmp_path / "runs").exists()  # nothing ran
    # A bare name that is not a file here is the packaged config; a file here wins.
    assert load_eval_config(resolve_config_path("tiny.yaml")).name == "tiny"
    (tmp_path / "tiny.yaml").write_text("name: local\n")
    assert resolve_config_path("tiny.yaml") == "tiny.yaml" and load_eval_config("tiny.yaml").name == "local"


# --------------------------------------------------------------------------- photo folders, pairs, bad inputs


@pytest.fixture(scope="module")
def lfw_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LFW-layout folder from the bundled photos, with a pairs file, a broken photo and a missing one."""
    from faceveil.data.samples import sample_photo_path

    root = tmp_path_factory.mktemp("lfw")
    for name, sample in (("Eileen_Collins", "astronaut"), ("Grace_Hopper", "grace_hopper")):
        photo = np.asarray(Image.open(sample_photo_path(sample)).convert("RGB"))
        (root / name).mkdir()
        Image.fromarray(photo).save(root / name / f"{name}_0001.jpg", quality=95)
        Image.fromarray(np.ascontiguousarray(photo[:, ::-1])).save(root / name / f"{name}_0002.jpg", quality=95)
    (root / "Nobody").mkdir()
    (root / "Nobody" / "Nobody_0001.jpg").write_bytes(b"not a jpeg at all")
    (root / "pairs.txt").write_text(
        "1\t3\n"
        "Eileen_Collins\t1\t2\nGrace_Hopper\t1\t2\nNobody\t1\t2\n"
        "Eileen_Collins\t1\tGrace_Hopper\t2\nGrace_Hopper\t1\tEileen_Collins\t2\nGrace_Hopper\t2\tNobody\t1\n"
    )
    return root


def test_lfw_layout_with_pairs_and_bad_inputs(lfw_like: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    overrides = [
        f"output={out}", "progress=false", "data.source=folder", f"data.path={lfw_like}", f"pairs.file={lfw_like / 'pairs.txt'}",
        "methods=[blur,blackbox]", "metrics.recognizers=[dlib]", "security.enabled=false", "diversity.enabled=false",
        "figures=false",
    ]  # fmt: skip
    m = run_evaluation(load_eval_config(TINY, overrides))
    err = capsys.readouterr().err
    bad = [line for line in err.splitlines() if "Nobody_0001.jpg" in line]
    assert len(bad) == 1 and "not a readable image" in bad[0]  # one clear line, naming the file
    assert "Nobody/Nobody_0002" in err  # named in the pairs file, not on disk
    assert m["data"]["genuine_pairs"] == 2 and m["data"]["impostor_pairs"] == 2 and m["data"]["probes"] == 2
    assert m["clean"]["verification"]["dlib"]["tar"] == 1.0
    assert m["methods"]["blackbox"]["anonymized"]["outside_unchanged"] == 1.0
    assert (out / "report.md").is_file() and len(m["skipped_inputs"]) == 1


def test_aligned_folder_with_unusable_files(tmp_path: Path, capsys) -> None:
    from faceveil.data.sample_set import build_sample_shards
    from faceveil.evaluate.faces import Notes, _from_shards

    crops = tmp_path / "crops"
    crops.mkdir()
    faces = _from_shards(build_sample_shards(tmp_path / "ss", size=128), Notes())
    for f in faces[:3]:
        Image.fromarray(f.image).save(crops / f"{f.id}.png")
    Image.fromarray(np.zeros((128, 96, 3), np.uint8)).save(crops / "wide.png")
    (crops / "empty.png").write_bytes(b"")
    out = tmp_path / "run"
    overrides = [
        f"output={out}", "progress=false", "data.source=aligned", f"data.path={crops}",
        "methods=[pixelate]", "metrics.recognizers=[dlib]", "security.enabled=false", "diversity.enabled=false", "figures=false",
    ]  # fmt: skip
    m = run_evaluation(load_eval_config(TINY, overrides))
    err = capsys.readouterr().err
    assert any("wide.png" in line and "square" in line for line in err.splitlines())
    assert any("empty.png" in line for line in err.splitlines())
    assert m["data"]["probes"] == 3 and len(m["skipped_inputs"]) == 2
    assert m["methods"]["pixelate"]["verification"] == {}  # no labels, no pairs: said in the notes
    assert any("no verification pairs" in n or "no identity" in n for n in m["notes"])
    shutil.rmtree(out)


def test_our_method_with_trained_adapters_from_an_export_folder(tmp_path: Path) -> None:
    """An export folder (faceveil.json + LoRA weights) adds the "ours-adapters" rows."""
    pytest.importorskip("peft")
    import torch

    from faceveil.models.backbones import load_backbone
    from faceveil.train.export import EXPORT_FORMAT, EXPORT_VERSION
    from faceveil.train.lora import LORA_WEIGHTS, add_lora, lora_config, lora_state_dict, save_lora

    backbone = load_backbone("tiny")
    config = lora_config(4, 4.0, ["to_q", "to_k", "to_v", "to_out.0"])
    generator = torch.Generator().manual_seed(0)
    for p in add_lora(backbone.unet, config):
        p.data = torch.randn(p.shape, generator=generator) * 0.05  # a non-trivial adapter
    export = tmp_path / "export"
    save_lora(export, lora_state_dict(backbone.unet), config)
    manifest = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "base": {"spec": "tiny"}, "lora": {"file": LORA_WEIGHTS},
                "settings": {"scheme": "exact", "steps": 6, "transform": "shuffle"}}  # fmt: skip
    (export / "faceveil.json").write_text(json.dumps(manifest))
    out = tmp_path / "run"
    overrides = [
        *FAST, f"output={out}", f"model.adapter={export}", "data.limit=2", "methods=[ours-adapters]", "metrics.recognizers=[dlib]",
        "metrics.jpeg_qualities=[75]", "security.enabled=false", "diversity.enabled=false", "figures=false",
    ]  # fmt: skip
    m = run_evaluation(load_eval_config(TINY, overrides))
    r = m["methods"]["ours-adapters"]
    assert r["label"] == "faceveil (trained adapters)" and r["anonymized"]["outside_unchanged"] == 1.0
    assert r["recovery"]["file"]["latent_err"]["mean"] < 1e-4
    from faceveil.fileformat import read_header

    files = [p for p in (out / "cache").glob("ours-adapters-*/*.png") if not p.name.endswith(".rec.png")]
    assert len(files) == 2
    header = read_header(files[0])
    assert "adapter" not in header and str(export).encode() not in files[0].read_bytes()  # sealed, never a path
