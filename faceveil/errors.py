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
