"""Keeping credentials out of every line the project prints or logs.

Used for the output of DVC commands the Prefect flow streams (``pipelines/dvc_runner.py``), ``sipl doctor``'s
diagnostics and the storage error messages of ``sipl.storage``.
"""

from __future__ import annotations

import os
import re
from typing import Iterable

# Environment variables whose values must never reach a log line or an artifact.
SECRET_ENV_KEYS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "PREFECT_API_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_STORAGE_KEY",
)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s:]+:[^/@\s]+@")


def secret_values(env: dict[str, str] | None = None) -> list[str]:
    """Values of credential variables present in ``env`` (default: os.environ), longest first."""
    env = os.environ if env is None else env
    values = {env[key] for key in SECRET_ENV_KEYS if env.get(key) and len(env[key]) >= 4}
    return sorted(values, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every secret value (default: those of ``os.environ``) and every ``user:password@`` part of a
    URL replaced by ``***``."""
    for secret in secret_values() if secrets is None else secrets:
        text = text.replace(secret, "***")
    return _URL_USERINFO.sub(r"\g<scheme>***@", text)
