"""The Archiver Appliance retrieval API (``/retrieval``) against the session's ``warden run``
(simulated IOC over Channel Access), read by two clients from PyPI: epicsarchiver-retrieval-
client (PB/HTTP, ``getData.raw``) and aapy (JSON, in a child process: its generated protobuf
module needs protobuf's pure-Python implementation). Answers are compared with
``catalog.query.Archive`` reading the same archive through Tiled.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import time

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import API_KEY, ZONE, run_service, sim_config, wait_for

from catalog.compact import Compactor
from catalog.pb import encode
from catalog.query import Archive
from catalog.reduce import reduce, reduce_frame, unix_seconds
from catalog.retrieval import parse_pv

PV = "yi2-wcm3:wcmBeam"
OBJ, ATTR = PV.split(":")
KEY = {"Authorization": f"Apikey {API_KEY}"}


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def window(warden_server):
    """A span of archived samples of ``PV``: (url, archive, t0, t1, expected samples), the
    expected ones read by ``Archive.raw_day`` (one per upstream timestamp)."""
    url = warden_server["url"]
    archive = Archive.from_uri(url, api_key=API_KEY)

    def samples():
        t1 = float(int(time.time() - 1.0))  # whole seconds: aapy sends no fractions
        wait_for(lambda: (archive.latest(OBJ)["archived_time"] or 0) > t1 + 0.5, timeout=30)
        raw = archive.raw_day(OBJ, dt.datetime.fromtimestamp(t1, archive.zone).date())
        return (t1, *distinct_samples(raw))

    wait_for(lambda: (lambda t1, ts, _: len(ts) > 10 and ts[5] + 3 < t1)(*samples()))
    t1, ts, vals = samples()
    t0 = float(int(ts[5]) + 1)  # a prior sample exists, and the span has samples
    inside = (ts >= t0) & (ts <= t1)
    prior = np.flatnonzero(ts < t0)[-1]
    return {"url": url, "archive": archive, "t0": t0, "t1": t1, "ts": ts, "vals": vals,
            "expected": (np.r_[ts[prior], ts[inside]], np.r_[vals[prior], vals[inside]])}


def retrieval_client(url: str):
    from epicsarchiver import ArchiverRetrieval

    host, port = url.removeprefix("http://").rsplit(":", 1)
    client = ArchiverRetrieval(host, int(port))
    client.session.headers.update(KEY)
    return client


def test_epicsarchiver_reads_a_range_as_the_archive_holds_it(window):
    client = retrieval_client(window["url"])
    start = dt.datetime.fromtimestamp(window["t0"], dt.UTC)
    end = dt.datetime.fromtimestamp(window["t1"], dt.UTC)
    meta, events = client.get_events(PV, start, end)
    seconds = np.array([e.timestamp.timestamp() for e in events])
    values = np.array([e.val for e in events])
    want_t, want_v = window["expected"]
    np.testing.assert_allclose(seconds, want_t, atol=2e-6, rtol=0)
    np.testing.assert_array_equal(values, want_v)
    assert meta[start.year].pv_name == PV


def test_epicsarchiver_reads_a_binned_mean_computed_in_the_server(window):
    from epicsarchiver.retrieval.client.processor import Processor, ProcessorName

    client = retrieval_client(window["url"])
    t0, t1 = window["t0"], window["t1"]
    _, events = client.get_events(PV, dt.datetime.fromtimestamp(t0, dt.UTC),
                                  dt.datetime.fromtimestamp(t1, dt.UTC),
                                  Processor(ProcessorName.MEAN, 5))
    ts, vals = window["ts"], window["vals"]
    inside = (ts >= t0) & (ts <= t1)
    # the same mean by pandas, over Archive's samples of the span
    frame = pd.DataFrame({"bin": np.floor(ts[inside] / 5), "v": vals[inside]})
    want = frame.groupby("bin")["v"].mean()
    got = pd.Series([e.val for e in events],
                    index=[np.floor(e.timestamp.timestamp() / 5) for e in events])
    assert len(got) >= 2
    pd.testing.assert_series_equal(got, want, check_names=False, check_index_type=False)
    assert all(e.timestamp.timestamp() % 5 == 2.5 for e in events)  # bins stamped mid-bin


def test_aapy_reads_json_and_the_binned_mean(window):
    script = textwrap.dedent(f"""
        import datetime as dt, json, sys
        from aa.js import JsonFetcher
        host, port = {window["url"].removeprefix("http://")!r}.rsplit(":", 1)
        f = JsonFetcher(host, int(port))
        start = dt.datetime.fromtimestamp({float(window["t0"])!r}, dt.timezone.utc)
        end = dt.datetime.fromtimestamp({float(window["t1"])!r}, dt.timezone.utc)
        out = {{}}
        for pv in ({PV!r}, "max_5({PV})"):
            d = f.get_values(pv, start, end, request_params={{"api_key": {API_KEY!r}}})
            out[pv] = [d.timestamps.tolist(), d.values.tolist()]
        json.dump(out, sys.stdout)
    """)
    env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    want_t, want_v = window["expected"]
    np.testing.assert_allclose(got[PV][0], want_t, atol=2e-6, rtol=0)
    np.testing.assert_array_equal(np.ravel(got[PV][1]), want_v)
    ts, vals = window["ts"], window["vals"]
    inside = (ts >= window["t0"]) & (ts <= window["t1"])
    want = pd.Series(vals[inside]).groupby(np.floor(ts[inside] / 5)).max()
    np.testing.assert_array_equal(np.ravel(got[f"max_5({PV})"][1]), want.to_numpy())


def test_get_data_at_time_gives_the_sample_in_force(window):
    ts, vals = window["ts"], window["vals"]
    at = (ts[3] + ts[4]) / 2
    r = httpx.post(f"{window['url']}/retrieval/data/getDataAtTime", params={"at": iso(at)},
                   json=[PV, "yi2-wcm3:nosuch", "nosuch:wcmBeam"], headers=KEY)
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == [PV]  # unknown PVs are left out
    assert body[PV]["val"] == vals[3]
    assert body[PV]["secs"] + body[PV]["nanos"] * 1e-9 == pytest.approx(ts[3], abs=2e-6)


def test_json_csv_txt_agree_and_pvs_are_listed(window):
    base = f"{window['url']}/retrieval"
    span = {"pv": PV, "from": iso(window["t0"]), "to": iso(window["t1"])}
    (answer,) = httpx.get(f"{base}/data/getData.json", params=span, headers=KEY).json()
    assert answer["meta"]["name"] == PV and set(answer["meta"]) >= {"EGU", "PREC"}
    assert [d["val"] for d in answer["data"]] == window["expected"][1].tolist()
    csv = httpx.get(f"{base}/data/getData.csv", params=span, headers=KEY).text.splitlines()
    assert [float(line.split(",")[1]) for line in csv] == window["expected"][1].tolist()
    txt = httpx.get(f"{base}/data/getData.txt", params=span, headers=KEY).text.splitlines()
    assert txt[0].startswith(f"# {PV}") and len(txt) == len(csv) + 1
    arrays = httpx.get(f"{base}/data/getData.json", headers=KEY, params={
        **span, "pv": "yi2-wcm3:bunchIntensity"}).json()[0]["data"]
    assert arrays and all(len(d["val"]) == len(arrays[0]["val"]) > 1 for d in arrays)
    pvs = httpx.get(f"{base}/bpl/getAllPVs", headers=KEY).json()
    assert PV in pvs and "yi2-wcm3:bunchIntensity" in pvs
    matching = httpx.get(f"{base}/bpl/getMatchingPVs", params={"pv": "yi2-*:wcm*"},
                         headers=KEY).json()
    assert matching == [p for p in pvs if p.startswith("yi2-") and ":wcm" in p]
    assert matching


def test_optimized_gives_pydm_its_bins_or_the_samples(window):
    span = {"from": iso(window["t0"]), "to": iso(window["t1"])}

    def get(pv: str) -> list[dict]:
        r = httpx.get(f"{window['url']}/retrieval/data/getData.json", params={**span, "pv": pv},
                      headers=KEY)
        assert r.headers["content-type"] == "application/json"  # PyDM wants exactly that
        return r.json()[0]["data"]

    inside = window["expected"][1][1:]  # (no sample before the range)
    assert [d["val"] for d in get(f"optimized_100000({PV})")] == inside.tolist()
    bins = get(f"optimized_2({PV})")
    assert 2 <= len(bins) <= 3 and all(len(d["val"]) == 5 for d in bins)
    mean, std, low, high, count = np.array([d["val"] for d in bins]).T
    assert count.sum() == len(inside) and low.min() == inside.min()
    assert high.max() == inside.max()
    assert (mean * count).sum() == pytest.approx(inside.sum())


@pytest.mark.parametrize("params, status, words", [
    ({"pv": "nosuch:wcmBeam"}, 404, "unknown pv"),
    ({"pv": "yi2-wcm3:nosuch"}, 404, "no attribute"),
    ({"pv": PV, "from": "2001-11-07T00:00Z", "to": "2001-11-06T00:00Z"}, 400, "after"),
    ({"pv": PV, "from": "2001-13-45T00:00"}, 400, "from"),
    ({"pv": f"median_60({PV})"}, 400, "unknown post-processor"),
    ({"pv": f"mean_0({PV})"}, 400, "> 0"),
    ({"pv": f"mean_-5({PV})"}, 400, "> 0"),
    ({"pv": ""}, 400, "malformed pv"),
])
def test_bad_requests_are_one_line_4xx(warden_server, params, status, words):
    params = {"from": "2001-11-06T00:00Z", "to": "2001-11-06T01:00Z", **params}
    r = httpx.get(f"{warden_server['url']}/retrieval/data/getData.json", params=params,
                  headers=KEY)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert words in detail and "\n" not in detail


def test_retrieval_needs_the_key(warden_server):
    base = f"{warden_server['url']}/retrieval"
    assert httpx.get(f"{base}/bpl/getAllPVs").status_code == 401
    assert httpx.get(f"{base}/data/getData.json", params={"pv": PV}).status_code == 401
    assert httpx.post(f"{base}/data/getDataAtTime", json=[PV]).status_code == 401
    assert httpx.get(f"{base}/bpl/getAllPVs", params={"api_key": API_KEY}).status_code == 200
    bad = httpx.post(f"{base}/data/getDataAtTime", content=b"{not json", headers=KEY)
    assert bad.status_code == 400


def distinct_samples(raw: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``PV``'s samples in ``Archive.raw_day`` rows: one per upstream timestamp, in order."""
    ts = raw[f"ts_{ATTR}"].astype(float).to_numpy()
    vals = raw[ATTR].astype(float).to_numpy()
    order = np.argsort(ts, kind="stable")
    ts, vals = ts[order], vals[order]
    keep = np.r_[True, ts[1:] != ts[:-1]]
    return ts[keep], vals[keep]


