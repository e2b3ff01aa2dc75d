"""Dropping one known-harmless Ray log line from the driver's output, and saying once why.

Ray Train's detached ``PlacementGroupCleaner`` actor asks Ray's state API every second whether the training
controller is alive. A local Ray instance started without the dashboard (``sipl train`` starts one so) has no state
API, so the actor logs "Failed to query Ray Train Controller actor state ... Continuing to monitor." once a second
for the whole run, and readers take the dozens of lines for failures. Only that message from that actor is held
back; every other line, of that actor too, is printed as Ray prints it.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

NOISE = "Failed to query Ray Train Controller actor state"
NOISY_ACTOR = "PlacementGroupCleaner"
EXPLANATION = ("[sipl train] note: Ray Train's placement-group cleaner cannot query actor state on a local Ray "
               "instance without the dashboard; its repeated 'Failed to query Ray Train Controller actor state' "
               "warnings are harmless and hidden")


def is_noise(data: dict[str, Any], line: str) -> bool:
    """Whether ``line`` of a Ray log batch ``data`` is the cleaner's state-API warning."""
    origin = f"{data.get('actor_name') or ''} {data.get('task_name') or ''}"
    return NOISE in line and (NOISY_ACTOR in origin or NOISY_ACTOR in line or not origin.strip())


def filtering(handler: Callable[[dict[str, Any]], None],
              say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)
              ) -> Callable[[dict[str, Any]], None]:
    """A Ray stdstream handler that passes ``data`` to ``handler`` without the noise lines (``say`` explains once)."""
    explained = False

    def handle(data: dict[str, Any]) -> None:
        nonlocal explained
        lines = data.get("lines") or []
        kept = [line for line in lines if not is_noise(data, line)]
        if len(kept) < len(lines) and not explained:
            explained = True
            say(EXPLANATION)
        if kept or not lines:
            handler({**data, "lines": kept})

    return handle


def quiet_driver_logs() -> bool:
    """Wrap the driver's Ray log printer (after ``ray.init(log_to_driver=True)``) with ``filtering``.

    Returns whether it was wrapped; with another Ray version whose internals differ, nothing changes."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    with dispatcher._lock:  # noqa: SLF001
        for index, (name, handler) in enumerate(dispatcher.handlers):
            if name == "ray_print_logs" and not getattr(handler, "_sipl_filtered", False):
                wrapped = filtering(handler)
                wrapped._sipl_filtered = True  # type: ignore[attr-defined]
                dispatcher.handlers[index] = (name, wrapped)
                return True
    return False
