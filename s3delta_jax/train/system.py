"""Peak memory, where the backend reports it."""

from __future__ import annotations

import resource
import sys

import jax


def peak_memory_bytes() -> dict[str, int | None]:
    """{'device': peak bytes in use on device 0 (None on backends that do not report it, e.g. CPU),
    'host_rss': this process's peak resident set size}."""
    stats = jax.local_devices()[0].memory_stats() or {}
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "device": stats.get("peak_bytes_in_use"),
        "host_rss": int(max_rss if sys.platform == "darwin" else max_rss * 1024),
    }
