"""Videos: every face of every frame replaced, the sound kept, the original frames back bit for bit.

Clips are made here from the bundled photos (faces moving, one entering and leaving the frame,
a sine sound track); no media file is in the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("motpy")

from faceveil.cli import main  # noqa: E402
from faceveil.evaluate.video_clips import LOSSLESS, PHONE, clip_boxes, make_clip  # noqa: E402
from faceveil.keys import SecretKey, save_key  # noqa: E402
from faceveil.video.streams import iter_frames, probe  # noqa: E402

FAST = ["--backbone", "tiny", "--device", "cpu", "--steps", "2"]
FRAMES = 12


def frames_of(path) -> list[np.ndarray]:
    return [f.rgb for f in iter_frames(path)]


def audio_packets(path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


def one_line(err: str, needle: str) -> str:
    lines = [ln for ln in err.splitlines() if needle in ln]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Both clips anonymized once (tiny backbone), with --publish."""
    root = tmp_path_factory.mktemp("video")
    clips = root / "clips"
    clips.mkdir()
    make_clip(clips / "phone.mp4", PHONE, frames=FRAMES)
    make_clip(clips / "lossless.mkv", LOSSLESS, frames=FRAMES, vfr=True, rotation=90)
    key_path = root / "me.key"
    save_key(SecretKey.generate(), key_path)
    out = root / "out"
    rc = main(["anonymize", str(clips), "-o", str(out), "--key", str(key_path), "--publish", *FAST])
    assert rc == 0
    return root, clips, out, key_path


