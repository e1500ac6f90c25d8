"""The web app: one page, a few JSON routes, and the checks every request passes.

Every request passes, in this order:

1. the **host check**: bound to localhost, only ``Host: 127.0.0.1``, ``localhost`` or ``[::1]`` is
   served (a web page elsewhere cannot reach the server by pointing its own name at 127.0.0.1);
2. the **token**, when the server has one (always when bound beyond localhost): the
   ``X-Faceveil-Token`` header, or the ``faceveil_token`` cookie the first visit sets from
   ``/?token=...`` (then redirected to ``/``);
3. the **origin check**: a POST that says it comes from another site is refused;
4. the **body limit** (:class:`~faceveil.web.limits.BodyLimit`).

Every error is ``{"error": "one line"}`` with its status; nothing is ever a traceback
(:class:`OneLineErrors` catches what the routes did not).
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import io
import ipaddress
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from faceveil import __version__
from faceveil.errors import FaceveilError, InputError, escape
from faceveil.web import actions
from faceveil.web.jobs import Busy, JobQueue
from faceveil.web.limits import BodyLimit, Limits, UploadTooLarge

TOKEN_HEADER = "x-faceveil-token"
TOKEN_COOKIE = "faceveil_token"
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
LOCAL_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
# Nothing but this server: no CDN, no fonts, no frames; blob: and data: for the page's own previews.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
KEY_FIELD_BYTES = 64 * 1024
FORMS_AT_ONCE = 2  # requests whose uploads are read into memory at the same time


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    token: str | None = None
    limits: Limits = field(default_factory=Limits)
    workdir: Path | None = None  # the private folder of every temporary file (None: the system's)
    max_waiting: int = 4  # jobs waiting behind the running one
    backbone: str = "tiny"


def is_local(host: str) -> bool:
    if host in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The name in a Host header, without the port: ``127.0.0.1:8000`` -> ``127.0.0.1``, ``[::1]:80`` -> ``::1``."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rsplit(":", 1)[0]


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"Cache-Control": "no-store"})


class OneLineErrors:
    """ASGI middleware: whatever escapes a route becomes ``{"error": "internal error (Kind)"}``:
    the exception's text may hold anything, so it is neither shown nor logged."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        started = False

        async def tracking(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:  # noqa: BLE001 - one line, never a traceback
            if scope["type"] != "http" or started:
                return
            from faceveil.web.jobs import one_line

            status = 413 if isinstance(exc, UploadTooLarge) else 400 if isinstance(exc, FaceveilError) else 500
            await error_response(status, one_line(exc))(scope, receive, send)


class Guard:
    """ASGI middleware: the host check, the token and the origin check (module docstring)."""

    def __init__(self, app, config: ServerConfig) -> None:
        self.app, self.config = app, config

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.requests import Request
        from starlette.responses import RedirectResponse

        request = Request(scope)
        if is_local(self.config.host) and not is_local(host_name(request.headers.get("host") or "")):
            return await error_response(403, "this page answers only at 127.0.0.1 or localhost")(scope, receive, send)
        token = self.config.token
        if token:
            given = request.query_params.get("token")
            if given is not None and request.method == "GET" and request.url.path == "/":
                if not hmac.compare_digest(given.encode(), token.encode()):
                    return await error_response(401, "wrong token")(scope, receive, send)
                response = RedirectResponse("/", status_code=303)
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
                return await response(scope, receive, send)
            sent = request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE) or ""
            if not hmac.compare_digest(sent.encode(), token.encode()):
                return await error_response(
                    401, "this server needs its token: open the address 'faceveil serve' printed (it ends in ?token=...)"
                )(scope, receive, send)
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD") and origin is not None:
            if urlsplit(origin).netloc != request.headers.get("host"):
                return await error_response(403, "a request from another site was refused")(scope, receive, send)
        return await self.app(scope, receive, send)


def _static(name: str) -> bytes:
    return importlib.resources.files("faceveil.web").joinpath("static", name).read_bytes()


async def _read_form(request, limits: Limits) -> tuple[list[actions.Upload], dict[str, str]]:
    """The uploads (field ``files``) and the text fields of a multipart form; a key sent as a file
    (``curl -F key=@me.key``) is read as text, in memory. A full queue refuses before reading, and
    only :data:`FORMS_AT_ONCE` requests are read at a time (the others wait in the socket), so
    uploads in memory stay within (queue + running + reading) times the upload limit."""
    jobs = request.app.state.jobs
    if jobs.full():
        raise Busy(f"busy: {jobs.max_waiting} jobs are already waiting; try again when they are done")
    async with request.app.state.reading:
        return await _parse_form(request, limits)


