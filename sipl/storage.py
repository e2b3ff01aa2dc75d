"""Object storage (S3): the retry settings of every S3 client sipl makes, and storage failures as one sentence.

Retries. Every s3fs filesystem sipl creates (shards, sources, benchmark imports, Ray's checkpoint storage) gets,
through fsspec's per-protocol config, botocore's ``standard`` retry mode: a request that fails transiently (the
connection is refused or dropped, a timeout, HTTP 500/502/503/504, throttling) is sent again, up to
``AWS_MAX_ATTEMPTS`` attempts in all (default ``DEFAULT_ATTEMPTS``), with exponential backoff and jitter (a random
wait of at most 1, 2, 4, 8 s before the 2nd, 3rd, 4th, 5th attempt); s3fs repeats such a round once more
(``S3FS_ROUNDS`` in all) for a dropped connection or a response cut off while its body is read. Connect and read
timeouts: ``CONNECT_TIMEOUT_S``, ``READ_TIMEOUT_S``. With the defaults one request against an endpoint that drops
every connection gives up after about 15 s (at most 30 s of backoff), plus the timeouts against one that does not
answer at all.
``AWS_RETRY_MODE`` and ``AWS_MAX_ATTEMPTS`` override the mode and the attempts, as for any AWS tool; DVC, run by the
Prefect flow, gets the same defaults through its environment (``retry_env``). The first retry of an operation prints
one warning line (``sipl: warning: S3 endpoint ...: retrying``); a drop that the retries outlast costs nothing more.

Failures. When the retries are spent, or for an error no retry fixes (credentials missing or refused), the error
becomes a ``StorageError``: one line naming the endpoint, the object, what happened and what to do; ``sipl`` exits
with ``EXIT_CODE``. Credentials never appear in it (``sipl.redaction``). A missing object stays
``FileNotFoundError`` and a missing bucket is the caller's usage error (exit 2), as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator

from sipl.errors import SiplError
from sipl.redaction import redact

EXIT_CODE = 3
DEFAULT_ATTEMPTS = 5
S3FS_ROUNDS = 2
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 30
# botocore's standard retry handler logs its decisions here (aiobotocore's handler uses the same logger).
_RETRY_LOGGERS = ("botocore.retries.standard", "aiobotocore.retries.standard")
_RETRY_MESSAGE = "Retry needed, retrying request"

# botocore / S3 error codes by what they mean to a user.
CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "InvalidToken",
                    "AllAccessDisabled", "AuthorizationHeaderMalformed", "InvalidClientTokenId", "403"}
THROTTLING_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                    "TooManyRequestsException", "RequestThrottled", "503"}
# Exception class names that mean a storage failure in an error's text (errors Ray hands back as text).
FAILURE_NAMES = ("EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError",
                 "NoCredentialsError", "PartialCredentialsError", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                 "SlowDown", "StorageError")


class StorageError(SiplError):
    """The storage service failed, dropped or refused a request after the retries (exit ``EXIT_CODE``)."""


# ------------------------------------------------------------------------------------------------ settings

def attempts() -> int:
    """Attempts per request in all: ``AWS_MAX_ATTEMPTS`` when set to a positive number, else ``DEFAULT_ATTEMPTS``."""
    value = os.environ.get("AWS_MAX_ATTEMPTS", "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_ATTEMPTS


def client_options() -> dict[str, Any]:
    """s3fs keyword arguments for the retry policy above: botocore's client config (fresh dicts, as botocore may
    fill in what is missing)."""
    return {"config_kwargs": {"connect_timeout": CONNECT_TIMEOUT_S, "read_timeout": READ_TIMEOUT_S,
                              "retries": {"mode": os.environ.get("AWS_RETRY_MODE") or "standard",
                                          "total_max_attempts": attempts()}}}


_USER_CONFIG: dict[str, Any] | None = None


def configure() -> None:
    """Make every s3fs filesystem created from now on use ``client_options`` (what the user set in fsspec's own
    config wins), and turn retries into one warning line. Cheap; called before each S3 client is made, so that
    ``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE`` are read when the client is, not at import."""
    global _USER_CONFIG
    import fsspec.config
    import s3fs

    _install_retry_warning()  # again each time: a logging.config.dictConfig elsewhere resets child loggers
    if _USER_CONFIG is None:
        _USER_CONFIG = dict(fsspec.config.conf.get("s3", {}))
        # s3fs's own retry rounds are a class setting (S3FileSystem takes no such argument); its default, 5 rounds
        # of botocore's attempts each, would make an outage cost minutes per request.
        s3fs.S3FileSystem.retries = S3FS_ROUNDS
    fsspec.config.conf["s3"] = {**client_options(), **_USER_CONFIG}


def retry_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the retry defaults for a subprocess that talks to S3 itself (DVC): standard mode and
    ``DEFAULT_ATTEMPTS`` attempts, unless ``env`` sets them."""
    env = dict(env)
    env.setdefault("AWS_RETRY_MODE", "standard")
    env.setdefault("AWS_MAX_ATTEMPTS", str(DEFAULT_ATTEMPTS))
    return env


