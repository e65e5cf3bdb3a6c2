"""Errors the command line reports as one clear line (no traceback)."""


class FlameError(RuntimeError):
    """A user-facing failure: bad input, missing file, refused checkpoint, ..."""
