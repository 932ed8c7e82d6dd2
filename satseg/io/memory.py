"""What memory this process can still get, and the refusal to read an image that would not fit in it."""

from __future__ import annotations

import os
from pathlib import Path

from satseg.errors import InputError
from satseg.io._common import _fmt_bytes


def _check_memory(path: Path, what: str, needed: int) -> None:
    """Refuse, before allocating, to read ``what`` (the header's claim, with its size) when the ``needed`` bytes
    exceed the memory this process can still get."""
    available = _available_memory()
    if available is not None and needed > available:
        raise InputError(
            f"{path.name}: the header describes {what}; reading it needs more than the "
            f"{_fmt_bytes(available)} of memory available"
        )


def _available_memory() -> int | None:
    """Bytes this process can still allocate: Linux's MemAvailable plus free swap, lowered to the cgroup's limit
    where one is set (containers); the physical memory on other systems; None when unknown."""
    meminfo = {}
    try:
        with open("/proc/meminfo") as fobj:
            for line in fobj:
                key, _, value = line.partition(":")
                meminfo[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if "MemAvailable" in meminfo:
        available = meminfo["MemAvailable"] + meminfo.get("SwapFree", 0)
    else:
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    for limit_file, usage_file, stat_file, cache_key in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat",
         "inactive_file"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
         "/sys/fs/cgroup/memory/memory.stat", "total_inactive_file"),  # v1
    ):
        try:
            limit = int(Path(limit_file).read_text())  # "max" (v2, no limit) is not a number
            usage = int(Path(usage_file).read_text())
        except (OSError, ValueError):
            continue
        # the cgroup's usage counts the page cache of files it read and wrote; the inactive part is given back
        # on demand, so it is memory this process can still have (as MemAvailable counts it for the host)
        usage -= _cgroup_stat(stat_file).get(cache_key, 0)
        available = min(available, limit - max(usage, 0))
    return available


def _cgroup_stat(path: str) -> dict[str, int]:
    stats = {}
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                stats[key] = int(value)
    except OSError:
        pass
    return stats
