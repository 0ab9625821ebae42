"""click parameter types shared by the commands (import cost: click only).

Every numeric option rejects NaN and infinity and values outside its range with a usage
error (exit 2) that names the option and the value, before anything is allocated.
"""
from __future__ import annotations

import math
import re

import click


class FiniteFloat(click.ParamType):
    """A finite float in [min, max] (``min_open``/``max_open`` exclude the bound)."""

    name = "float"

    def __init__(self, min=None, max=None, min_open=False, max_open=False):
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def _range(self) -> str:
        lo = "" if self.min is None else f"{'>' if self.min_open else '>='} {self.min:g}"
        hi = "" if self.max is None else f"{'<' if self.max_open else '<='} {self.max:g}"
        return " and ".join(p for p in (lo, hi) if p)

    def convert(self, value, param, ctx):
        if isinstance(value, float) and math.isfinite(value):
            x = value
        else:
            try:
                x = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number.", param, ctx)
            if not math.isfinite(x):
                self.fail(f"{value!r} is not a finite number.", param, ctx)
        bad = ((self.min is not None and (x < self.min or (self.min_open and x == self.min)))
               or (self.max is not None and (x > self.max or (self.max_open and x == self.max))))
        if bad:
            self.fail(f"{value} is not in the valid range (must be {self._range()}).", param, ctx)
        return x


_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}


class Duration(click.ParamType):
    """A wall-clock duration: ``90`` (seconds), ``90s``, ``30m``, ``2h``, ``1h30m``, ``1d``."""

    name = "duration"
    _part = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            seconds = float(value)
        else:
            text = str(value).strip().lower()
            pos, seconds = 0, 0.0
            if not text:
                self.fail("empty duration", param, ctx)
            while pos < len(text):
                m = self._part.match(text, pos)
                if not m or m.group(2) not in _UNITS:
                    self.fail(f"{value!r} is not a duration (examples: 90s, 30m, 2h, 1h30m).",
                              param, ctx)
                seconds += float(m.group(1)) * _UNITS[m.group(2)]
                pos = m.end()
                while pos < len(text) and text[pos] == " ":
                    pos += 1
        if not math.isfinite(seconds) or seconds < 0 or seconds > 366 * 86400:
            self.fail(f"{value!r} is not a duration between 0 and 366 days.", param, ctx)
        return seconds


__all__ = ["FiniteFloat", "Duration"]