def test_a_range_across_midnight_reads_sql_and_parquet_days_alike(tmp_path):
    start = dt.datetime(2001, 11, 6, 23, 59, 56, tzinfo=ZONE)
    span = {"pv": PV, "from": "2001-11-06T23:59:00-05:00", "to": "2001-11-07T00:01:00-05:00"}
    with run_service(sim_config(tmp_path), start, seconds=8, compact_grace=None,
                     public=True) as archive:
        parts = [distinct_samples(archive.raw_day(OBJ, d)) for d in ("2001-11-06", "2001-11-07")]
        url = archive.root.uri.split("/api/")[0]

        def get(pv: str) -> list[dict]:  # no key: the server is public
            r = httpx.get(f"{url}/retrieval/data/getData.json", params={**span, "pv": pv})
            assert r.status_code == 200, r.text
            return r.json()[0]["data"]

        rows, counts = get(PV), get(f"count_60({PV})")
        assert Compactor(tmp_path / "archive.db", grace=0).run().tables > 0
        assert (get(PV), get(f"count_60({PV})")) == (rows, counts)  # from Parquet now
    days = {dt.datetime.fromtimestamp(d["secs"], ZONE).day for d in rows}
    assert days == {6, 7}
    assert [d["val"] for d in rows] == np.concatenate([p[1] for p in parts]).tolist()
    assert sum(d["val"] for d in counts) == len(rows)


