"""Plugins operators want: beam lifetime and a per-fill summary."""

from __future__ import annotations

import math
from collections import deque

from .base import Latest, Plugin, value

RINGS = {"Yellow": "yi2-wcm3", "Blue": "bo2-wcm3"}


class Lifetime(Plugin):
    """Beam lifetime of both rings from the decay of the WCM current over a sliding window.

    A least-squares fit of ``ln I`` against time over the last ``window`` seconds gives
    ``I = I0 exp(-t / tau)``; ``tau`` is published in seconds (NaN while the beam is not
    decaying, e.g. during injection or without beam).
    """

    name = "lifetime"
    interval = 10.0
    offset = 1.0
    inputs = list(RINGS.values())
    outputs = [f"lifetime{ring}" for ring in RINGS]
    window = 300.0
    min_current = 1.0  # 10^11: below this there is no beam to speak of

    def __init__(self) -> None:
        self.samples = {ring: deque() for ring in RINGS}

    def compute(self, latest: Latest, now: float) -> dict[str, float]:
        out = {}
        for ring, obj in RINGS.items():
            got = value(latest, obj, "wcmBeam")
            samples = self.samples[ring]
            if got is not None and (not samples or got[1] > samples[-1][0]):
                samples.append((got[1], got[0]))
            while samples and samples[0][0] < now - self.window:
                samples.popleft()
            out[f"lifetime{ring}"] = decay_time(samples, self.min_current)
        return out


def decay_time(samples, min_current: float = 0.0) -> float:
    """Exponential decay time of ``[(t, I), ...]`` (NaN unless it is decaying)."""
    pts = [(t, math.log(i)) for t, i in samples if i > min_current]
    if len(pts) < 3:
        return math.nan
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((t - mt) ** 2 for t, _ in pts)
    if sxx == 0:
        return math.nan
    slope = sum((t - mt) * (y - my) for t, y in pts) / sxx
    return -1.0 / slope if slope < 0 else math.nan


class FillSummary(Plugin):
    """The current fill of the yellow ring: number, peak and integrated current, duration."""

    name = "fill"
    interval = 5.0
    offset = 2.0
    inputs = ["ring-yellow", "yi2-wcm3"]
    outputs = ["fillNumber", "peakCurrent", "integratedCurrent", "duration"]

    def __init__(self) -> None:
        self.fill: int | None = None
        self.start = self.last_t = 0.0
        self.peak = self.integral = 0.0
        self.last_i = 0.0

    def compute(self, latest: Latest, now: float) -> dict[str, float] | None:
        fill, current = value(latest, "ring-yellow", "fillNumber"), value(latest, "yi2-wcm3",
                                                                            "wcmBeam")
        if fill is None or current is None:
            return None
        (number, _), (i, t) = fill, current
        if number != self.fill:
            self.fill, self.start, self.last_t = number, t, t
            self.peak = self.integral = 0.0
            self.last_i = i
        elif t > self.last_t:
            self.integral += 0.5 * (i + self.last_i) * (t - self.last_t)  # trapezoids
            self.last_t, self.last_i = t, i
        self.peak = max(self.peak, i)
        return {"fillNumber": number, "peakCurrent": self.peak,
                "integratedCurrent": self.integral, "duration": self.last_t - self.start}
