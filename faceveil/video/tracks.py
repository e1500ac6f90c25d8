"""Faces of a video as tracks: detection per frame, association by motpy, misses bridged.

A detector misses a face now and then (motion blur, a turned head, a hand in front); a
video shows every frame, so one miss leaks the face. The tracker (motpy's Kalman tracker)
carries each face across misses: for up to ``bridge`` frames a track that found no
detection is still replaced, at its predicted box, with its last landmarks moved along.
Track numbers are given in order of first appearance, so the same frames give the same
tracks on every run (resume depends on it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from faceveil.data.faces import Face

DEFAULT_BRIDGE = 4  # frames a track is carried without a detection


@dataclass
class TrackedFace:
    track: int  # track number, from 0 in order of first appearance
    face: Face
    bridged: bool  # no detection in this frame: the box is the track's prediction


@dataclass
class TrackStats:
    frames: dict[int, int] = field(default_factory=dict)  # track -> frames it covered
    bridged: dict[int, int] = field(default_factory=dict)  # track -> frames it was bridged

    def add(self, faces: Sequence[TrackedFace]) -> None:
        for tf in faces:
            self.frames[tf.track] = self.frames.get(tf.track, 0) + 1
            if tf.bridged:
                self.bridged[tf.track] = self.bridged.get(tf.track, 0) + 1


class _Recording:
    """motpy's matching function, remembering the last (tracker, detection) pairs it chose."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.last = np.zeros((0, 2), dtype=int)

    def __call__(self, trackers, detections):
        self.last = self.inner(trackers, detections)
        return self.last


def _moved(face: Face, box: np.ndarray) -> Face:
    """``face`` (its last detection) carried to ``box``: landmarks shifted and scaled with the box."""
    b0 = np.asarray(face.bbox, dtype=np.float64)
    s = np.array([(box[2] - box[0]) / max(b0[2] - b0[0], 1e-6), (box[3] - box[1]) / max(b0[3] - b0[1], 1e-6)])

    def move(points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return (p - b0[:2]) * s + box[:2]

    return replace(face, bbox=np.asarray(box, dtype=np.float64), landmarks5=move(face.landmarks5), landmarks=move(face.landmarks))


def covered_by(box: np.ndarray, other: np.ndarray, share: float = 0.5) -> bool:
    """Whether ``other`` covers at least ``share`` of ``box`` (both x0, y0, x1, y1)."""
    iw = max(0.0, min(box[2], other[2]) - max(box[0], other[0]))
    ih = max(0.0, min(box[3], other[3]) - max(box[1], other[1]))
    area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-6)
    return iw * ih / area >= share


class FaceTracker:
    """Turn each frame's detections into :class:`TrackedFace` records."""

    def __init__(self, fps: float, bridge: int = DEFAULT_BRIDGE, min_iou: float = 0.1) -> None:
        from motpy import MultiObjectTracker
        from motpy.tracker import IOUAndFeatureMatchingFunction

        self.matching = _Recording(IOUAndFeatureMatchingFunction(min_iou=min_iou))
        self.bridge = int(bridge)
        # staleness grows by 1 a missed frame; a track dies one frame after its last bridge.
        self.mot = MultiObjectTracker(
            dt=1.0 / max(fps, 1.0), model_spec="constant_velocity_and_static_box_size_2d",
            matching_fn=self.matching, tracker_kwargs={"max_staleness": self.bridge + 0.5},
        )
        self.numbers: dict[str, int] = {}
        self.last_face: dict[str, Face] = {}

    def _number(self, tracker_id: str) -> int:
        if tracker_id not in self.numbers:
            self.numbers[tracker_id] = len(self.numbers)
        return self.numbers[tracker_id]

    def step(self, faces: Sequence[Face], hw: tuple[int, int]) -> list[TrackedFace]:
        """The tracked faces of the next frame: every detection (each on its track), then every
        live track that found none this frame (bridged, at its predicted box)."""
        from motpy import Detection

        before = list(self.mot.trackers)
        self.mot.step([Detection(box=np.asarray(f.bbox, dtype=np.float64), score=float(f.score)) for f in faces])
        matched = {int(d): before[int(t)] for t, d in self.matching.last}
        new = [t for t in self.mot.trackers if all(t is not b for b in before)]
        unmatched = [d for d in range(len(faces)) if d not in matched]  # motpy appends new trackers in this order
        for d, t in zip(unmatched, new):
            matched[d] = t
        out = []
        for d, face in enumerate(faces):
            t = matched.get(d)
            if t is None:  # not expected from motpy; a face is never dropped for it
                out.append(TrackedFace(self._number(f"lone-{id(face)}-{d}"), face, False))
                continue
            self.last_face[t.id] = face
            out.append(TrackedFace(self._number(t.id), face, False))
        hit = {id(t) for t in matched.values()}
        h, w = hw
        for t in self.mot.trackers:
            if id(t) in hit or t.id not in self.last_face or t.staleness > self.bridge:
                continue
            box = np.asarray(t.box(), dtype=np.float64)
            if box[2] <= 0 or box[3] <= 0 or box[0] >= w or box[1] >= h:
                continue  # predicted out of the frame: the face has left
            if any(covered_by(box, np.asarray(f.bbox, dtype=np.float64)) for f in faces):
                continue  # a detection already holds this face (the tracker started a second track on it)
            out.append(TrackedFace(self._number(t.id), _moved(self.last_face[t.id], box), True))
        alive = {t.id for t in self.mot.trackers}
        for gone in [k for k in self.last_face if k not in alive]:
            del self.last_face[gone]  # memory stays bounded by the faces on screen
        return out
