"""Exceptions with messages fit to show a user: one line, never any secret."""


class FaceveilError(Exception):
    """Base class for errors the CLI reports as one line."""


class InputError(FaceveilError):
    """An input file is unreadable, of an unsupported kind, or inconsistent."""


class KeyMismatchError(FaceveilError):
    """The key does not match the fingerprint stored in an anonymized file."""


class FormatError(FaceveilError):
    """An anonymized file's faceveil metadata is missing, corrupt or of an unknown version."""


class ConfigError(FaceveilError):
    """A configuration is invalid."""


class TamperedError(FormatError):
    """An anonymized file fails authentication: edited pixels or metadata (exit status 3)."""


TAMPERED_EXIT = 3


def escape(value: object, limit: int | None = 200) -> str:
    """An untrusted value (a file name, a header field) for printing: one line, control and format
    characters escaped (printable text, accents included, kept), length capped at ``limit``, so a
    crafted name cannot move the cursor or forge an output line."""
    import unicodedata

    out = "".join(
        ch if ch != "\\" and not unicodedata.category(ch).startswith("C") else ch.encode("unicode_escape").decode("ascii")
        for ch in str(value)
    )
    return out if limit is None or len(out) <= limit else out[:limit] + "..."
