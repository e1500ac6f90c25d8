"""Recognizers behind one interface, on the real sample photos."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from faceveil.data.images import load_image
from faceveil.data.samples import sample_photo_path
from faceveil.errors import ConfigError, InputError
from faceveil.models.arcface_weights import WeightsMismatchError
from faceveil.models.identity import load_identity_encoder
from faceveil.models.recognizers import (
    ArcFaceRecognizer,
    DlibRecognizer,
    FacenetRecognizer,
    Recognizer,
    load_recognizer,
    mtcnn_detect,
    similarity_matrix,
)


def _astronaut_face() -> np.ndarray:
    """The astronaut's head and shoulders: a small image keeps MTCNN cheap."""
    return np.ascontiguousarray(load_image(sample_photo_path("astronaut"))[20:276, 96:352])


@pytest.fixture(scope="module")
def dlib_rec() -> DlibRecognizer:
    return DlibRecognizer()


@pytest.fixture(scope="module")
def people(dlib_rec: DlibRecognizer) -> tuple[list[str], torch.Tensor, dict[str, torch.Tensor]]:
    """dlib descriptors of nine different people, and of mirror images of three of them."""
    singles = {n: load_image(sample_photo_path(n)) for n in ("astronaut", "grace_hopper", "tom_hanks")}
    group = load_image(sample_photo_path("t1_group"))
    boxes = dlib_rec.detect(group)
    assert len(boxes) == 6  # the six people in insightface's t1.jpg
    boxes = boxes[np.argsort(boxes[:, 0])]
    names = list(singles) + [f"t1_{i}" for i in range(6)]
    emb = torch.cat([dlib_rec.embed(list(singles.values())), dlib_rec.embed([group] * 6, boxes=boxes)])
    mirrored_group = np.ascontiguousarray(group[:, ::-1])
    w = group.shape[1]
    mirror_box = np.array([[w - 1 - boxes[2, 2], boxes[2, 1], w - 1 - boxes[2, 0], boxes[2, 3]]])
    mirrors = {
        "astronaut": dlib_rec.embed(np.ascontiguousarray(singles["astronaut"][:, ::-1])),
        "grace_hopper": dlib_rec.embed(np.ascontiguousarray(singles["grace_hopper"][:, ::-1])),
        "t1_2": dlib_rec.embed(mirrored_group, boxes=mirror_box),
    }
    return names, emb, mirrors


def test_recognizers_share_the_interface(dlib_rec: DlibRecognizer) -> None:
    arc = ArcFaceRecognizer(load_identity_encoder("tiny"))
    for rec in (dlib_rec, arc):
        assert isinstance(rec, Recognizer)
    assert dlib_rec.metric == "euclidean" and arc.metric == "cosine"


def test_dlib_mirror_is_closer_than_any_two_people(dlib_rec: DlibRecognizer, people) -> None:
    names, emb, mirrors = people
    assert emb.shape == (9, 128) and torch.isfinite(emb).all()
    sim = similarity_matrix("euclidean", emb, emb)  # minus the distance
    different = [float(sim[i, j]) for i, j in itertools.combinations(range(len(names)), 2)]
    for name, mirror in mirrors.items():
        own = float(dlib_rec.similarity(emb[names.index(name)][None], mirror)[0])
        assert own > max(different), name
        assert -own < dlib_rec.threshold  # same person by dlib's own rule
    # The nine are different people by dlib's rule too (real photos: distances 0.65 .. 0.93).
    assert -max(different) > dlib_rec.threshold
    # Cosine tells the same story.
    cos = similarity_matrix("cosine", emb, emb)
    worst_pair = max(float(cos[i, j]) for i, j in itertools.combinations(range(len(names)), 2))
    assert all(float(similarity_matrix("cosine", emb[names.index(n)][None], m)) > worst_pair for n, m in mirrors.items())


