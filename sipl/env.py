"""Process environment the project's tools need: analytics and update checks off, quiet defaults.

Called at the start of every entry point (CLI, Prefect flow, Ray worker) so that it holds whatever the user's shell
says; values the user set explicitly are kept.
"""

from __future__ import annotations

import os

QUIET_DEFAULTS = {
    "DVC_NO_ANALYTICS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
}


def apply_quiet_defaults() -> None:
    """Turn off analytics / update checks for DVC, Ray, Prefect and albumentations in this process and its children."""
    for key, value in QUIET_DEFAULTS.items():
        os.environ.setdefault(key, value)


apply_quiet_defaults()
