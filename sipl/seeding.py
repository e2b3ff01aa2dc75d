"""Seeds derived from named parts (params seed, sample keys, step numbers), never from process-global RNG state."""

from __future__ import annotations

import hashlib
from typing import Any


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from the given parts (stable across Python versions and processes; no global RNG)."""
    digest = hashlib.sha256("|".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