async def _parse_form(request, limits: Limits) -> tuple[list[actions.Upload], dict[str, str]]:
    from starlette.datastructures import UploadFile

    form = await request.form(max_files=limits.max_files + 1, max_fields=32, max_part_size=KEY_FIELD_BYTES)
    uploads: list[actions.Upload] = []
    fields: dict[str, str] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name == "files":
                    uploads.append(actions.Upload(value.filename or "file", await value.read(), value.content_type or ""))
                elif name == "key":
                    data = await value.read(KEY_FIELD_BYTES + 1)
                    if len(data) > KEY_FIELD_BYTES:
                        raise InputError("the key file is not a faceveil key file (too large)")
                    fields["key"] = data.decode("utf-8", "replace")
            else:
                fields[name] = value
    finally:
        await form.close()
    if len(uploads) > limits.max_files:
        raise InputError(f"too many files: at most {limits.max_files} per request (faceveil serve --max-files)")
    return uploads, fields


def _json_field(fields: dict[str, str], name: str) -> object:
    text = fields.get(name)
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise InputError(f"{name}: not valid JSON") from None


def _options(fields: dict[str, str]) -> actions.PhotoOptions:
    doc = _json_field(fields, "options") or {}
    if not isinstance(doc, dict):
        raise InputError("options: expected a JSON object")
    known = {"method", "cover", "mask_extent", "min_face", "output", "mark", "keep_original_file", "pixel_recovery"}
    unknown = set(doc) - known
    if unknown:
        raise InputError(f"options: unknown {escape(sorted(unknown)[0])!r}")
    try:
        return actions.PhotoOptions(
            method=str(doc.get("method", "diffusion")), cover=str(doc.get("cover", "blur")),
            mask_extent=str(doc.get("mask_extent", "face")), min_face=float(doc.get("min_face", 20)),
            output=str(doc.get("output", "png")), mark=bool(doc.get("mark", False)),
            keep_original_file=bool(doc.get("keep_original_file", False)), pixel_recovery=bool(doc.get("pixel_recovery", False)))
    except (TypeError, ValueError):
        raise InputError("options: min_face must be a number") from None


def _key_input(fields: dict[str, str]) -> actions.KeyInput:
    return actions.KeyInput(key_file=fields.get("key") or None, passphrase=fields.get("passphrase") or None,
                            salt=fields.get("salt") or None)