def test_every_face_of_every_frame_is_replaced_and_the_rest_kept(made):
    _, clips, out, _ = made
    for name in ("phone", "lossless"):
        src = frames_of(next(clips.glob(f"{name}.*")))
        anon = frames_of(out / f"{name}.mkv")
        assert len(anon) == len(src) == FRAMES
        for i, (a, b) in enumerate(zip(src, anon)):
            h, w = a.shape[:2]
            for x0, y0, x1, y1 in clip_boxes(i, FRAMES, w, h):
                if x1 - x0 < 0.6 * (y1 - y0):
                    continue  # a sliver of the photo at the border: its edge, not the face in its middle
                cx0, cy0 = x0 + (x1 - x0) // 4, y0 + (y1 - y0) // 4
                inner = (slice(cy0, y1 - (y1 - y0) // 4), slice(cx0, x1 - (x1 - x0) // 4))
                diff = np.abs(a[inner].astype(int) - b[inner].astype(int)).mean()
                assert diff > 8, f"{name} frame {i}: face at {x0},{y0} kept (mean change {diff:.1f})"
            # Far from any face (the bottom-right corner), the frame is the original's.
            assert np.array_equal(a[-16:, -16:], b[-16:, -16:])


def test_recovery_is_bit_exact_with_the_sound_timestamps_and_rotation(made, capsys):
    root, clips, out, key_path = made
    rec = root / "recovered"
    capsys.readouterr()
    assert main(["recover", str(out), "-o", str(rec), "--key", str(key_path)]) == 0
    for name, src in (("phone", clips / "phone.mp4"), ("lossless", clips / "lossless.mkv")):
        back = rec / f"{name}.mkv"
        assert all(np.array_equal(a, b) for a, b in zip(frames_of(src), frames_of(back)))
        assert len(frames_of(back)) == FRAMES
        # The sound is copied packet for packet into the anonymized video and back.
        assert audio_packets(src) == audio_packets(out / f"{name}.mkv") == audio_packets(back)
    assert probe(out / "lossless.mkv").rotation == probe(clips / "lossless.mkv").rotation == 90
    # Variable frame rate: each frame keeps its time (to the MKV's millisecond).
    times = lambda p: [round(float(f.time), 3) for f in av.open(str(p)).decode(video=0)]  # noqa: E731
    assert times(out / "lossless.mkv") == times(clips / "lossless.mkv") == times(rec / "lossless.mkv")
    assert (rec / "lossless.mkv").stat().st_mode & 0o077 == 0  # an original is as private as the key


def test_x264rgb_output_recovers_bit_exact(tmp_path):
    make_clip(tmp_path / "c.mkv", LOSSLESS, frames=6)
    key_path = tmp_path / "k.key"
    save_key(SecretKey.generate(), key_path)
    out, rec = tmp_path / "out", tmp_path / "rec"
    assert main(["anonymize", str(tmp_path / "c.mkv"), "-o", str(out), "--key", str(key_path), "--method", "pixelate",
                 "--video-codec", "x264rgb"]) == 0
    assert probe(out / "c.mkv").codec == "h264"
    assert main(["recover", str(out / "c.mkv"), "-o", str(rec), "--key", str(key_path)]) == 0
    assert all(np.array_equal(a, b) for a, b in zip(frames_of(tmp_path / "c.mkv"), frames_of(rec / "c.mkv")))


def test_published_mp4_is_h264_with_sound_and_says_it_has_no_record(made, capsys):
    root, clips, out, key_path = made
    info = probe(out / "phone.mp4")
    assert info.codec == "h264" and info.audio == ["aac"]
    assert probe(out / "lossless.mp4").rotation == 90 and probe(out / "lossless.mp4").audio == ["flac"]
    assert len(frames_of(out / "phone.mp4")) == FRAMES
    capsys.readouterr()
    assert main(["recover", str(out / "phone.mp4"), "-o", str(root / "r_mp4"), "--key", str(key_path)]) == 1
    line = one_line(capsys.readouterr().err, "phone.mp4:")
    assert "lossy copy" in line and "pixels alone" in line
    assert not (root / "r_mp4" / "phone.mkv").exists()


def test_wrong_key_and_tampering_are_refused(made, tmp_path, capsys):
    _, _, out, key_path = made
    other = tmp_path / "other.key"
    save_key(SecretKey.generate(), other)
    capsys.readouterr()
    assert main(["recover", str(out / "phone.mkv"), "-o", str(tmp_path / "r1"), "--key", str(other)]) == 1
    assert "wrong key" in one_line(capsys.readouterr().err, "phone.mkv:")
    # An altered sealed segment, then altered video bytes: exit 3, one line, nothing written.
    for victim, offset in (("fvvid", 40), ("mkv", -200)):
        bad = tmp_path / f"bad_{victim}"
        bad.mkdir()
        for suffix in ("mkv", "fvvid"):
            shutil.copy(out / f"phone.{suffix}", bad / f"phone.{suffix}")
        data = bytearray((bad / f"phone.{victim}").read_bytes())
        data[offset] ^= 1
        (bad / f"phone.{victim}").write_bytes(bytes(data))
        capsys.readouterr()
        assert main(["recover", str(bad / "phone.mkv"), "-o", str(tmp_path / f"r_{victim}"), "--key", str(key_path)]) == 3
        line = one_line(capsys.readouterr().err, "phone")
        assert ("modified" if victim == "fvvid" else "not the video this record was written for") in line
        assert not (tmp_path / f"r_{victim}" / "phone.mkv").exists()


def _ten_bit(path: Path) -> None:
    with av.open(str(path), "w", format="matroska") as c:
        s = c.add_stream("ffv1", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p10le"
        for i in range(3):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 80 + i, np.uint8), format="rgb24").reformat(format="yuv420p10le")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode())


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        for k in range(8):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, k * 1024
            c.mux(s.encode(f))
        c.mux(s.encode())


