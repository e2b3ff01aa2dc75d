"""Errors the CLI reports as one clear message (no traceback): what failed, where, and what to do."""


class SiplError(RuntimeError):
    """A user-facing failure: bad input, missing file, unreachable service. The message says what to do."""
