"""The Prefect API this project talks to: which URL, whether it answers, and what to start when it does not.

Used by ``sipl serve`` (pipelines/serve.py), which needs the API, and ``sipl doctor`` (pipelines/doctor.py), which
reports on it.
"""

from __future__ import annotations

from sipl import env as _env  # noqa: F401  (analytics off before Prefect is imported)

import os
import urllib.error
import urllib.request

from sipl.errors import SiplError

START_SERVER_HINT = ("start one with `prefect server start --host 127.0.0.1 --port 4200` and set "
                     "`export PREFECT_API_URL=http://127.0.0.1:4200/api` in this shell and in the one that runs "
                     "`prefect deployment run`")


def prefect_api_url() -> str:
    """The Prefect API this process talks to (``PREFECT_API_URL`` or the active Prefect profile); raises
    SiplError with what to start when none is configured or it does not answer."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        from prefect.settings import get_current_settings

        url = get_current_settings().api.url
    if not url:
        raise SiplError(f"PREFECT_API_URL is not set, so there is no Prefect server to serve to: {START_SERVER_HINT}")
    check_prefect_api(url)
    return url


def check_prefect_api(url: str, timeout_s: float = 5.0) -> None:
    """GET ``{url}/health``; raise SiplError naming the URL and what to start when it does not answer."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout_s) as response:
            if response.status != 200:
                raise SiplError(f"Prefect API at {url} answered HTTP {response.status} on /health; "
                                "check PREFECT_API_URL (it ends in /api)")
    except urllib.error.HTTPError as error:
        raise SiplError(f"Prefect API at {url} answered HTTP {error.code} on /health; check PREFECT_API_URL "
                        "(it ends in /api)") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise SiplError(f"Prefect API at {url} is unreachable ({reason}): is the server running? "
                        f"{START_SERVER_HINT}") from None
