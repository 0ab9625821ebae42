"""charrnn.units: the one byte and duration formatter."""
import math

import pytest

from charrnn.units import fmt_bytes, fmt_duration


@pytest.mark.parametrize("n, text", [
    (0, "0 bytes"), (1023, "1023 bytes"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (5 * 2**20, "5.0 MiB"), (int(1.25 * 2**30), "1.2 GiB"), (3 * 2**40, "3.0 TiB"),
    (2**60, "1024.0 PiB"), (None, "?"), (math.nan, "?"), (math.inf, "?"),
])
def test_fmt_bytes(n, text):
    assert fmt_bytes(n) == text


@pytest.mark.parametrize("s, text", [
    (0, "0s"), (7.4, "7s"), (59.6, "1m00s"), (65, "1m05s"), (3600, "1h00m00s"),
    (12345.6, "3h25m46s"), (90061, "1d01h01m01s"), (-1, "?"), (math.nan, "?"),
    (None, "?"), (True, "?"), ("5", "?"),
])
def test_fmt_duration(s, text):
    assert fmt_duration(s) == text