def create_app(config: ServerConfig | None = None, engine: actions.Engine | None = None, jobs: JobQueue | None = None):
    """The FastAPI app. ``engine`` runs the model side (default: ``config.backbone`` on the CPU
    defaults); ``jobs`` the queue (default: one worker, ``config.max_waiting`` waiting)."""
    config = config or ServerConfig()
    engine = engine or actions.Engine(config.backbone)
    jobs = jobs or JobQueue(config.max_waiting)
    limits = config.limits
    app = FastAPI(title="faceveil", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.jobs, app.state.engine, app.state.config = jobs, engine, config
    app.state.reading = asyncio.Semaphore(FORMS_AT_ONCE)

    @app.exception_handler(FaceveilError)
    async def _faceveil_error(request: Request, exc: FaceveilError):
        from faceveil.web.jobs import one_line

        status = 503 if isinstance(exc, Busy) else 413 if isinstance(exc, UploadTooLarge) else 400
        return error_response(status, one_line(exc))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else "bad request"
        return error_response(exc.status_code, escape(detail, 300))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return error_response(400, escape(f"{where}: {first.get('msg', 'invalid')}", 300))

    def page_headers() -> dict[str, str]:
        return {"Content-Security-Policy": CSP, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer"}

    @app.get("/")
    async def index() -> Response:
        return Response(_static("index.html"), media_type="text/html; charset=utf-8", headers=page_headers())

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC:
            return error_response(404, "no such file")
        return Response(_static(name), media_type=STATIC[name], headers=page_headers())

    @app.get("/api/info")
    async def info() -> dict:
        from faceveil.data.photo_cover import COVERS
        from faceveil.data.photo_detect import METHODS
        from faceveil.data.photo_mask import MASK_EXTENTS

        return {"version": __version__, "backbone": engine.spec, "methods": list(METHODS), "covers": list(COVERS),
                "mask_extents": list(MASK_EXTENTS), "outputs": list(actions.OUTPUT_FORMATS), "video": True, "pixel_recovery": True,
                "max_upload_mb": limits.max_upload_mb, "max_pixels": limits.max_pixels, "max_files": limits.max_files}

    @app.post("/api/keygen")
    async def keygen() -> Response:
        from faceveil.keys import SecretKey, key_file_bytes

        key = SecretKey.generate()
        return Response(key_file_bytes(key), media_type="application/octet-stream",
                        headers={"Content-Disposition": 'attachment; filename="faceveil.key"', "Cache-Control": "no-store",
                                 "X-Key-Fingerprint": key.fingerprint})

    def started(job) -> JSONResponse:
        return JSONResponse({"job": job.id}, status_code=202)

    def need_files(uploads: list[actions.Upload]) -> None:
        if not uploads:
            raise InputError("no file: drop or choose at least one")

    async def photo_form(request: Request) -> tuple[list[actions.Upload], dict, Any, Any]:
        """The uploads, form fields, face options and hand-given regions of a detect or anonymize request."""
        uploads, fields = await _read_form(request, limits)
        need_files(uploads)
        return uploads, fields, _options(fields), actions.parse_regions(_json_field(fields, "regions"), len(uploads))

    @app.post("/api/detect")
    async def detect(request: Request) -> JSONResponse:
        uploads, _, options, regions = await photo_form(request)
        return started(jobs.submit("detect", lambda job: actions.detect_photos(
            job, engine, uploads, options, regions, limits.max_pixels, config.workdir)))

    @app.post("/api/anonymize")
    async def anonymize(request: Request) -> JSONResponse:
        uploads, fields, options, regions = await photo_form(request)
        key_input = _key_input(fields)
        if not (key_input.key_file or key_input.passphrase):
            raise InputError("no key: generate or choose a key file, or enter a passphrase and its salt")
        return started(jobs.submit("anonymize", lambda job: actions.anonymize_uploads(
            job, engine, uploads, key_input, options, regions, limits.max_pixels, config.workdir)))

    @app.post("/api/recover")
    async def recover(request: Request) -> JSONResponse:
        uploads, fields = await _read_form(request, limits)
        need_files(uploads)
        key_input = _key_input(fields)
        return started(jobs.submit("recover", lambda job: actions.recover_uploads(
            job, engine, uploads, key_input, limits.max_pixels, config.workdir)))

    @app.post("/api/verify")
    async def verify(request: Request) -> JSONResponse:
        uploads, fields = await _read_form(request, limits)
        need_files(uploads)
        key_input = _key_input(fields)
        return started(jobs.submit("verify", lambda job: actions.verify_uploads(job, uploads, key_input, config.workdir)))

    def find_job(job_id: str):
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "no such job (finished results are kept for 15 minutes)")
        return job

    @app.get("/api/jobs/{job_id}")
    async def job_status(job_id: str) -> JSONResponse:
        job = find_job(job_id)
        return JSONResponse(job.status(jobs.position(job)), headers={"Cache-Control": "no-store"})

    @app.delete("/api/jobs/{job_id}")
    async def job_forget(job_id: str) -> dict:
        return {"forgotten": jobs.forget(job_id)}

    @app.get("/api/jobs/{job_id}/files/{n}")
    async def job_file(job_id: str, n: int, download: int = 0) -> Response:
        job = find_job(job_id)
        if job.state != "done" or not 0 <= n < len(job.files):
            raise HTTPException(404, "no such file")
        f = job.files[n]
        disposition = "attachment" if download else "inline"
        return Response(f.data, media_type=f.media_type, headers={
            "Content-Disposition": f'{disposition}; filename="{f.name}"', "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff"})

    @app.get("/api/jobs/{job_id}/zip")
    async def job_zip(job_id: str) -> Response:
        job = find_job(job_id)
        if job.state != "done":
            raise HTTPException(404, "the job has not finished")
        buf = io.BytesIO()
        names: set[str] = set()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            for f in job.files:
                if f.preview:
                    continue
                name, k = f.name, 1
                while name in names:
                    k += 1
                    stem, dot, suffix = f.name.partition(".")
                    name = f"{stem}-{k}{dot}{suffix}"
                names.add(name)
                z.writestr(name, f.data)
        return Response(buf.getvalue(), media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="faceveil-{job.kind}.zip"', "Cache-Control": "no-store"})

    app.add_middleware(BodyLimit, limits=limits)
    app.add_middleware(Guard, config=config)
    app.add_middleware(OneLineErrors)
    return app