def test_bad_inputs_get_one_line_each_and_the_batch_goes_on(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    make_clip(src / "good.mkv", LOSSLESS, frames=4, audio=False)
    make_clip(tmp_path / "whole.mp4", PHONE, frames=4)
    data = (tmp_path / "whole.mp4").read_bytes()
    (src / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (src / "corrupt.mov").write_bytes(os.urandom(3000))
    _audio_only(src / "voice.mp4")
    _ten_bit(src / "deep.mkv")
    make_clip(src / "odd.mkv", LOSSLESS, frames=3, width=97, height=75, audio=False)
    key_path = tmp_path / "k.key"
    save_key(SecretKey.generate(), key_path)
    out = tmp_path / "out"
    capsys.readouterr()
    rc = main(["anonymize", str(src), "-o", str(out), "--key", str(key_path), "--method", "blur", "--publish"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "corrupt or truncated" in one_line(err, "truncated.mp4:")
    assert "corrupt or truncated" in one_line(err, "corrupt.mov:")
    assert "audio only" in one_line(err, "voice.mp4:")
    assert "10" in one_line(err, "deep.mkv:") and "8-bit" in one_line(err, "deep.mkv:")
    assert "anonymized 2, failed 4" in err
    assert sorted(p.name for p in out.iterdir()) == ["good.fvvid", "good.mkv", "good.mp4", "odd.fvvid", "odd.mkv", "odd.mp4"]
    # H.264 in yuv420p needs even sides: the shared copy of a 97 x 75 video is padded by one row and column.
    assert (probe(out / "odd.mp4").width, probe(out / "odd.mp4").height) == (98, 76)
    assert (probe(out / "odd.mkv").width, probe(out / "odd.mkv").height) == (97, 75)
    assert "Traceback" not in err


def test_output_equal_to_the_input_is_refused(tmp_path, capsys):
    make_clip(tmp_path / "c.mkv", LOSSLESS, frames=2, audio=False)
    before = (tmp_path / "c.mkv").read_bytes()
    key_path = tmp_path / "k.key"
    save_key(SecretKey.generate(), key_path)
    capsys.readouterr()
    assert main(["anonymize", str(tmp_path / "c.mkv"), "-o", str(tmp_path), "--key", str(key_path), "--method", "blur"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert (tmp_path / "c.mkv").read_bytes() == before


def test_a_resumed_run_gives_what_an_uninterrupted_one_gives(tmp_path, monkeypatch, tiny_backbone):
    from faceveil.data.photo_detect import FacePolicy
    from faceveil.models.photo import native_size
    from faceveil.models.photo_api import PhotoFinder
    from faceveil.models.pipeline import Anonymizer
    from faceveil.models.settings import Settings
    from faceveil.video import anonymize as va

    make_clip(tmp_path / "c.mkv", LOSSLESS, frames=6, audio=True)
    key = SecretKey.generate()
    monkeypatch.setattr(va.os, "urandom", lambda n: bytes(range(n)))  # the same salt for both runs

    def runner():
        return va.VideoAnonymizer(PhotoFinder(native_size(tiny_backbone), policy=FacePolicy()),
                                  Anonymizer(tiny_backbone, Settings(steps=2)), 4, va.VideoOptions(segment=3))

    runner().run(tmp_path / "c.mkv", tmp_path / "whole.mkv", key)
    finish = va.VideoAnonymizer._finish_segment
    calls = []

    def interrupted(self, n, *args):
        if calls:
            raise KeyboardInterrupt
        calls.append(n)
        return finish(self, n, *args)

    monkeypatch.setattr(va.VideoAnonymizer, "_finish_segment", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner().run(tmp_path / "c.mkv", tmp_path / "resumed.mkv", key)
    assert not (tmp_path / "resumed.mkv").exists() and (tmp_path / ".resumed.mkv.part").is_dir()
    monkeypatch.setattr(va.VideoAnonymizer, "_finish_segment", finish)
    report = runner().run(tmp_path / "c.mkv", tmp_path / "resumed.mkv", key)
    assert report.resumed_segments == 1
    whole, resumed = frames_of(tmp_path / "whole.mkv"), frames_of(tmp_path / "resumed.mkv")
    assert len(whole) == 6 and all(np.array_equal(a, b) for a, b in zip(whole, resumed))
    assert any(not np.array_equal(a, b) for a, b in zip(whole, frames_of(tmp_path / "c.mkv")))
    assert (tmp_path / "whole.fvvid").read_bytes() != b""
    # The same sealed segments, byte for byte (only the video hash in the header differs with the muxer's clock).
    from faceveil.video.record import read_record

    a = read_record(tmp_path / "whole.fvvid", key)
    b = read_record(tmp_path / "resumed.fvvid", key)
    assert [c for *_, c in a.chunks()] == [c for *_, c in b.chunks()]
    assert not (tmp_path / ".resumed.mkv.part").exists()


MEMORY_SCRIPT = r"""
import sys, tracemalloc
from pathlib import Path
import numpy as np
from faceveil.data.faces import Face
from faceveil.data.photo_detect import FacePolicy
from faceveil.evaluate.video_clips import LOSSLESS, make_clip
from faceveil.keys import SecretKey
from faceveil.models.photo_api import PhotoFinder
from faceveil.video.anonymize import VideoAnonymizer, VideoOptions

class Fixed:
    name = "fixed"
    def detect(self, image, source=None):  # one face, where the clip puts it
        box = np.array([8.0, 8.0, 40.0, 40.0])
        pts = np.array([[18, 20], [30, 20], [24, 27], [19, 33], [29, 33]], dtype=float)
        return [Face(box, 0.99, pts, pts, "five")]

root, frames = Path(sys.argv[1]), int(sys.argv[2])
images = [np.full((48, 64, 3), (i * 7) % 256, np.uint8) for i in range(frames)]
make_clip(root / "long.mkv", LOSSLESS, images=images, fps=8)
del images
tracemalloc.start()
finder = PhotoFinder(0, Fixed(), FacePolicy(method="blur"), tile=64)
VideoAnonymizer(finder, None, options=VideoOptions(segment=16)).run(root / "long.mkv", root / "out.mkv", SecretKey.generate())
print(tracemalloc.get_traced_memory()[1])
"""


def test_memory_stays_bounded_over_minutes_of_video(tmp_path):
    peaks = {}
    for frames in (64, 1440):  # 8 s and 3 min at 8 frames/s
        d = tmp_path / str(frames)
        d.mkdir()
        done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(d), str(frames)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        peaks[frames] = int(done.stdout.split()[-1])
        assert len(frames_of(d / "out.mkv")) == frames
    # 22x the frames, nearly the same peak: only a segment is ever in memory.
    assert peaks[1440] < 1.5 * peaks[64] + (1 << 20), peaks


def _face_at(x: float, y: float, side: float = 40.0):
    from faceveil.data.faces import Face

    pts = np.array([[x + 0.3 * side, y + 0.4 * side], [x + 0.7 * side, y + 0.4 * side], [x + 0.5 * side, y + 0.6 * side],
                    [x + 0.35 * side, y + 0.8 * side], [x + 0.65 * side, y + 0.8 * side]])
    return Face(np.array([x, y, x + side, y + side]), 0.9, pts, pts, "five")


def test_a_missed_detection_is_bridged_from_its_track_and_a_lost_face_is_not_carried_forever():
    from faceveil.video.tracks import FaceTracker, TrackStats

    tracker, stats = FaceTracker(fps=10, bridge=2), TrackStats()
    seen = []
    for i in range(10):
        x = 10 + 3 * i
        found = [] if i in (4, 5) or i >= 7 else [_face_at(x, 20)]  # missed twice, then gone
        tracked = tracker.step(found, (120, 160))
        stats.add(tracked)
        seen.append(tracked)
    # Frames 4 and 5: no detection, yet the face is there, carried from its track and moving on.
    for i in (4, 5):
        assert len(seen[i]) == 1 and seen[i][0].bridged and seen[i][0].track == 0
        assert abs(seen[i][0].face.bbox[0] - (10 + 3 * i)) < 6
        assert seen[i][0].face.landmarks5.shape == (5, 2)
    assert [len(s) for s in seen[7:]] == [1, 1, 0]  # bridged twice more, then the track ends
    assert stats.frames == {0: 9} and stats.bridged == {0: 4}


def test_a_bridged_face_in_a_clip_is_still_replaced(tmp_path):
    """The detector misses the face in frame 2: the frame is covered all the same."""
    from faceveil.data.photo_detect import FacePolicy
    from faceveil.models.photo_api import PhotoFinder
    from faceveil.video.anonymize import VideoAnonymizer

    images = []
    for i in range(5):
        f = np.full((64, 96, 3), 60, np.uint8)
        f[10:50, 10 + 3 * i : 50 + 3 * i] = np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)
        images.append(f)
    make_clip(tmp_path / "c.mkv", LOSSLESS, images=images, audio=False)

    class Flaky:
        name = "flaky"
        calls = 0

        def detect(self, image, source=None):
            if image.shape[:2] != (64, 96):
                return []  # the coarser pyramid levels
            Flaky.calls += 1
            return [] if Flaky.calls == 3 else [_face_at(10 + 3 * (Flaky.calls - 1), 10)]

    finder = PhotoFinder(0, Flaky(), FacePolicy(method="pixelate"), tile=128)
    report = VideoAnonymizer(finder, None).run(tmp_path / "c.mkv", tmp_path / "o.mkv", SecretKey.generate())
    assert report.stats.bridged == {0: 1}
    for a, b in zip(images, frames_of(tmp_path / "o.mkv")):
        assert np.abs(a[20:40, 25:45].astype(int) - b[20:40, 25:45].astype(int)).mean() > 10


def test_a_second_track_on_a_detected_face_is_not_drawn_twice():
    from faceveil.video.tracks import FaceTracker

    tracker = FaceTracker(fps=10, bridge=3)
    tracker.step([_face_at(100, 40)], (200, 300))
    # The camera zooms in: the new box overlaps the old too little for motpy to match, so it
    # starts a new track; the old one, predicted inside the new box, is not drawn on top of it.
    tracked = tracker.step([_face_at(50, 0, side=140)], (200, 300))
    assert len(tracked) == 1 and not tracked[0].bridged and tracked[0].track == 1


def test_tags_and_data_of_the_input_never_reach_the_outputs(tmp_path, capsys):
    """A phone's location and owner tags stay behind; only the sound is copied."""
    make_clip(tmp_path / "plain.mp4", PHONE, frames=3)
    with av.open(str(tmp_path / "plain.mp4")) as i, av.open(str(tmp_path / "tagged.mp4"), "w", format="mp4") as o:
        o.metadata["location"] = "+48.8584+002.2945/"
        outs = {}
        for s in i.streams:
            outs[s.index] = o.add_stream_from_template(s)
            outs[s.index].metadata["handler_name"] = "Jane Doe's phone"
        for p in i.demux():
            if p.dts is not None:
                p.stream = outs[p.stream.index]
                o.mux(p)
    key_path = tmp_path / "k.key"
    save_key(SecretKey.generate(), key_path)
    out = tmp_path / "out"
    assert main(["anonymize", str(tmp_path / "tagged.mp4"), "-o", str(out), "--key", str(key_path), "--method", "blur", "--publish"]) == 0
    for f in (out / "tagged.mkv", out / "tagged.mp4", out / "tagged.fvvid"):
        data = f.read_bytes()
        assert b"48.8584" not in data and b"Jane Doe" not in data, f
    with av.open(str(out / "tagged.mkv")) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]


def test_a_frame_larger_than_allowed_is_refused_before_any_work(tmp_path):
    from faceveil.errors import InputError

    make_clip(tmp_path / "c.mkv", LOSSLESS, frames=2, audio=False)
    with pytest.raises(InputError, match=r"c\.mkv: 192x144 is larger than the 1000 pixels"):
        probe(tmp_path / "c.mkv", max_pixels=1000)


def test_a_face_is_covered_in_the_frames_before_its_first_detection(tmp_path):
    """A face entering at the border is detected late; the frames before, up to the bridge, get a cover."""
    from faceveil.data.photo_detect import FacePolicy
    from faceveil.models.photo_api import PhotoFinder
    from faceveil.video.anonymize import VideoAnonymizer, VideoOptions

    rng = np.random.default_rng(0)
    images = []
    for i in range(6):
        f = np.full((64, 96, 3), 60, np.uint8)
        f[10:50, 10:50] = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
        images.append(f)
    make_clip(tmp_path / "c.mkv", LOSSLESS, images=images, audio=False)

    class Late:
        name = "late"
        calls = 0

        def detect(self, image, source=None):
            if image.shape[:2] != (64, 96):
                return []
            Late.calls += 1
            return [_face_at(10, 10)] if Late.calls >= 4 else []  # found from frame 3 on

    finder = PhotoFinder(0, Late(), FacePolicy(method="pixelate"), tile=128)
    report = VideoAnonymizer(finder, None, options=VideoOptions(segment=2, bridge=2)).run(
        tmp_path / "c.mkv", tmp_path / "o.mkv", SecretKey.generate())
    out = frames_of(tmp_path / "o.mkv")
    changed = [bool(np.abs(a[20:40, 20:40].astype(int) - b[20:40, 20:40].astype(int)).mean() > 10) for a, b in zip(images, out)]
    assert changed == [False, True, True, True, True, True]  # frames 1 and 2 reached back across a segment boundary
    assert report.stats.bridged == {0: 2} and report.treatments == {"pixelate": 5}  # a covers-only run covers with its method


def test_a_folder_mixing_photos_and_videos_takes_both_and_outputs_are_not_taken_again(tmp_path, capsys):
    from faceveil.data.samples import sample_photo_path

    src = tmp_path / "in"
    src.mkdir()
    make_clip(src / "c.mkv", LOSSLESS, frames=3, audio=False)
    shutil.copy(sample_photo_path("grace_hopper"), src / "g.jpg")
    key_path = tmp_path / "k.key"
    save_key(SecretKey.generate(), key_path)
    out = tmp_path / "out"
    assert main(["anonymize", str(src), "-o", str(out), "--key", str(key_path), "--method", "blur"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["c.fvvid", "c.mkv", "g.png"]
    capsys.readouterr()
    assert main(["anonymize", str(out / "c.mkv"), "-o", str(tmp_path / "again"), "--key", str(key_path), "--method", "blur"]) == 1
    assert "already a faceveil output" in one_line(capsys.readouterr().err, "c.mkv:")


def test_recovery_that_does_not_restore_the_originals_is_an_error(made, tmp_path, monkeypatch):
    """A sealed region that opens but is wrong (a bug, a codec that is not lossless) never passes as the original."""
    from faceveil.errors import TamperedError
    from faceveil.keys import load_key
    from faceveil.video import recover as vr

    _, _, out, key_path = made
    real = vr.open_segment

    def off_by_one(*args, **kwargs):
        seg = real(*args, **kwargs)
        seg.tracks[0].crops[0][0, 0, 0] ^= 1
        return seg

    monkeypatch.setattr(vr, "open_segment", off_by_one)
    with pytest.raises(TamperedError, match="does NOT restore the original frames"):
        vr.recover_video(out / "lossless.mkv", tmp_path / "r.mkv", load_key(key_path))
    assert not (tmp_path / "r.mkv").exists() and not (tmp_path / ".r.mkv.part").exists()


def test_subtitles_are_copied_where_an_mkv_can_hold_them(tmp_path, capsys):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    make_clip(tmp_path / "c.mkv", LOSSLESS, frames=3)
    (tmp_path / "s.srt").write_text("1\n00:00:00,000 --> 00:00:00,200\nhello\n")
    src = tmp_path / "in"
    src.mkdir()
    ff = imageio_ffmpeg.get_ffmpeg_exe()
    for name, codec in (("srt.mkv", "srt"), ("movtext.mp4", "mov_text")):
        subprocess.run([ff, "-y", "-loglevel", "error", "-i", str(tmp_path / "c.mkv"), "-i", str(tmp_path / "s.srt"), "-map", "0",
                        "-map", "1", "-c:v", "copy", "-c:a", "aac" if name.endswith("mp4") else "copy", "-c:s", codec,
                        str(src / name)], check=True)
    key_path = tmp_path / "k.key"
    save_key(SecretKey.generate(), key_path)
    capsys.readouterr()
    assert main(["anonymize", str(src), "-o", str(tmp_path / "out"), "--key", str(key_path), "--method", "blur"]) == 0
    assert "(mov_text) cannot go into an MKV as is; left out" in one_line(capsys.readouterr().err, "mov_text")
    with av.open(str(tmp_path / "out" / "srt.mkv")) as c:
        assert [s.type for s in c.streams] == ["video", "audio", "subtitle"]
        assert b"hello" in b"".join(bytes(p) for p in c.demux(c.streams.subtitles[0]) if p.size)


def test_recovery_says_whether_there_was_sound():
    from faceveil.video.recover import RecoveredVideo

    assert RecoveredVideo(5, 1, True, audio=1).said() == "5 frames, sound kept"
    assert RecoveredVideo(5, 1, True, audio=0).said() == "5 frames, no sound in the video"
