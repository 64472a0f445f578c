"""Samples into time bins: mean, min, max, count, std, first and last sample per bin.

The Archiver Appliance's post-processors (``mean_600(PV)``, ...) and ``Archive.day(...,
bin="1h", agg="mean")`` are computed here, on whole columns: bins are ``N``-second spans
aligned to the UNIX epoch (as the Archiver Appliance aligns them), a bin holds the samples
with ``k*N <= t < (k+1)*N``, and every statistic is one ``np.ufunc.reduceat`` over the
sorted samples. A statistic is stamped at the middle of its bin; ``firstSample`` and
``lastSample`` keep the time of the sample they pick. Bins without samples are left out.
Array samples (rows of numbers) are reduced element by element.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

AGGREGATES = ("mean", "min", "max", "count", "std", "firstSample", "lastSample")
_NUMERIC_ONLY = {"mean", "min", "max", "std"}


class BinError(ValueError):
    """A bin width or aggregate that cannot be used."""


def bin_seconds(width: str | float | int) -> float:
    """A bin width (``60``, ``"60s"``, ``"5min"``, ``"1h"``, ``"1d"``) in seconds, > 0."""
    import pandas as pd  # (not at import: the CLI's parser imports this module)

    if isinstance(width, int | float) and not isinstance(width, bool):
        seconds = float(width)
    else:
        text = str(width).strip()
        try:
            seconds = float(text) if text.replace(".", "", 1).isdigit() else \
                pd.Timedelta(text).total_seconds()
        except ValueError:
            raise BinError(f"bin {width!r} is not a duration (e.g. 60, 60s, 5min, 1h)") from None
    if not np.isfinite(seconds) or seconds <= 0:
        raise BinError(f"bin {width!r} must be longer than zero")
    return seconds


def check_aggregate(agg: str) -> str:
    """``agg`` if it is one of :data:`AGGREGATES`, else :class:`BinError`."""
    if agg not in AGGREGATES:
        raise BinError(f"unknown aggregate {agg!r}: one of {', '.join(AGGREGATES)}")
    return agg


def reduce(seconds: np.ndarray, values, width: float, agg: str
           ) -> tuple[np.ndarray, np.ndarray]:
    """``agg`` of ``values`` (1-D, or 2-D rows) in bins of ``width`` seconds.

    ``seconds`` must be sorted. Returns the bins' times (UNIX seconds) and their values
    (``count`` as integers).
    """
    check_aggregate(agg)
    seconds = np.asarray(seconds, dtype=np.float64)
    values = np.asarray(values)
    if len(seconds) == 0:
        return seconds, values[:0] if agg != "count" else np.zeros(0, np.int64)
    if agg in _NUMERIC_ONLY and values.dtype.kind not in "biuf":
        raise BinError(f"{agg} needs numbers, not {values.dtype}")
    bins = np.floor(seconds / width).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, bins[1:] != bins[:-1]])
    ends = np.r_[starts[1:], len(bins)]
    counts = ends - starts
    middle = (bins[starts] + 0.5) * width
    if agg == "firstSample":
        return seconds[starts], values[starts]
    if agg == "lastSample":
        return seconds[ends - 1], values[ends - 1]
    if agg == "count":
        return middle, counts
    shape = (-1,) + (1,) * (values.ndim - 1)
    if agg == "min":
        return middle, np.minimum.reduceat(values, starts, axis=0)
    if agg == "max":
        return middle, np.maximum.reduceat(values, starts, axis=0)
    x = values.astype(np.float64)
    mean = np.add.reduceat(x, starts, axis=0) / counts.reshape(shape)
    if agg == "mean":
        return middle, mean
    # std: the sample standard deviation (n - 1), 0 for a bin of one sample
    deviation = x - np.repeat(mean, counts, axis=0)
    squares = np.add.reduceat(deviation * deviation, starts, axis=0)
    return middle, np.sqrt(squares / np.maximum(counts - 1, 1).reshape(shape))


def unix_seconds(times: pd.Series) -> np.ndarray:
    """Aware datetimes as UNIX seconds, whatever their resolution (ns, us, ms, s)."""
    import pandas as pd

    return ((times - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(float)


def reduce_frame(df: pd.DataFrame, width: str | float, agg: str) -> pd.DataFrame:
    """A day or range frame (``time`` + attributes) reduced per attribute into bins.

    Array attributes (lists of row arrays) are reduced element by element; for a statistic
    that needs numbers, text attributes are left out.
    """
    import pandas as pd

    seconds_per_bin = bin_seconds(width)
    check_aggregate(agg)
    if df.empty:
        return df
    zone = df["time"].dt.tz
    seconds = unix_seconds(df["time"])
    columns: dict[str, object] = {}
    times = None
    for name in df.columns.drop("time"):
        column = df[name]
        values = np.stack(column.to_list()) if column.dtype == object and \
            isinstance(column.iloc[0], np.ndarray) else column.to_numpy()
        if agg in _NUMERIC_ONLY and values.dtype.kind not in "biuf":
            continue
        times, reduced = reduce(seconds, values, seconds_per_bin, agg)
        columns[name] = list(reduced) if reduced.ndim > 1 else reduced
    if times is None:
        times, _ = reduce(seconds, np.zeros(len(seconds)), seconds_per_bin, agg)
    time = pd.to_datetime(times, unit="s", utc=True).tz_convert(zone)
    return pd.DataFrame({"time": time, **columns})
