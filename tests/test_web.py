"""faceveil serve's app through FastAPI's TestClient: token, host and origin checks, limits, one-line
errors, the queue's bound, keys never on disk, and each action's result (the browser test drives the
page itself: test_web_browser.py)."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from faceveil.data.samples import sample_photo_path  # noqa: E402
from faceveil.keys import SecretKey, key_file_bytes  # noqa: E402
from faceveil.web import actions  # noqa: E402
from faceveil.web.app import ServerConfig, create_app  # noqa: E402
from faceveil.web.jobs import Busy, JobQueue  # noqa: E402
from faceveil.web.limits import Limits  # noqa: E402

LOCAL = "http://127.0.0.1:8765"
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def t1() -> bytes:
    return sample_photo_path("t1_group").read_bytes()


@pytest.fixture(scope="module")
def engine(tiny_backbone):
    e = actions.Engine("tiny", steps=2)
    e._backbone = tiny_backbone  # the session's
    from argparse import Namespace

    e._settings_args = Namespace(scheme=None, steps=2, transform=None)
    e.inversion_steps, e.scales = 3, (1.0,)  # pixel-only recovery: a few decoder inversion steps, no resize search
    return e


def client(tmp_path, engine=None, **config) -> TestClient:
    config.setdefault("workdir", tmp_path)
    base = config.pop("base_url", LOCAL)
    return TestClient(create_app(ServerConfig(**config), engine or actions.Engine("tiny", steps=2)), base_url=base)


def wait(c: TestClient, response, timeout: float = 120) -> tuple[str, dict]:
    assert response.status_code == 202, response.text
    job = response.json()["job"]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        s = c.get(f"/api/jobs/{job}").json()
        if s["state"] in ("done", "failed"):
            return job, s
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def one_line_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and "\n" not in error and "Traceback" not in error
    return error


# ---------------------------------------------------------------- who may ask


def test_a_host_beyond_localhost_needs_a_token(capsys):
    from faceveil.cli import main

    assert main(["serve", "--host", "0.0.0.0", "--backbone", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--token" in err[0]
    assert main(["serve", "--token", "short", "--backbone", "tiny"]) == 2
    assert "too short" in capsys.readouterr().err


def test_with_a_token_every_request_carries_it(tmp_path):
    c = client(tmp_path, host="0.0.0.0", token=TOKEN, base_url="http://192.168.1.20:8000")
    for method, path in [("get", "/"), ("get", "/static/app.js"), ("get", "/api/info"), ("post", "/api/keygen"),
                         ("get", "/api/jobs/x"), ("get", "/api/jobs/x/files/0")]:
        assert "token" in one_line_error(getattr(c, method)(path), 401)
    assert c.get("/api/info", headers={"X-Faceveil-Token": "wrong-token-123"}).status_code == 401
    assert c.get("/api/info", headers={"X-Faceveil-Token": TOKEN}).status_code == 200
    assert c.get("/?token=nope", follow_redirects=False).status_code == 401
    first = c.get(f"/?token={TOKEN}", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/"
    assert "httponly" in first.headers["set-cookie"].lower() and "samesite=strict" in first.headers["set-cookie"].lower()
    assert c.get("/").status_code == 200  # the cookie now rides along
    assert c.post("/api/keygen").status_code == 200


def test_localhost_answers_only_to_its_own_names(tmp_path):
    c = client(tmp_path)
    assert c.get("/api/info").status_code == 200
    assert c.get("/api/info", headers={"host": "localhost:8765"}).status_code == 200
    assert c.get("/api/info", headers={"host": "[::1]:8765"}).status_code == 200
    # DNS rebinding: a site whose name now points at 127.0.0.1.
    assert "127.0.0.1" in one_line_error(c.get("/api/info", headers={"host": "evil.example:8765"}), 403)
    assert "another site" in one_line_error(c.post("/api/keygen", headers={"origin": "http://evil.example"}), 403)
    assert c.post("/api/keygen", headers={"origin": LOCAL}).status_code == 200


def test_the_page_fetches_nothing_from_elsewhere(tmp_path):
    c = client(tmp_path)
    page = c.get("/")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    for text in (page.text, c.get("/static/app.js").text, c.get("/static/style.css").text):
        assert "http://" not in text and "https://" not in text and "@import" not in text and "@font-face" not in text
    assert one_line_error(c.get("/static/../app.py"), 404)


# ---------------------------------------------------------------- limits and errors


def test_uploads_over_the_limit_are_refused_in_one_line(tmp_path, t1):
    c = client(tmp_path, limits=Limits(max_upload_mb=0.05))
    big = b"x" * 80_000
    assert "0.05 MB" in one_line_error(c.post("/api/detect", files=[("files", ("a.jpg", big, "image/jpeg"))]), 413)

    def chunks():  # no Content-Length: counted as it streams
        yield b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.jpg\"\r\n\r\n"
        for _ in range(10):
            yield b"y" * 10_000

    r = c.post("/api/detect", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert "0.05 MB" in one_line_error(r, 413)
    c = client(tmp_path, limits=Limits(max_files=2))
    files = [("files", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(3)]
    assert "too many files" in one_line_error(c.post("/api/detect", files=files), 400).lower()


def test_photos_over_the_pixel_limit_are_one_line_each(tmp_path, t1, engine):
    c = client(tmp_path, engine, limits=Limits(max_pixels=500_000))
    _, s = wait(c, c.post("/api/detect", files=[("files", ("t1.jpg", t1, "image/jpeg"))]))
    assert s["state"] == "done"
    [item] = s["result"]["items"]
    assert item["name"] == "t1.jpg" and "over the limit" in item["error"] and str(tmp_path) not in item["error"]


def test_bad_requests_are_one_line(tmp_path, t1):
    c = client(tmp_path)
    assert "no file" in one_line_error(c.post("/api/detect", data={"x": "1"}), 400)
    files = [("files", ("t1.jpg", t1, "image/jpeg"))]
    assert "JSON" in one_line_error(c.post("/api/detect", files=files, data={"options": "{"}), 400)
    assert "unknown" in one_line_error(c.post("/api/detect", files=files, data={"options": '{"method": "melt"}'}), 400)
    assert "unknown" in one_line_error(c.post("/api/detect", files=files, data={"options": '{"colour": 1}'}), 400)
    assert "regions" in one_line_error(c.post("/api/detect", files=files, data={"regions": '{"0": [[5, 5, 1, 1]]}'}), 400)
    assert "no key" in one_line_error(c.post("/api/anonymize", files=files), 400)
    assert one_line_error(c.get("/api/jobs/nope"), 404)
    assert one_line_error(c.get("/nowhere"), 404)


def test_an_unexpected_failure_says_its_kind_only(tmp_path, t1, monkeypatch):
    def broken(job, *a, **k):
        raise RuntimeError("/home/someone/secret path\nand a second line")

    monkeypatch.setattr(actions, "detect_photos", broken)
    c = client(tmp_path)
    _, s = wait(c, c.post("/api/detect", files=[("files", ("t1.jpg", t1, "image/jpeg"))]))
    assert s["state"] == "failed" and s["error"].startswith("internal error (RuntimeError)") and "secret" not in s["error"]


def test_jobs_queue_behind_one_worker_and_a_full_queue_says_busy(tmp_path, t1, monkeypatch):
    q = JobQueue(max_waiting=1)
    gate, order = threading.Event(), []

    def slow(job):
        gate.wait(10)
        order.append(job.kind)
        return {}

    running = q.submit("a", slow)
    while running.state != "running":
        time.sleep(0.01)
    waiting = q.submit("b", slow)
    assert q.position(waiting) == 1
    with pytest.raises(Busy):
        q.submit("c", slow)
    gate.set()
    while waiting.state != "done":
        time.sleep(0.01)
    assert order == ["a", "b"] and running.fn is None and waiting.fn is None  # closures (keys) dropped
    q.close()
    # Through the app: the third request gets 503 and one line.
    gate2 = threading.Event()
    monkeypatch.setattr(actions, "detect_photos", lambda job, *a, **k: gate2.wait(10) and {"items": []})
    c = client(tmp_path, max_waiting=1)
    files = [("files", ("t1.jpg", t1, "image/jpeg"))]
    first = c.post("/api/detect", files=files).json()["job"]
    while c.get(f"/api/jobs/{first}").json()["state"] != "running":
        time.sleep(0.01)
    second = c.post("/api/detect", files=files)
    assert second.status_code == 202 and c.get(f"/api/jobs/{second.json()['job']}").json()["position"] == 1
    assert "busy" in one_line_error(c.post("/api/detect", files=files), 503)
    gate2.set()


def test_finished_results_are_bounded_by_count_and_bytes():
    q = JobQueue(max_waiting=8, keep=3, keep_bytes=250)

    def result(n):
        def fn(job):
            job.add_file("f", "application/octet-stream", bytes(n))
            return {}
        return fn

    jobs = []
    for n in (100, 100, 100, 100):
        jobs.append(q.submit("x", result(n)))
        while jobs[-1].finished_at is None:
            time.sleep(0.005)
    kept = [j for j in jobs if q.get(j.id) is not None]
    assert kept == jobs[-2:]  # 4 jobs, 3 by count, 300 bytes over 250: the oldest two went
    big = q.submit("x", result(1000))
    while big.finished_at is None:
        time.sleep(0.005)
    assert [j for j in jobs + [big] if q.get(j.id) is not None] == [big]  # the newest stays, however big
    q.close()


# ---------------------------------------------------------------- the actions


def test_detect_lists_the_faces_with_their_plan_and_takes_added_faces(tmp_path, t1, engine):
    c = client(tmp_path, engine)
    regions = json.dumps({"0": [[5, 5, 45, 55]]})
    job, s = wait(c, c.post("/api/detect", files=[("files", ("t1.jpg", t1, "image/jpeg"))], data={"regions": regions}))
    [item] = s["result"]["items"]
    assert item["width"] == 1280 and item["height"] == 886
    assert sorted(f["treatment"] for f in item["faces"]) == ["blur"] + ["diffusion"] * 6
    [added] = [f for f in item["faces"] if f["treatment"] == "blur"]
    assert added["why"] == "given by hand" and added["box"] == [5.0, 5.0, 40.0, 50.0]
    preview = c.get(f"/api/jobs/{job}/files/{item['preview']}")
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/jpeg"
    assert c.get(f"/api/jobs/{job}/zip").status_code == 200  # previews are left out of it


def key_needles(key: SecretKey, key_text: str, passphrase: str | None = None) -> list[bytes]:
    out = [key.material, key.material.hex().encode(), base64.b64encode(key.material), key_text.encode()]
    return out + ([passphrase.encode()] if passphrase else [])


@pytest.fixture
def spy_workspaces(monkeypatch):
    """Every file a workspace held when it was removed, by name and content."""
    seen: list[tuple[str, bytes]] = []
    real = actions.Workspace.close

    def close(self):
        for p in self.dir.rglob("*"):
            if p.is_file():
                seen.append((str(p), p.read_bytes()))
        real(self)

    monkeypatch.setattr(actions.Workspace, "close", close)
    return seen


def test_anonymize_recover_verify_and_the_key_never_touches_the_disk(tmp_path, t1, engine, spy_workspaces, caplog):
    from faceveil.data.photo_io import load_photo

    caplog.set_level(logging.DEBUG)
    work = tmp_path / "work"
    work.mkdir()
    c = client(work, engine)
    r = c.post("/api/keygen")
    assert r.headers["cache-control"] == "no-store" and "attachment" in r.headers["content-disposition"]
    key_text = r.text
    key = SecretKey(base64.b64decode(json.loads(key_text)["key"]))
    assert key.fingerprint == r.headers["x-key-fingerprint"]
    files = [("files", ("photos/t1.jpg", t1, "image/jpeg"))]
    options = json.dumps({"keep_original_file": True, "mask_extent": "head"})
    job, s = wait(c, c.post("/api/anonymize", files=files, data={"key": key_text, "options": options,
                                                                "regions": json.dumps({"0": [[5, 5, 45, 55]]})}))
    assert s["state"] == "done", s
    [item] = s["result"]["items"]
    assert item["summary"].startswith("7 faces: 6 diffusion, 1 blur (given by hand: face ")
    anon = c.get(f"/api/jobs/{job}/files/{item['files'][0]}?download=1")
    assert anon.headers["content-disposition"] == 'attachment; filename="t1.png"'
    assert s["result"]["key_fingerprint"] == key.fingerprint
    # Recover: exact, checked; the camera's file comes back byte for byte.
    job, s = wait(c, c.post("/api/recover", files=[("files", ("t1.png", anon.content, "image/png"))], data={"key": key_text}))
    [item] = s["result"]["items"]
    assert item["exact"] is True and item["status"] == actions.EXACT
    back = np.asarray(Image.open(io.BytesIO(c.get(f"/api/jobs/{job}/files/{item['file']}").content)).convert("RGB"))
    assert np.array_equal(back, load_photo(sample_photo_path("t1_group")))
    assert c.get(f"/api/jobs/{job}/files/{item['original_file']}").content == t1
    # Verify: plain words per file.
    wrong = key_file_bytes(SecretKey.generate()).decode()
    edited = bytearray(anon.content)
    edited[-200] ^= 1
    job, s = wait(c, c.post("/api/verify", data={"key": key_text}, files=[
        ("files", ("t1.png", anon.content, "image/png")), ("files", ("t1.jpg", t1, "image/jpeg")),
        ("files", ("edited.png", bytes(edited), "image/png"))]))
    statuses = {it["name"]: (it["status"], it["line"]) for it in s["result"]["items"]}
    assert statuses["t1.png"][0] == "ok" and "restores the original bit for bit" in statuses["t1.png"][1]
    assert statuses["t1.jpg"][0] == "no record"
    assert statuses["edited.png"][0] in ("edited", "unreadable") and str(work) not in statuses["edited.png"][1]
    _, s = wait(c, c.post("/api/verify", data={"key": wrong}, files=[("files", ("t1.png", anon.content, "image/png"))]))
    assert s["result"]["items"][0]["status"] == "wrong key"
    _, s = wait(c, c.post("/api/recover", data={"key": wrong}, files=[("files", ("t1.png", anon.content, "image/png"))]))
    assert "key" in s["result"]["items"][0]["error"]
    # The key was in no file name, no file, no log line; every temporary file is gone.
    assert spy_workspaces, "the actions wrote their inputs into workspaces"
    for name, data in spy_workspaces:
        for needle in key_needles(key, key_text):
            assert needle not in name.encode() and needle not in data
    for needle in key_needles(key, key_text):
        assert needle.decode("latin-1") not in caplog.text
    assert list(work.iterdir()) == []


def test_a_passphrase_and_its_salt_make_the_key_keygen_makes(tmp_path, t1, engine, spy_workspaces):
    c = client(tmp_path, engine)
    passphrase, salt = "correct horse battery staple", "00112233445566778899aabbccddeeff"
    files = [("files", ("t1.jpg", t1, "image/jpeg"))]
    job, s = wait(c, c.post("/api/anonymize", files=files,
                            data={"passphrase": passphrase, "salt": salt, "options": '{"method": "pixelate", "output": "jpg"}'}))
    [item] = s["result"]["items"]
    assert item["summary"] == "6 faces: 6 pixelate" and len(item["files"]) == 2
    image, record = (c.get(f"/api/jobs/{job}/files/{n}") for n in item["files"])
    assert image.headers["content-disposition"].endswith('filename="t1.jpg"')
    assert record.headers["content-disposition"].endswith('filename="t1.jpg.fvrec"')
    key = SecretKey.from_passphrase(passphrase, salt=bytes.fromhex(salt))
    assert s["result"]["key_fingerprint"] == key.fingerprint
    pair = [("files", ("t1.jpg", image.content, "image/jpeg")), ("files", ("t1.jpg.fvrec", record.content, "application/octet-stream"))]
    _, s = wait(c, c.post("/api/recover", files=pair, data={"key": key_file_bytes(key).decode()}))
    [item] = s["result"]["items"]
    assert item["exact"] is False and item["status"].startswith("approximate: the faces are exact")
    small = io.BytesIO()
    Image.open(io.BytesIO(image.content)).crop((0, 0, 160, 160)).save(small, "JPEG")
    _, s = wait(c, c.post("/api/recover", files=[("files", ("copy.jpg", small.getvalue(), "image/jpeg"))],
                          data={"key": key_file_bytes(key).decode()}))
    assert s["result"]["items"][0]["error"] == actions.NO_MARK  # no record, and no mark in its pixels
    _, s = wait(c, c.post("/api/recover", files=pair[1:], data={"key": key_file_bytes(key).decode()}))
    assert "without its image" in s["result"]["items"][0]["error"]
    _, s = wait(c, c.post("/api/recover", files=pair, data={"passphrase": passphrase}))
    assert s["state"] == "failed" and "salt" in s["error"]
    for name, data in spy_workspaces:
        assert passphrase.encode() not in data and passphrase not in name


def test_a_copy_without_its_record_recovers_from_its_pixels(tmp_path, engine):
    """Anonymized with pixel recovery, re-encoded as JPEG (the record is gone): the marked face is found
    and recovered, approximately, and the page says so."""
    c = client(tmp_path, engine)
    key_text = c.post("/api/keygen").text
    astronaut = sample_photo_path("astronaut").read_bytes()
    job, s = wait(c, c.post("/api/anonymize", files=[("files", ("astronaut.png", astronaut, "image/png"))],
                            data={"key": key_text, "options": '{"pixel_recovery": true}'}))
    [item] = s["result"]["items"]
    assert item["summary"] == "1 face: 1 diffusion", item
    anon = c.get(f"/api/jobs/{job}/files/{item['files'][0]}").content
    copy = io.BytesIO()
    Image.open(io.BytesIO(anon)).convert("RGB").save(copy, "JPEG", quality=90)
    _, s = wait(c, c.post("/api/recover", files=[("files", ("astronaut.jpg", copy.getvalue(), "image/jpeg"))],
                          data={"key": key_text}))
    [item] = s["result"]["items"]
    assert item["exact"] is False and item["status"].startswith("approximate (pixels only): 1 face(s) found"), item


def test_download_names_fit_a_header():
    assert actions.download_name("holiday/фото 1.jpg", ".png", ".recovered") == "1.recovered.png"
    assert actions.download_name('a"b\r\n.jpg', ".png") == "a_b.png"
    assert actions.download_name("../../.png", ".png") == "png.png"
    assert actions.download_name("x.jpg", ".jpg.fvrec") == "x.jpg.fvrec"


def make_clip(path: Path, frames: int = 5) -> Path:
    """A short MP4 of the astronaut's face drifting, written with OpenCV."""
    import cv2

    frame = np.asarray(Image.open(sample_photo_path("astronaut")).convert("RGB").resize((256, 256)))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (256, 256))
    for k in range(frames):
        writer.write(np.ascontiguousarray(np.roll(frame, 2 * k, axis=1)[:, :, ::-1]))
    writer.release()
    return path


