"""Numbers for people: the one way charrnn writes sizes and durations in its messages."""
from __future__ import annotations

import math

_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def fmt_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB'; 1023 -> '1023 bytes'; binary units, one decimal; None -> '?'."""
    if n is None or not math.isfinite(n):
        return "?"
    if abs(n) < 1024:
        return f"{int(n)} bytes"
    for unit in _BYTE_UNITS:
        n /= 1024
        if abs(n) < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def fmt_duration(seconds: float | None) -> str:
    """12345.6 -> '3h25m46s', 65 -> '1m05s', 7 -> '7s', 90061 -> '1d01h01m01s'; '?' for
    a value that is not a finite, non-negative number."""
    if (seconds is None or isinstance(seconds, bool) or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds) or seconds < 0):
        return "?"
    s = int(round(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m{s:02d}s"
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"
