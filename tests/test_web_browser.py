"""The page in a real browser: Playwright drives Chromium against ``faceveil serve`` (tiny backbone).

Uploads t1.jpg, generates and downloads a key, finds the faces, adds a missed one with a drag,
anonymizes and downloads the result; then recovers it with the key and checks the recovered
pixels (and the sealed camera file's bytes) against the original. Every request the page makes
is watched: anything not to the server itself fails the test, so the page works with no network.

Chromium: ``$FACEVEIL_CHROMIUM``, else ``chromium`` / ``chromium-browser`` on the PATH (Debian:
``apt-get install chromium``), else Playwright's own (``playwright install chromium``). Without
any, the test is skipped with a loud reason. Screenshots of each step go to
``$FACEVEIL_SCREENSHOTS`` (default: the test's tmp folder).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from faceveil.data.samples import sample_photo_path

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-dev-shm-usage"]


def find_chromium() -> str | None:
    """A Chromium executable: $FACEVEIL_CHROMIUM, the PATH's, or Playwright's own download."""
    env = os.environ.get("FACEVEIL_CHROMIUM")
    if env and Path(env).is_file():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            path = p.chromium.executable_path
        return path if path and Path(path).is_file() else None
    except Exception:  # noqa: BLE001 - no Playwright browser: skipped below
        return None


def skip_loudly(reason: str) -> None:
    message = f"BROWSER TEST SKIPPED: {reason}"
    warnings.warn(message, stacklevel=2)
    print(f"\n*** {message} ***", file=sys.stderr)
    pytest.skip(message)


@pytest.fixture(scope="module")
def chromium() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        skip_loudly("Playwright for Python is not installed: pip install -e '.[dev]'")
    path = find_chromium()
    if path is None:
        skip_loudly("no Chromium found: apt-get install chromium (Debian), or playwright install chromium, "
                    "or set FACEVEIL_CHROMIUM to a Chromium executable")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``faceveil serve`` on a free port, tiny backbone, 8 steps; its temporary files under a folder we watch."""
    tmp = tmp_path_factory.mktemp("serve-tmp")
    env = dict(os.environ, FACEVEIL_BACKBONE="tiny", TMPDIR=str(tmp))
    proc = subprocess.Popen([sys.executable, "-m", "faceveil.cli", "serve", "--backbone", "tiny", "--steps", "8", "--port", "0",
                             "--inversion-steps", "3", "--scales", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    match = re.match(r"faceveil serve: (http://127\.0\.0\.1:\d+/)", line)
    if not match:
        proc.kill()
        raise AssertionError(f"serve did not print its address: {line!r} {proc.stderr.read()}")
    yield match.group(1), tmp
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert list(tmp.iterdir()) == [], "serve left temporary files"


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("FACEVEIL_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def playwright(chromium):
    """One Playwright driver for the module (its sync API allows one at a time)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def page(chromium, playwright, server, tmp_path_factory):
    url, _ = server
    profile = tmp_path_factory.mktemp("chromium-profile")
    elsewhere: list[str] = []
    context = playwright.chromium.launch_persistent_context(
        str(profile), executable_path=chromium, headless=True, args=ARGS, accept_downloads=True,
        viewport={"width": 1200, "height": 900})

    def route(r):  # the page may talk to its server only: no CDN, fonts, analytics, update checks
        if r.request.url.startswith(url) or r.request.url.startswith(("blob:", "data:")):
            return r.continue_()
        elsewhere.append(r.request.url)
        return r.abort()

    context.route("**/*", route)
    pg = context.pages[0] if context.pages else context.new_page()
    pg.set_default_timeout(90_000)
    pg.goto(url)
    pg.wait_for_selector("body[data-ready='1']")
    yield pg
    context.close()
    assert elsewhere == [], f"the page asked for something outside its server: {elsewhere}"


def _shot(pg, shots: Path, name: str, full: bool = True) -> Path:
    path = shots / f"{name}.png"
    pg.screenshot(path=str(path), full_page=full)
    return path


def test_anonymize_then_recover_t1_in_the_browser(page, shots, tmp_path):
    from PIL import Image

    from faceveil.data.photo_io import load_photo

    pg = page
    t1 = sample_photo_path("t1_group")
    _shot(pg, shots, "01-empty")
    assert pg.inner_text("header") .startswith("faceveil")

    # 1. A new key: downloaded, with the warning that it is the only copy.
    with pg.expect_download() as d:
        pg.click("#keygen")
    key_path = tmp_path / "faceveil.key"
    d.value.save_as(key_path)
    assert '"format": "faceveil-key"' in key_path.read_text()
    assert pg.is_visible("#key-warning") and "only copy" in pg.inner_text("#key-warning")
    _shot(pg, shots, "02-key")

    # 2. Find the faces, then add one with a drag: the small face in the portrait on the wall, which the
    #    detector misses (about 20 px, at 318..352 x 62..100 in the photo).
    pg.set_input_files("#files-anonymize", str(t1))
    pg.click("#detect")
    pg.wait_for_selector(".card.preview[data-ready='1']")
    assert "6 faces: 6 diffusion" in pg.inner_text(".card.preview .summary")
    assert pg.locator(".card.preview table tr").count() == 7
    _shot(pg, shots, "03-detected")
    canvas = pg.locator(".card.preview canvas")
    box = canvas.bounding_box()
    sx = box["width"] / 1280
    pg.mouse.move(box["x"] + 318 * sx, box["y"] + 62 * sx)
    pg.mouse.down()
    pg.mouse.move(box["x"] + 335 * sx, box["y"] + 80 * sx, steps=4)
    pg.mouse.move(box["x"] + 352 * sx, box["y"] + 100 * sx, steps=4)
    pg.mouse.up()
    added = pg.inner_text(".card.preview table tr:last-child")
    assert "added by hand" in added
    x, y, w, h = (int(v) for v in added.split("\t")[1].split(","))
    assert abs(x - 318) <= 2 and abs(y - 62) <= 2 and abs(w - 34) <= 3 and abs(h - 38) <= 3, added
    canvas.scroll_into_view_if_needed()
    _shot(pg, shots, "04-added-face")

    # 3. Anonymize (also sealing the camera's file), with the progress bar; before and after side by side.
    pg.check("#keep-original")
    pg.click("#run-anonymize")
    try:  # the bar mid-run (the run may end before the page polls: then no picture of it)
        pg.wait_for_function("() => /diffusion [1-9]/.test(document.getElementById('progress-text').textContent)",
                             timeout=30_000, polling=50)
        pg.locator("#progress").scroll_into_view_if_needed()
        _shot(pg, shots, "05-progress", full=False)
    except Exception:  # noqa: BLE001
        warnings.warn("the run ended before a screenshot of its progress bar", stacklevel=1)
    pg.wait_for_selector(".card.result img.after")
    pg.wait_for_function("() => [...document.querySelectorAll('.card.result img')].every(i => i.complete && i.naturalWidth > 0)")
    summary = pg.inner_text(".card.result .summary")
    assert summary.startswith("7 faces: 6 diffusion, 1 blur (given by hand"), summary
    assert pg.is_hidden("#error")
    _shot(pg, shots, "06-anonymized")
    pg.evaluate("document.getElementById('results-anonymize').scrollIntoView()")
    readme = _shot(pg, shots, "06-anonymized-results", full=False)
    # The README's picture (docs/web_t1.png): 256 colours keep it small.
    Image.open(readme).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(
        shots / "web_t1.png", optimize=True)
    with pg.expect_download() as d:
        pg.click(".card.result .downloads a")
    anon = tmp_path / "out" / d.value.suggested_filename
    anon.parent.mkdir()
    d.value.save_as(anon)
    assert anon.name == "t1.png"
    with pg.expect_download() as d:
        pg.click("#zip-anonymize")
    assert d.value.suggested_filename == "faceveil-anonymize.zip"

    # 4. Recover with the key file chosen from disk: exact, checked; the pixels and the camera's file come back.
    pg.click("#tab-recover")
    pg.set_input_files("#key-file", str(key_path))
    pg.wait_for_selector("#key-status:has-text('Key: faceveil.key,')")
    pg.set_input_files("#files-recover", str(anon))
    pg.click("#run-recover")
    pg.wait_for_selector("#results-recover .status")
    assert pg.inner_text("#results-recover .status") == "exact (checked against the sealed digest)"
    pg.wait_for_function("() => { const i = document.querySelector('img.recovered'); return i && i.complete && i.naturalWidth > 0; }")
    _shot(pg, shots, "07-recovered")
    links = pg.locator("#results-recover .downloads a")
    with pg.expect_download() as d:
        links.nth(0).click()
    back = np.asarray(Image.open(io.BytesIO(Path(d.value.path()).read_bytes())).convert("RGB"))
    assert np.array_equal(back, load_photo(t1)), "the recovered pixels are not t1.jpg's"
    with pg.expect_download() as d:
        links.nth(1).click()
    assert Path(d.value.path()).read_bytes() == t1.read_bytes(), "the sealed camera file is not t1.jpg"

    # 5. Verify: the anonymized file is authentic, the original photo has no record.
    pg.click("#tab-verify")
    pg.set_input_files("#files-verify", [str(anon), str(t1)])
    pg.click("#run-verify")
    pg.wait_for_selector("#results-verify li")
    lines = pg.inner_text("#results-verify")
    assert "t1.png: authentic: made with this key" in lines and "t1.jpg: no faceveil record" in lines
    _shot(pg, shots, "08-verified")

    # 6. A wrong key is one line on the page, never a traceback.
    wrong = tmp_path / "other.key"
    wrong.write_text(key_path.read_text().replace('"key": "', '"key": "A', 1))
    pg.set_input_files("#key-file", str(wrong))
    pg.wait_for_selector("#key-status:has-text('other.key')")  # the page reads the file asynchronously
    pg.click("#run-verify")
    pg.wait_for_selector("#error:not([hidden])")
    error = pg.inner_text("#error")
    assert "not a faceveil key file" in error and "\n" not in error and "Traceback" not in error
    _shot(pg, shots, "09-error", full=False)


def test_a_reencoded_copy_recovers_approximately_in_the_browser(page, shots, tmp_path):
    """Anonymized with pixel recovery, re-saved as JPEG (the record is gone): the page finds the marked
    face and says the result is approximate."""
    from PIL import Image

    from faceveil.keys import SecretKey, save_key

    pg = page
    pg.set_input_files("#key-file", str(save_key(SecretKey.generate(), tmp_path / "pixels.key")))
    pg.wait_for_selector("#key-status:has-text('pixels.key')")
    pg.click("#tab-anonymize")
    pg.check("#pixel-recovery")
    pg.set_input_files("#files-anonymize", str(sample_photo_path("astronaut")))
    pg.click("#run-anonymize")
    pg.wait_for_selector(".card.result .downloads a")
    assert pg.inner_text(".card.result .summary") == "1 face: 1 diffusion"
    with pg.expect_download() as d:
        pg.click(".card.result .downloads a")
    copy = tmp_path / "astronaut-copy.jpg"
    Image.open(d.value.path()).convert("RGB").save(copy, "JPEG", quality=90)  # what a website does to it
    pg.click("#tab-recover")
    pg.set_input_files("#files-recover", str(copy))
    pg.click("#run-recover")
    pg.wait_for_selector("#results-recover .status")
    status = pg.inner_text("#results-recover .status")
    assert status.startswith("approximate (pixels only): 1 face(s) found by their marks"), status
    pg.wait_for_function("() => { const i = document.querySelector('img.recovered'); return i && i.complete && i.naturalWidth > 0; }")
    _shot(pg, shots, "10-recovered-from-pixels")
    pg.click("#tab-anonymize")
    pg.uncheck("#pixel-recovery")


def test_anonymize_then_recover_a_short_clip_in_the_browser(page, shots, tmp_path):
    """A generated clip: anonymize, download the MKV and its record, recover both with the key, and
    compare every recovered frame with the clip's own."""
    import cv2
    from PIL import Image

    from faceveil.keys import SecretKey, save_key
    from faceveil.video.streams import iter_frames

    clip = tmp_path / "clip.mp4"
    frame = np.asarray(Image.open(sample_photo_path("astronaut")).convert("RGB").resize((256, 256)))
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (256, 256))
    for k in range(5):
        writer.write(np.ascontiguousarray(np.roll(frame, 2 * k, axis=1)[:, :, ::-1]))
    writer.release()
    pg = page
    pg.set_input_files("#key-file", str(save_key(SecretKey.generate(), tmp_path / "video.key")))
    pg.wait_for_selector("#key-status:has-text('video.key')")
    pg.click("#tab-anonymize")
    pg.set_input_files("#files-anonymize", str(clip))
    pg.click("#run-anonymize")
    pg.wait_for_selector(".card.result .downloads a")
    assert "5 frames, 1 track" in pg.inner_text(".card.result .summary")
    _shot(pg, shots, "11-video-anonymized")
    out = tmp_path / "out"
    out.mkdir()
    saved = []
    for k in range(2):
        with pg.expect_download() as d:
            pg.locator(".card.result .downloads a").nth(k).click()
        saved.append(out / d.value.suggested_filename)
        d.value.save_as(saved[-1])
    assert [p.name for p in saved] == ["clip.mkv", "clip.fvvid"]
    pg.click("#tab-recover")
    pg.set_input_files("#files-recover", [str(p) for p in saved])
    pg.click("#run-recover")
    pg.wait_for_selector("#results-recover .status")
    assert pg.inner_text("#results-recover .status") == "exact (checked against the sealed digest): 5 frames, no sound in the video"
    _shot(pg, shots, "12-video-recovered")
    with pg.expect_download() as d:
        pg.locator("#results-recover .downloads a").first.click()
    back = [f.rgb for f in iter_frames(d.value.path())]
    original = [f.rgb for f in iter_frames(clip)]
    assert len(back) == len(original) == 5 and all(np.array_equal(a, b) for a, b in zip(original, back))


def test_with_a_token_the_printed_address_opens_the_page_and_nothing_else_does(chromium, playwright, tmp_path):
    """The printed ``/?token=...`` address sets the cookie and lands on ``/``; without it the page is one line."""
    env = dict(os.environ, FACEVEIL_BACKBONE="tiny", TMPDIR=str(tmp_path), FACEVEIL_SERVE_TOKEN="browser-test-token-1")
    proc = subprocess.Popen([sys.executable, "-m", "faceveil.cli", "serve", "--backbone", "tiny"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().split()[2]
        assert url.endswith("/?token=browser-test-token-1"), url
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
        pg = browser.new_page()
        pg.goto(url.split("?")[0])
        assert "needs its token" in pg.inner_text("body")
        pg.goto(url)
        pg.wait_for_selector("body[data-ready='1']")
        assert pg.url == url.split("?")[0]  # the token left the address bar
        assert "backbone tiny" in pg.inner_text("#server")
        browser.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
