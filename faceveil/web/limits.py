"""How much one request may bring: bytes on the wire, files, pixels per photo.

The byte limit is enforced on the request body as it streams in (:class:`BodyLimit`), before the
form is parsed, so an oversized upload costs at most the limit; the pixel limit is checked from
each photo's header before it is decoded (:func:`faceveil.data.photo_io.load_photo`).
"""

from __future__ import annotations

from dataclasses import dataclass

from faceveil.data.photo_io import DEFAULT_MAX_PIXELS
from faceveil.errors import InputError

DEFAULT_MAX_UPLOAD_MB = 64
DEFAULT_MAX_FILES = 100


@dataclass(frozen=True)
class Limits:
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB  # one request's body, all files together
    max_pixels: int = DEFAULT_MAX_PIXELS  # one photo
    max_files: int = DEFAULT_MAX_FILES  # one request

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    def too_large(self) -> str:
        return f"the upload is over the limit of {self.max_upload_mb:g} MB per request (faceveil serve --max-upload-mb)"


class UploadTooLarge(InputError):
    """The request body passed :attr:`Limits.max_upload_bytes`."""


class BodyLimit:
    """ASGI middleware: refuses a request whose body is larger than ``limit`` bytes, from its
    Content-Length at once, else as the bytes arrive (raised inside the form parser)."""

    def __init__(self, app, limits: Limits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limits.max_upload_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            from faceveil.web.app import error_response

            return await error_response(413, self.limits.too_large())(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise UploadTooLarge(self.limits.too_large())
            return message

        return await self.app(scope, limited, send)
