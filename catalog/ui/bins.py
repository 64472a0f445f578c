"""Time series for the page: binned reductions of long ranges, plain points of short ones."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def numeric_columns(df: pd.DataFrame) -> list[str]:
    """The attributes of a day table that plot as lines: numbers and booleans, not arrays or
    text (``time`` is not an attribute)."""
    return [c for c in df.columns if c != "time" and (pd.api.types.is_numeric_dtype(df[c])
                                                     or pd.api.types.is_bool_dtype(df[c]))]


def reduce_bins(t: np.ndarray, v: np.ndarray, t0: float, t1: float, bins: int) -> dict[str, Any]:
    """``v`` at times ``t`` (UNIX seconds) between ``t0`` and ``t1``, for a plot ``bins`` wide.

    Up to ``bins`` points come back as they are (``{"t", "v"}``); more are reduced to ``bins``
    equal bins, each with its ``mean``, ``min`` and ``max`` and its centre ``t`` (empty bins
    left out). NaN values are left out of both.
    """
    t, v = np.asarray(t, dtype=float), np.asarray(v, dtype=float)
    keep = (t >= t0) & (t < t1) & np.isfinite(v)
    t, v = t[keep], v[keep]
    if len(t) <= bins:
        return {"t": t.tolist(), "v": v.tolist()}
    width = (t1 - t0) / bins
    index = np.minimum(((t - t0) / width).astype(np.int64), bins - 1)
    n = np.bincount(index, minlength=bins)
    total = np.bincount(index, weights=v, minlength=bins)
    low, high = np.full(bins, np.inf), np.full(bins, -np.inf)
    np.minimum.at(low, index, v)
    np.maximum.at(high, index, v)
    full = n > 0
    centres = t0 + (np.arange(bins) + 0.5) * width
    return {"t": centres[full].tolist(), "mean": (total[full] / n[full]).tolist(),
            "min": low[full].tolist(), "max": high[full].tolist(), "width": width}


def series(df: pd.DataFrame, t0: float, t1: float, bins: int) -> dict[str, dict[str, Any]]:
    """Every line attribute of ``df`` (a table of :meth:`catalog.query.Archive.range`) between
    ``t0`` and ``t1``, reduced by :func:`reduce_bins`."""
    if df.empty:
        return {}
    t = ((df["time"] - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(float)
    return {c: reduce_bins(t, df[c].to_numpy(dtype=float), t0, t1, bins)
            for c in numeric_columns(df)}
