"""Time series for the page: binned reductions of long ranges, plain points of short ones."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..reduce import reduce, unix_seconds


def numeric_columns(df: pd.DataFrame) -> list[str]:
    """The attributes of a day table that plot as lines: numbers and booleans, not arrays or
    text (``time`` is not an attribute)."""
    return [c for c in df.columns if c != "time" and (pd.api.types.is_numeric_dtype(df[c])
                                                     or pd.api.types.is_bool_dtype(df[c]))]


def reduce_bins(t: np.ndarray, v: np.ndarray, t0: float, t1: float, bins: int) -> dict[str, Any]:
    """``v`` at times ``t`` (UNIX seconds) between ``t0`` and ``t1``, for a plot ``bins`` wide.

    Up to ``bins`` points come back as they are (``{"t", "v"}``); more are reduced
    (:func:`catalog.reduce.reduce`) into ``bins`` bins from ``t0``, each with its
    ``mean``, ``min`` and ``max`` at its centre ``t`` (empty bins left out). NaN values are
    left out of both.
    """
    t, v = np.asarray(t, dtype=float), np.asarray(v, dtype=float)
    keep = (t >= t0) & (t < t1) & np.isfinite(v)
    t, v = t[keep], v[keep]
    if len(t) <= bins:
        return {"t": t.tolist(), "v": v.tolist()}
    order = np.argsort(t, kind="stable")
    since, v = t[order] - t0, v[order]  # (bins from t0, not from the epoch)
    width = (t1 - t0) / bins
    centres, mean = reduce(since, v, width, "mean")
    return {"t": (centres + t0).tolist(), "mean": mean.tolist(),
            "min": reduce(since, v, width, "min")[1].tolist(),
            "max": reduce(since, v, width, "max")[1].tolist(), "width": width}


def series(df: pd.DataFrame, t0: float, t1: float, bins: int) -> dict[str, dict[str, Any]]:
    """Every line attribute of ``df`` (a table of :meth:`catalog.query.Archive.range`) between
    ``t0`` and ``t1``, reduced by :func:`reduce_bins`."""
    if df.empty:
        return {}
    t = unix_seconds(df["time"])
    return {c: reduce_bins(t, df[c].to_numpy(dtype=float), t0, t1, bins)
            for c in numeric_columns(df)}