def test_archive_day_bins_each_attribute(window):
    archive = window["archive"]
    day = dt.datetime.fromtimestamp(window["t1"], archive.zone).date()
    df = archive.day(OBJ, day)
    binned = archive.day(OBJ, day, bin="10s", agg="max")
    seconds = unix_seconds(df["time"])
    want = df.groupby(np.floor(seconds / 10))[ATTR].max()
    complete = len(want) - 1  # (rows go on arriving into the last bin between the reads)
    np.testing.assert_array_equal(binned[ATTR].to_numpy()[:complete], want.to_numpy()[:complete])
    assert "bunchIntensity" in binned  # arrays element by element
    assert len(binned["bunchIntensity"][0]) == len(df["bunchIntensity"][0])
    with pytest.raises(ValueError, match="unknown aggregate"):
        archive.day(OBJ, day, bin="10s", agg="median")
    with pytest.raises(ValueError, match="bin"):
        archive.day(OBJ, day, bin="soon")


def test_cli_day_bin_and_bad_bin(window):
    archive = window["archive"]
    day = dt.datetime.fromtimestamp(window["t1"], archive.zone).date().isoformat()
    env = {**os.environ, "WARDEN_API_KEY": API_KEY}
    cmd = [sys.executable, "-m", "warden", "day", OBJ, day, "--server", window["url"]]
    done = subprocess.run([*cmd, "--bin", "1h", "--agg", "count", "--format", "csv"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    counts = pd.read_csv(__import__("io").StringIO(done.stdout))
    assert counts[ATTR].sum() >= len(archive.day(OBJ, day)) - 50  # (rows still arriving)
    bad = subprocess.run([*cmd, "--bin", "0"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "bin" in bad.stderr.strip().splitlines()[-1]


# -- the pieces, without a server ----------------------------------------------------------------
def test_parse_pv_reads_aa_post_processors():
    assert parse_pv(PV).agg is None
    asked = parse_pv(f"firstSample_600({PV})")
    assert (asked.pv, asked.agg, asked.width) == (PV, "firstSample", 600)
    assert parse_pv(f"mean({PV})").width == 900


def test_reduce_matches_pandas_on_uneven_samples():
    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(1e9, 1e9 + 3600, 5000))
    v = rng.normal(size=5000)
    groups = pd.Series(v).groupby(np.floor(t / 60))
    for agg, want in [("mean", groups.mean()), ("min", groups.min()), ("max", groups.max()),
                      ("count", groups.count()), ("std", groups.std()),
                      ("firstSample", groups.first()), ("lastSample", groups.last())]:
        times, got = reduce(t, v, 60, agg)
        np.testing.assert_allclose(got, want.to_numpy(), rtol=1e-12, err_msg=agg)
    times, _ = reduce(t, v, 60, "mean")
    np.testing.assert_array_equal(times, want.index.to_numpy() * 60 + 30)
    frame = pd.DataFrame({"time": pd.to_datetime(t, unit="s", utc=True), "v": v, "s": "x"})
    binned = reduce_frame(frame, "1min", "mean")
    assert list(binned.columns) == ["time", "v"]
    np.testing.assert_allclose(binned["v"], pd.Series(v).groupby(np.floor(t / 60)).mean())
    for unit in ("s", "ms", "us", "ns"):  # any resolution of the times
        frame["time"] = frame["time"].astype(f"datetime64[{unit}, UTC]")
        assert len(reduce_frame(frame, "1min", "mean")) == len(binned)


def test_pb_escapes_and_splits_years():
    from epicsarchiver.retrieval.pb import parse_pb_data

    awkward = np.frombuffer(b"\x1b\n\r\x1b\x01\x02\n\r", "<f8")[0]  # every escaped byte
    t = np.array([1009843199.25, 1009843200.5, 1009843210.0])  # across 2001 -> 2002
    v = np.array([awkward, 16.4228, -0.0])
    meta, events = parse_pb_data(encode(PV, t, v, {"EGU": "mA", "PREC": "4"}))
    assert sorted(meta) == [2001, 2002]
    assert [e.val for e in events] == v.tolist()
    assert [e.timestamp.timestamp() for e in events] == pytest.approx(t.tolist(), abs=1e-6)
    rows = np.full((2, 4), awkward)
    _, events = parse_pb_data(encode("a:b", t[:2], rows, {}))
    assert [list(e.val) for e in events] == rows.tolist()
