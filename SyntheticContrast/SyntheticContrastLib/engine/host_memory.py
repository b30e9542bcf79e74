"""The host's memory as the operating system reports it: this process's resident and peak bytes, and what is
available to it, a container's own limit included. No torch, so the Slicer panel can ask too."""

from __future__ import annotations

import os
from pathlib import Path


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def resident_bytes() -> int | None:
    """This process's resident set now (Linux), or None."""
    return _status_kib("VmRSS")


def peak_resident_bytes() -> int | None:
    """This process's resident high-water mark (Linux VmHWM; elsewhere getrusage's, which counts the same), or None."""
    peak = _status_kib("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
        import sys

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(maxrss if sys.platform == "darwin" else maxrss * 1024)  # macOS counts bytes, Linux KiB
    except (ImportError, OSError):
        return None


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _cgroup_headroom() -> int | None:
    """What a container's memory limit leaves: cgroup v2's memory.max - memory.current, or v1's pair."""
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        cap, used = _read_int(limit), _read_int(usage)
        if cap is not None and used is not None and cap < 1 << 60:  # v1 writes a huge number for no limit
            return max(0, cap - used)
    return None


def available_bytes() -> int | None:
    """Memory a new allocation can get without swapping: Linux's MemAvailable, or a container's headroom where that is
    smaller; sysconf's available pages elsewhere; None where the system does not say."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = None
    headroom = _cgroup_headroom()
    if headroom is not None:
        available = headroom if available is None else min(available, headroom)
    return available