def test_dlib_missing_face(dlib_rec: DlibRecognizer) -> None:
    blank = np.full((120, 120, 3), 128, dtype=np.uint8)
    with pytest.raises(InputError, match="image 0: dlib found no face"):
        dlib_rec.embed(blank)
    out = DlibRecognizer(missing="nan").embed([blank])
    assert out.shape == (1, 128) and torch.isnan(out).all()
    with pytest.raises(InputError, match="uint8"):
        dlib_rec.embed(np.zeros((10, 10, 3), dtype=np.float32))


def test_facenet_without_weights_says_where_they_go(tmp_path, monkeypatch) -> None:
    pytest.importorskip("facenet_pytorch")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(InputError, match=r"checkpoints/20180402-114759-vggface2.pt: facenet weights not found"):
        FacenetRecognizer("vggface2")


def test_facenet_with_a_weights_file(tmp_path) -> None:
    # facenet-pytorch is installed with --no-deps (its metadata pins an old torch), so it may be absent.
    InceptionResnetV1 = pytest.importorskip("facenet_pytorch").InceptionResnetV1
    torch.manual_seed(0)
    # A file laid out like facenet-pytorch's release: the embedding net plus the training classifier.
    state = InceptionResnetV1(pretrained=None, classify=True, num_classes=7).state_dict()
    path = tmp_path / "facenet.pt"
    torch.save(state, path)
    rec = FacenetRecognizer(path, missing="nan")
    astronaut = _astronaut_face()
    blank = np.full((160, 160, 3), 128, dtype=np.uint8)
    emb = rec.embed([astronaut, blank])
    assert emb.shape == (2, 512)
    torch.testing.assert_close(emb[0].norm(), torch.tensor(1.0))
    assert torch.isnan(emb[1]).all()
    del state["last_linear.weight"]
    torch.save(state, path)
    with pytest.raises(WeightsMismatchError, match="missing 1 \\(last_linear.weight\\)"):
        FacenetRecognizer(path)


def test_arcface_recognizer_matches_the_encoder() -> None:
    pytest.importorskip("facenet_pytorch")  # MTCNN
    encoder = load_identity_encoder("tiny")
    astronaut = _astronaut_face()
    boxes, points = mtcnn_detect(astronaut)
    assert boxes.shape == (1, 4) and points.shape == (1, 5, 2)
    x = torch.tensor(astronaut).permute(2, 0, 1)[None].float() / 127.5 - 1
    expected = encoder.embed(x, torch.from_numpy(points).float())
    with_landmarks = ArcFaceRecognizer(encoder).embed(astronaut, landmarks=points)
    detected = ArcFaceRecognizer(encoder, detect=True).embed([astronaut])
    torch.testing.assert_close(with_landmarks, expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(detected, expected, rtol=0, atol=1e-4)
    face = load_image(sample_photo_path("tom_hanks"))
    fixed = ArcFaceRecognizer(encoder).embed(face)
    torch.testing.assert_close(fixed, encoder.embed(torch.tensor(face).permute(2, 0, 1)[None].float() / 127.5 - 1), rtol=0, atol=1e-4)
    blank = np.full((160, 160, 3), 128, dtype=np.uint8)
    with pytest.raises(InputError, match="image 1: MTCNN found no face"):
        ArcFaceRecognizer(encoder, detect=True).embed([astronaut, blank])
    rows = ArcFaceRecognizer(encoder, detect=True, missing="nan").embed([blank, astronaut])
    assert rows.shape == (2, 64) and torch.isnan(rows[0]).all()
    torch.testing.assert_close(rows[1:], expected, rtol=0, atol=1e-4)


def test_load_recognizer_by_name() -> None:
    assert isinstance(load_recognizer("dlib"), DlibRecognizer)
    rec = load_recognizer("arcface:tiny", detect=False)
    assert isinstance(rec, ArcFaceRecognizer) and rec.name == "random:tiny" and not rec.detect
    with pytest.raises(ConfigError, match="unknown recognizer"):
        load_recognizer("vgg")