def decoded(path: Path) -> list[np.ndarray]:
    from faceveil.video.streams import iter_frames

    return [f.rgb for f in iter_frames(path)]


def test_a_video_anonymizes_and_recovers_frame_for_frame(tmp_path, engine):
    clip = make_clip(tmp_path / "clip.mp4")
    work = tmp_path / "work"
    work.mkdir()
    c = client(work, engine)
    key_text = c.post("/api/keygen").text
    job, s = wait(c, c.post("/api/anonymize", files=[("files", ("clip.mp4", clip.read_bytes(), "video/mp4"))],
                            data={"key": key_text}))
    [item] = s["result"]["items"]
    assert item["video"] is True and "5 frames, 1 track" in item["summary"], item
    mkv, record = (c.get(f"/api/jobs/{job}/files/{n}") for n in item["files"])
    assert mkv.headers["content-disposition"].endswith('filename="clip.mkv"')
    assert record.headers["content-disposition"].endswith('filename="clip.fvvid"')
    files = [("files", ("clip.mkv", mkv.content, "video/x-matroska")), ("files", ("clip.fvvid", record.content, "application/octet-stream"))]
    job, s = wait(c, c.post("/api/recover", files=files, data={"key": key_text}))
    [item] = s["result"]["items"]
    assert item["exact"] is True and item["status"] == f"{actions.EXACT}: 5 frames, no sound in the video", item  # a silent clip
    back = tmp_path / "back.mkv"
    back.write_bytes(c.get(f"/api/jobs/{job}/files/{item['file']}").content)
    original, recovered = decoded(clip), decoded(back)
    assert len(recovered) == len(original) == 5 and all(np.array_equal(a, b) for a, b in zip(original, recovered))
    _, s = wait(c, c.post("/api/recover", files=files[:1], data={"key": key_text}))
    assert "no faceveil record" in s["result"]["items"][0]["error"]
    _, s = wait(c, c.post("/api/verify", files=files, data={"key": key_text}))
    assert s["result"]["items"][0]["line"] == actions.VIDEO_NOT_VERIFIED
    assert list(work.iterdir()) == []


def test_serve_prints_its_address_and_leaves_no_temporary_file(tmp_path):
    import signal
    import urllib.request

    env = dict(os.environ, TMPDIR=str(tmp_path), FACEVEIL_BACKBONE="tiny")
    proc = subprocess.Popen([sys.executable, "-m", "faceveil.cli", "serve", "--backbone", "tiny"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("faceveil serve: http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split()[2]
        assert list(tmp_path.iterdir())  # its private folder
        with urllib.request.urlopen(url + "api/info", timeout=30) as r:
            assert json.load(r)["backbone"] == "tiny"
    finally:
        proc.send_signal(signal.SIGTERM)  # SIGINT (Ctrl-C) takes the same way out
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