def filesystem():
    """The s3fs filesystem for the current environment (``AWS_ENDPOINT_URL``, credentials), with the retry policy."""
    import fsspec

    configure()
    return fsspec.filesystem("s3")


def endpoint() -> str:
    """The endpoint requests go to, for messages: ``AWS_ENDPOINT_URL`` (any user:password part hidden), else AWS."""
    url = os.environ.get("AWS_ENDPOINT_URL")
    return redact(url) if url else "AWS S3 (AWS_ENDPOINT_URL not set)"


def path_of(url: str) -> str:
    """``bucket/key`` of an ``s3://bucket/key`` URL (what s3fs calls a path)."""
    return str(url)[len("s3://"):] if str(url).startswith("s3://") else str(url)


# ------------------------------------------------------------------------------------------------ failures

@dataclass
class _Operation:
    doing: str
    url: str
    warned: bool = False


_CURRENT: list[_Operation] = []


def classify(error: BaseException) -> tuple[str, str] | None:
    """(what happened, what to do) for an error of botocore / aiobotocore / aiohttp / s3fs, or None when ``error`` is
    not a storage failure (a bug, a missing object: the caller's business)."""
    import asyncio

    from botocore import exceptions as bx

    reach = ("check that the endpoint is up and reachable from this machine (AWS_ENDPOINT_URL) and re-run")
    credentials = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or ~/.aws/credentials) to a key this endpoint "
                   "accepts for the bucket, and re-run")
    if isinstance(error, FileNotFoundError):
        return None
    if isinstance(error, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
        return "no usable S3 credentials were found", credentials
    cause = error if isinstance(error, bx.ClientError) else error.__cause__
    if isinstance(cause, bx.ClientError):
        code = str(cause.response.get("Error", {}).get("Code") or
                   cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")
        if code in CREDENTIAL_CODES:
            return f"the endpoint refused the credentials or the access ({code})", credentials
        if code in THROTTLING_CODES:
            return (f"the endpoint is throttling requests ({code})",
                    "wait a few minutes and re-run, or lower the request rate (fewer --workers)")
        message = cause.response.get("Error", {}).get("Message") or code
        return (f"the endpoint failed the request ({code}: {message})",
                "re-run; if it keeps failing, check the storage service's status and logs")
    if isinstance(error, PermissionError):
        return f"the endpoint refused the credentials or the access ({error})", credentials
    if isinstance(error, (bx.ConnectTimeoutError, bx.ReadTimeoutError, asyncio.TimeoutError, TimeoutError)) \
            or type(error).__name__ == "FSTimeoutError":
        return "the endpoint did not answer in time", reach
    if isinstance(error, (bx.ConnectionError, bx.HTTPClientError, ConnectionError)):
        return "the endpoint could not be reached or dropped the connection", reach
    try:
        import aiohttp

        if isinstance(error, aiohttp.ClientError):
            return "the endpoint could not be reached or dropped the connection", reach
    except ImportError:  # pragma: no cover - s3fs depends on aiohttp
        pass
    if isinstance(error, bx.BotoCoreError):
        return f"the S3 client failed ({error})", "check AWS_ENDPOINT_URL and the AWS_* settings, and re-run"
    if isinstance(error, OSError):
        return (f"the request failed ({error.strerror or error})",
                "re-run; if it keeps failing, check the storage service's status and logs")
    return None


def describe(error: BaseException, doing: str, url: str, seconds: float | None = None) -> StorageError | None:
    """The StorageError for ``error`` met while ``doing`` (a verb: "read", "write", "list") ``url``, or None when
    ``error`` is not a storage failure."""
    found = classify(error)
    if found is None:
        return None
    what, fix = found
    waited = ""
    if seconds is not None and seconds >= 1 and fix.startswith(("check that the endpoint", "wait")):
        waited = f", still failing after {seconds:.0f} s ({attempts()} attempts per request)"
    message = f"S3 endpoint {endpoint()}: cannot {doing} {url}: {what} [{type(error).__name__}]{waited}; {fix}"
    return StorageError(redact(" ".join(message.split())))


@contextlib.contextmanager
def storage_errors(doing: str, url: str) -> Iterator[None]:
    """Turn a storage failure inside the block into ``StorageError`` (see ``describe``); the block's retry warning
    names ``doing`` and ``url``. FileNotFoundError, SiplError and anything not storage-related pass unchanged."""
    operation = _Operation(doing, url)
    _CURRENT.append(operation)
    started = time.monotonic()
    try:
        yield
    except SiplError:
        raise
    except Exception as error:
        storage = describe(error, doing, url, time.monotonic() - started)
        if storage is None:
            raise
        raise storage from None
    finally:
        _CURRENT.remove(operation)


def failure_in_text(text: str) -> str | None:
    """The line of an error's text (e.g. a Ray worker's traceback) that shows a storage failure, or None."""
    for line in text.splitlines():
        stripped = line.strip()
        if any(f"{name}:" in stripped or f"{name})" in stripped for name in FAILURE_NAMES) \
                and not stripped.startswith(("File ", "raise ", "^")):
            return redact(stripped)
    return None


# ------------------------------------------------------------------------------------------------ retry warning

class _RetryWarning(logging.Handler):
    """One stderr line at the first retry of an operation (botocore logs each retry decision at DEBUG)."""

    _last_unnamed = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        if not str(record.msg).startswith(_RETRY_MESSAGE):
            return
        delay = record.args[0] if isinstance(record.args, tuple) and record.args else None
        operation = _CURRENT[-1] if _CURRENT else None
        if operation is not None:
            if operation.warned:
                return
            operation.warned = True
            what = f"a request to {operation.doing} {operation.url}"
        else:
            now = time.monotonic()
            if now - self._last_unnamed < 10:
                return
            self._last_unnamed = now
            what = "a request"
        wait = f" in {delay:.1f} s" if isinstance(delay, (int, float)) and delay >= 0.05 else ""
        print(f"sipl: warning: S3 endpoint {endpoint()}: {what} failed (dropped connection, timeout or throttling); "
              f"retrying{wait}, up to {attempts()} attempts", file=sys.stderr, flush=True)


def _install_retry_warning() -> None:
    """Route botocore's retry decisions (and only them) to ``_RetryWarning``. The logger does not propagate, so the
    DEBUG level set here never reaches handlers the application configured."""
    for name in _RETRY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(handler, _RetryWarning) for handler in logger.handlers):
            logger.addHandler(_RetryWarning(level=logging.DEBUG))
        logger.setLevel(logging.DEBUG)
        logger.propagate = False


# ------------------------------------------------------------------------------------------------ operations

def read(url: str) -> bytes:
    """The whole object at ``url``. FileNotFoundError when it does not exist; StorageError on a failure."""
    with storage_errors("read", url):
        return filesystem().cat_file(path_of(url))


def write(url: str, data: bytes) -> None:
    """Write one object (a single PUT, or a multipart upload above 50 MiB: either way the object appears only when
    complete). A missing bucket fails with FileNotFoundError and is never created."""
    with storage_errors("write", url):
        filesystem().pipe_file(path_of(url), data)


def size(url: str) -> int | None:
    """Size in bytes of the object at ``url``, None when it does not exist."""
    with storage_errors("check", url):
        try:
            return int(filesystem().size(path_of(url)))
        except FileNotFoundError:
            return None


def files_under(url: str) -> list[str]:
    """``s3://`` URLs of every object under the prefix ``url`` (recursively), sorted."""
    with storage_errors("list", url):
        return sorted("s3://" + key for key in filesystem().find(path_of(url).rstrip("/")) if not key.endswith("/"))


def entries_under(url: str) -> list[str]:
    """``s3://`` URLs of the objects and sub-prefixes directly under the prefix ``url``; [] when there are none."""
    with storage_errors("list", url):
        try:
            return sorted("s3://" + key.rstrip("/")
                          for key in filesystem().ls(path_of(url).rstrip("/"), detail=False, refresh=True))
        except FileNotFoundError:
            return []


def remove(urls: list[str], what: str) -> None:
    """Delete the objects ``urls`` (``what`` names them in a failure message)."""
    if not urls:
        return
    with storage_errors("remove", what):
        filesystem().rm([path_of(url) for url in urls])


class RemoteReader:
    """A read-only stream of one object whose failures are StorageErrors (for WebDataset's tar reader)."""

    def __init__(self, url: str) -> None:
        self.url = url
        with storage_errors("open", url):
            self._file = filesystem().open(path_of(url), "rb")

    def read(self, size: int = -1) -> bytes:
        with storage_errors("read", self.url):
            return self._file.read(size)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "RemoteReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)
