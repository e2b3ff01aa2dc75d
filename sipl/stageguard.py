"""A DVC stage command stops when the ``dvc`` process that started it is gone.

DVC runs a stage's command as a child (through the user's shell) and, when it is killed by its PID, leaves that
child running; the orphan may later write outputs that DVC already recorded, or will record, differently. When
``sipl`` runs as a stage command (DVC sets ``DVC_STAGE`` in its environment), a daemon thread watches the nearest
``dvc`` ancestor process and, once it has exited, interrupts the command like Ctrl-C would: the stage's cleanup
(temporary names removed, nothing renamed into place) runs and the process exits with 130. Linux ``/proc`` only;
elsewhere nothing is watched.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

POLL_S = 1.0
# After the interrupt, the command gets this long to clean up before the process ends itself.
GRACE_S = 30.0


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time in clock ticks) of ``pid`` from /proc, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces; the fields after it are fixed.
    fields = text[text.rfind(")") + 2:].split()
    return int(fields[1]), fields[19]


def _is_dvc(pid: int) -> bool:
    """Whether ``pid`` runs DVC: ``dvc ...``, ``python -m dvc ...`` or a path ending in ``/dvc``."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    words = [os.path.basename(word.decode(errors="replace")) for word in argv[:3] if word]
    return bool(words) and (words[0] == "dvc" or (len(words) > 1 and words[1] == "dvc")
                            or any(a == "-m" and b == "dvc" for a, b in zip(words, words[1:])))


def find_dvc_ancestor(pid: int | None = None, depth: int = 6) -> tuple[int, str] | None:
    """(pid, start time) of the nearest ``dvc`` process among the ancestors of ``pid`` (default: this process)."""
    current = os.getpid() if pid is None else pid
    for _ in range(depth):
        info = _stat(current)
        if info is None or info[0] <= 1:
            return None
        parent = info[0]
        if _is_dvc(parent):
            parent_info = _stat(parent)
            return (parent, parent_info[1]) if parent_info else None
        current = parent
    return None


def _alive(pid: int, started: str) -> bool:
    info = _stat(pid)
    return info is not None and info[1] == started  # a reused pid has another start time


def _watch(pid: int, started: str, command: str) -> None:
    while _alive(pid, started):
        time.sleep(POLL_S)
    print(f"sipl {command}: the dvc process (pid {pid}) that started this stage has exited; stopping, so that "
          "no output is written after DVC gave up on the stage", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGINT)  # a real signal also wakes a main thread blocked in a wait
    time.sleep(GRACE_S)
    os._exit(130)


def start(command: str) -> bool:
    """Watch the ``dvc`` ancestor when running as a DVC stage command; returns whether a watch was started.
    Call from the main thread (it may install the SIGINT handler)."""
    if not os.environ.get("DVC_STAGE") or not Path("/proc/self/stat").exists():
        return False
    ancestor = find_dvc_ancestor()
    if ancestor is None:
        return False
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # inherited from a background shell job
        signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=_watch, args=(*ancestor, command), name="sipl-stage-guard", daemon=True).start()
    return True
