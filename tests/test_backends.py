"""One set of behaviour tests over every archive backend: SQLite, PostgreSQL, MongoDB.

PostgreSQL: the server at ``WARDEN_TEST_POSTGRES_URI`` (default the loopback one that
``.ci/run`` starts); each test gets a database of its own, dropped afterwards. Outside CI the
PostgreSQL tests are skipped when no server answers; in CI they fail instead.
MongoDB: mongomock, or the real server at ``WARDEN_TEST_MONGO_URI`` (a database per test).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import os
import secrets
import threading
import types
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from conftest import sim_config
from event_model import compose_run
from tiled.client import from_uri as tiled_from_uri

from catalog.backends import ArchiveUnavailable, drop_mock, open_backend
from catalog.migrate import migrate, served
from catalog.query import Archive, QueryError, UnknownObjectError
from catalog.server import TiledServer, warden_app
from catalog.uri import ArchiveURI
from plans.clock import Clock
from warden.cli import main
from warden.config import ConfigError
from warden.service import WardenService
from warden_devices.machine import N_BUCKETS

ZONE = ZoneInfo("America/New_York")
BACKENDS = ["sqlite", "postgresql", "mongo"]
PG_ADMIN = os.environ.get(
    "WARDEN_TEST_POSTGRES_URI", "postgresql://postgres@127.0.0.1:5432/postgres"
)
MONGO = os.environ.get("WARDEN_TEST_MONGO_URI")
OBJECTS = ["yi2-wcm3", "ring-yellow"]


# -- servers and fresh archives --------------------------------------------------------------------
def _say(request, line: str) -> None:
    """Print past pytest's capture, so a CI log says which servers the tests used."""
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


async def _pg(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_server(request) -> str:
    try:
        asyncio.run(_pg("SELECT 1"))
    except Exception as err:  # noqa: BLE001 - any failure means: no usable server
        message = f"no PostgreSQL server at {PG_ADMIN}: {err!r}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must run the PostgreSQL tests)")
        pytest.skip(message)
    _say(request, f"\ntest_backends: PostgreSQL server {ArchiveURI.parse(PG_ADMIN)}")
    return PG_ADMIN


@pytest.fixture(scope="session")
def mongo_server(request) -> str | None:
    mongo = ArchiveURI.parse(MONGO) if MONGO else "mongomock (in memory)"
    _say(request, f"\ntest_backends: MongoDB {mongo}")
    return MONGO


@contextlib.contextmanager
def fresh_archive(kind: str, tmp_path, request):
    """A URI of an empty archive of ``kind`` that is removed afterwards."""
    name = f"warden_test_{secrets.token_hex(6)}"
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / name / 'archive.db'}"
    elif kind == "postgresql":
        admin = request.getfixturevalue("postgres_server")
        asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
        try:
            yield ArchiveURI.parse(admin).with_database(name)
        finally:
            asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    elif kind == "mongo":
        server = request.getfixturevalue("mongo_server")
        if server is None:
            uri = f"mongomock://{name}/warden"
            try:
                yield uri
            finally:
                drop_mock(uri)
        else:
            import pymongo

            try:
                yield ArchiveURI.parse(server).with_database(name)
            finally:
                with pymongo.MongoClient(server) as client:
                    client.drop_database(name)
    else:
        raise ValueError(kind)


@pytest.fixture(params=BACKENDS)
def archive_uri(request, tmp_path):
    with fresh_archive(request.param, tmp_path, request) as uri:
        yield uri


# -- the service on a backend ----------------------------------------------------------------------
@contextlib.contextmanager
def run_service(uri: str, data_dir, start: dt.datetime, seconds: float):
    """Run the sim service on archive ``uri`` for ``seconds`` from clock time ``start``;
    yield (service, its served Archive) while the server still runs.

    mongomock is in memory, one per process, so no service runs on it: there, the service
    runs on SQLite and the documents its plan emitted are written into the mongomock archive
    by the Mongo sink, served by ``warden_app`` on a thread (with the service's ``latest``)."""
    if ArchiveURI.parse(uri).scheme == "mongomock":
        with _run_service_into_mock(uri, data_dir, start, seconds) as ran:
            yield ran
        return
    backend = open_backend(uri, data_dir=data_dir)
    clock = Clock(ZONE)
    config = sim_config(data_dir, spool=str(data_dir / "spool"))  # archive: the backend given
    service = WardenService(config, clock=clock, port=0, backend=backend)
    service.sim.update_period = 0.25
    try:
        service.start()
        clock.set(start)  # the clock starts now, after the server is up
        threading.Timer(seconds, service.stop).start()
        service.run()
        service.writer.join()
        assert service.writer.errors == 0
        yield service, service.archive()
    finally:
        service.close()
        backend.close()


@contextlib.contextmanager
def _run_service_into_mock(uri: str, data_dir, start: dt.datetime, seconds: float):
    source = data_dir / f"source-{secrets.token_hex(4)}"
    documents: list[tuple[str, dict]] = []
    clock = Clock(ZONE)
    config = sim_config(source, spool=str(source / "spool"))
    service = WardenService(config, clock=clock, port=0)
    service.sim.update_period = 0.25
    service.callbacks.append(lambda name, doc: documents.append((name, copy.deepcopy(doc))))
    backend = open_backend(uri, data_dir=data_dir)
    key = secrets.token_hex(16)
    app = warden_app(backend.tree, service.latest, ZONE.key, key)
    try:
        service.start()
        clock.set(start)
        threading.Timer(seconds, service.stop).start()
        service.run()
        with TiledServer(app).running() as url:
            sink = backend.sink(url, key)
            for name, doc in documents:
                sink(name, doc)
            mock = types.SimpleNamespace(latest=service.latest, url=url, api_key=key)
            yield mock, Archive.from_uri(url, api_key=key)
    finally:
        service.close()
        backend.close()


# -- behaviour, on every backend -------------------------------------------------------------------
def test_service_end_to_end(archive_uri, tmp_path):
    start = dt.datetime(2001, 11, 6, 10, 0, tzinfo=ZONE)
    with run_service(archive_uri, tmp_path / "arrays", start, seconds=3) as (service, archive):
        assert archive.days() == ["2001-11-06"]
        assert archive.objects() == OBJECTS
        for obj in OBJECTS:
            df = archive.day(obj, "2001-11-06")
            # every row the plan emitted is archived and read back, in time order
            assert len(df) == service.latest.get(obj)["rows"] >= 2, obj
            assert df["time"].is_monotonic_increasing
            assert str(df["time"].dt.tz) == ZONE.key
            newest = archive.latest(obj)
            assert newest["connected"] is True
            for attr, item in newest["attributes"].items():
                last = df[attr].iloc[-1]
                assert np.asarray(last).tolist() == item["value"], (obj, attr)
        wcm = archive.day("yi2-wcm3", "2001-11-06")
        assert list(wcm.columns) == ["time", "wcmBeam", "bunchIntensity"]
        bunches = np.stack(wcm["bunchIntensity"].to_list())
        assert bunches.shape == (len(wcm), N_BUCKETS) and bunches.dtype == np.float64
        np.testing.assert_allclose(bunches.sum(axis=1), wcm["wcmBeam"], rtol=0.02, atol=1e-3)
        ring = archive.day("ring-yellow", "2001-11-06")
        assert ring["fillNumber"].dtype == np.int64
        assert ring["species"].map(type).eq(str).all()
        middle = wcm["time"].iloc[len(wcm) // 2]
        later = archive.range("yi2-wcm3", middle.isoformat(), "2001-11-06T11:00")
        pd.testing.assert_frame_equal(later, wcm[wcm["time"] >= middle].reset_index(drop=True))
        assert archive.range("yi2-wcm3", "2001-11-06T11:00", "2001-11-06T12:00").empty
        assert archive.day("yi2-wcm3", "2001-11-07").empty
        conn = archive.connections("yi2-wcm3", "2001-11-06")
        assert len(conn) >= 1 and conn["connected"].all()

        # the stock clients read the same archive
        runs = tiled_from_uri(service.url, api_key=service.api_key)["archive"]
        run = runs.values().last()
        assert run.start["day"] == "2001-11-06" and run.stop["exit_status"] == "success"
        ds = run["yi2-wcm3"].read()
        assert ds["bunchIntensity"].shape == (len(wcm), N_BUCKETS)
        np.testing.assert_array_equal(ds["wcmBeam"].values, wcm["wcmBeam"].values)

        # clear errors, whatever the backend
        with pytest.raises(UnknownObjectError, match="unknown object 'nope'"):
            archive.day("nope", "2001-11-06")
        with pytest.raises(QueryError, match="malformed date"):
            archive.day("yi2-wcm3", "6 Nov 2001")
        with pytest.raises(QueryError, match="impossible date"):
            archive.day("yi2-wcm3", "2001-02-30")
        with pytest.raises(QueryError, match="not after its start"):
            archive.range("yi2-wcm3", "2001-11-07", "2001-11-06")
        with pytest.raises(QueryError, match="at most"):
            archive.range("yi2-wcm3", "1990-01-01", "2001-01-01")


def test_midnight_rollover_makes_two_runs(archive_uri, tmp_path):
    start = dt.datetime(2001, 11, 6, 23, 59, 57, tzinfo=ZONE)
    with run_service(archive_uri, tmp_path / "arrays", start, seconds=6) as (_, archive):
        runs = list(archive.catalog.values())
        assert [r.start["day"] for r in runs] == ["2001-11-06", "2001-11-07"]
        assert all(r.stop["exit_status"] == "success" for r in runs)
        assert archive.days() == ["2001-11-06", "2001-11-07"]
        midnight = pd.Timestamp(dt.datetime(2001, 11, 7, tzinfo=ZONE))
        before = archive.day("yi2-wcm3", "2001-11-06")
        after = archive.day("yi2-wcm3", "2001-11-07")
        assert len(before) >= 4 and len(after) >= 4
        assert (before["time"] < midnight).all() and (after["time"] >= midnight).all()
        both = archive.range("yi2-wcm3", "2001-11-06T23:59:50", "2001-11-07T00:00:10")
        pd.testing.assert_frame_equal(both, pd.concat([before, after], ignore_index=True))
        assert len(archive.day("ring-yellow", "2001-11-07")) >= 2


def test_restart_within_a_day_merges_both_runs(archive_uri, tmp_path):
    arrays = tmp_path / "arrays"
    morning = dt.datetime(2001, 11, 6, 10, 0, tzinfo=ZONE)
    with run_service(archive_uri, arrays, morning, seconds=3) as (_, first):
        n_first = len(first.day("yi2-wcm3", "2001-11-06"))
    afternoon = dt.datetime(2001, 11, 6, 14, 0, tzinfo=ZONE)
    with run_service(archive_uri, arrays, afternoon, seconds=3) as (_, second):
        assert [r.start["day"] for r in second.catalog.values()] == ["2001-11-06"] * 2
        assert second.days() == ["2001-11-06"]
        df = second.day("yi2-wcm3", "2001-11-06")
        assert len(df) > n_first >= 4
        assert df["time"].is_monotonic_increasing
        assert set(df["time"].dt.hour) == {10, 14}
        later = second.range("yi2-wcm3", "2001-11-06T12:00", "2001-11-06T15:00")
        assert len(later) == len(df) - n_first
        conn = second.connections("yi2-wcm3", "2001-11-06")
        assert conn["connected"].all() and len(conn) >= 2


# -- the same frames from every backend ------------------------------------------------------------
T0 = dt.datetime(2001, 11, 6, 9, 0, tzinfo=ZONE).timestamp()


def synthetic_runs() -> list[list[tuple[str, dict]]]:
    """Two runs of one day, as the plan would emit them: every kind of column the warden
    writes (float, integer, boolean, string, array), the connection stream, a stream
    described but never written, and an attribute newer than the others in some rows."""
    runs = []
    for r, t_run in enumerate((T0, T0 + 3600)):
        bundle = compose_run(
            metadata={"day": "2001-11-06", "objects": ["gauge", "wcm", "idle"]}, time=t_run
        )
        docs = [("start", bundle.start_doc)]
        gauge = bundle.compose_descriptor(
            name="gauge",
            data_keys={
                "pressure": {"source": "sim", "dtype": "number", "shape": [],
                             "dtype_numpy": "<f8"},
                "count": {"source": "sim", "dtype": "integer", "shape": [],
                          "dtype_numpy": "<i8"},
                "ok": {"source": "sim", "dtype": "boolean", "shape": []},
                "status": {"source": "sim", "dtype": "string", "shape": []},
            },
            object_keys={"gauge": ["pressure", "count", "ok", "status"]},
        )
        wcm = bundle.compose_descriptor(
            name="wcm",
            data_keys={
                "total": {"source": "sim", "dtype": "number", "shape": [], "dtype_numpy": "<f8"},
                "bunches": {"source": "sim", "dtype": "array", "shape": [6],
                            "dtype_numpy": "<f8"},
            },
            object_keys={"wcm": ["total", "bunches"]},
        )
        conn = bundle.compose_descriptor(
            name="connection",
            data_keys={"object": {"source": "warden", "dtype": "string", "shape": []},
                       "connected": {"source": "warden", "dtype": "boolean", "shape": []}},
            object_keys={"connection": ["object", "connected"]},
        )
        idle = bundle.compose_descriptor(
            name="idle",
            data_keys={"x": {"source": "sim", "dtype": "number", "shape": [],
                             "dtype_numpy": "<f8"}},
            object_keys={"idle": ["x"]},
        )
        docs += [("descriptor", d.descriptor_doc) for d in (gauge, wcm, conn, idle)]
        docs.append(("event_page", conn.compose_event_page(
            data={"object": ["gauge", "wcm", "gauge", "gauge"],
                  "connected": [True, True, False, True]},
            timestamps={k: [t_run, t_run, t_run + 20.5, t_run + 31.25] for k in ("object",
                                                                                 "connected")},
            seq_num=[1, 2, 3, 4], time=[t_run + 1] * 4)))
        for page in range(3):  # three flushes
            rows = range(page * 4, page * 4 + 4)
            ts = [t_run + 2.5 * i + 0.125 for i in rows]
            docs.append(("event_page", gauge.compose_event_page(
                data={"pressure": [1e-9 * (i + 1) + r for i in rows],
                      "count": [10 * i - 7 for i in rows],
                      "ok": [i % 3 != 0 for i in rows],
                      "status": [f"state {i} é" for i in rows]},
                timestamps={"pressure": ts, "count": ts, "ok": ts,
                            "status": [t + (0.5 if i % 2 else 0) for t, i in zip(ts, rows,
                                                                               strict=True)]},
                seq_num=[i + 1 for i in rows], time=[ts[-1] + 0.01] * 4)))
            docs.append(("event_page", wcm.compose_event_page(
                data={"total": [float(i) for i in rows],
                      "bunches": [[i + b / 10 for b in range(6)] for i in rows]},
                timestamps={"total": ts, "bunches": [t + 0.25 for t in ts]},
                seq_num=[i + 1 for i in rows], time=[ts[-1] + 0.01] * 4)))
        docs.append(("stop", bundle.compose_stop(time=t_run + 600)))
        runs.append(docs)
    return runs


def expected_day(runs, stream: str) -> pd.DataFrame:
    """``Archive.day`` of ``stream`` computed from the documents themselves."""
    rows: dict[str, list] = {}
    stamps: list[float] = []
    names = {}
    for docs in runs:
        for name, doc in docs:
            if name == "descriptor":
                names[doc["uid"]] = doc["name"]
            if name == "event_page" and names[doc["descriptor"]] == stream:
                for key, values in doc["data"].items():
                    rows.setdefault(key, []).extend(values)
                stamps.extend(map(max, zip(*doc["timestamps"].values(), strict=True)))
    columns = {}
    for key, values in rows.items():
        first = values[0]
        if isinstance(first, list):
            columns[key] = [np.asarray(v) for v in values]
        elif isinstance(first, str):  # as Tiled reads the string columns of SQL tables
            columns[key] = pd.Series(values, dtype=pd.StringDtype())
        else:
            columns[key] = pd.Series(values)
    times = pd.to_datetime(pd.Series(stamps), unit="s", utc=True).dt.tz_convert(ZONE.key)
    return pd.DataFrame({"time": times, **columns})


def assert_frames_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    arrays = [c for c in want.columns if len(want) and isinstance(want[c].iloc[0], np.ndarray)]
    for col in arrays:
        np.testing.assert_array_equal(np.stack(got[col].to_list()), np.stack(want[col].to_list()))
    pd.testing.assert_frame_equal(got.drop(columns=arrays), want.drop(columns=arrays),
                                  check_dtype=True, check_exact=False, rtol=0, atol=1e-6)


def write_documents(backend, runs) -> None:
    with served(backend) as (url, key):
        sink = backend.sink(url, key)
        for docs in runs:
            for name, doc in docs:
                sink(name, doc)


def test_every_backend_answers_the_same_frames(archive_uri, tmp_path):
    runs = synthetic_runs()
    backend = open_backend(archive_uri, data_dir=tmp_path / "arrays")
    try:
        write_documents(backend, runs)
        with served(backend, objects=["gauge", "wcm", "idle"]) as (url, key):
            archive = Archive(tiled_from_uri(url, api_key=key), zone=ZONE)
            assert archive.days() == ["2001-11-06"]
            for stream in ("gauge", "wcm"):
                want = expected_day(runs, stream)
                assert_frames_equal(archive.day(stream, "2001-11-06"), want)
                got = archive.range(stream, "2001-11-06T09:00:05", "2001-11-06T10:00:05")
                cut = want[(want["time"] >= pd.Timestamp("2001-11-06T09:00:05", tz=ZONE))
                           & (want["time"] < pd.Timestamp("2001-11-06T10:00:05", tz=ZONE))]
                assert_frames_equal(got, cut.reset_index(drop=True))
            gauge = archive.day("gauge", "2001-11-06")
            assert gauge["ok"].dtype == bool and gauge["count"].dtype == np.int64
            assert archive.day("idle", "2001-11-06").empty
            conn = archive.connections("gauge", "2001-11-06")
            assert conn["connected"].tolist() == [True, False, True] * 2
            assert conn["time"].iloc[1] == pd.Timestamp(T0 + 20.5, unit="s", tz=ZONE)
            with pytest.raises(UnknownObjectError):
                archive.day("connection", "2001-11-06")
    finally:
        backend.close()


def test_recording_shows_a_run_opened_ahead_from_its_midnight(tmp_path):
    """The plan opens a day's run 30 s before its midnight; a stop in those 30 s closes the
    next day's run holding no row. ``recording`` says what the runs recorded of the day."""
    day1 = dt.datetime(2001, 11, 7, tzinfo=ZONE).timestamp()
    day2 = dt.datetime(2001, 11, 8, tzinfo=ZONE).timestamp()
    runs = []
    for day, opened, stopped, status in (("2001-11-07", day1 - 30, day1 + 3600, "success"),
                                         ("2001-11-08", day2 - 30, day2 - 10, "abort")):
        bundle = compose_run(metadata={"day": day, "objects": []}, time=opened)
        runs.append([("start", bundle.start_doc),
                     ("stop", bundle.compose_stop(time=stopped, exit_status=status))])
    backend = open_backend(f"sqlite:///{tmp_path / 'archive.db'}", data_dir=tmp_path / "a")
    try:
        write_documents(backend, runs)
        with served(backend, objects=[]) as (url, key):
            archive = Archive(tiled_from_uri(url, api_key=key), zone=ZONE)
            rec = archive.recording("2001-11-07")
            assert rec["start"].tolist() == [pd.Timestamp(day1, unit="s", tz=ZONE)]
            assert rec["stop"].tolist() == [pd.Timestamp(day1 + 3600, unit="s", tz=ZONE)]
            assert archive.recording("2001-11-08").empty
    finally:
        backend.close()


# -- warden migrate --------------------------------------------------------------------------------
def all_frames(archive: Archive) -> dict:
    frames = {}
    for day in archive.days():
        for obj in archive.objects():
            frames[obj, day] = archive.day(obj, day)
        frames["connections", day] = archive.connections("yi2-wcm3", day)
    return frames


def served_frames(uri: str, data_dir) -> dict:
    backend = open_backend(uri, data_dir=data_dir, init=False)
    try:
        with served(backend, objects=OBJECTS) as (url, key):
            archive = Archive(tiled_from_uri(url, api_key=key), zone=ZONE)
            return all_frames(archive), len(list(archive.catalog))
    finally:
        backend.close()


@pytest.mark.parametrize("src, dst", [("sqlite", "postgresql"), ("sqlite", "mongo"),
                                      ("mongo", "sqlite")])
def test_migrate_copies_days_identically_and_only_once(src, dst, tmp_path, request):
    with (fresh_archive(src, tmp_path / "src", request) as src_uri,
          fresh_archive(dst, tmp_path / "dst", request) as dst_uri):
        src_arrays, dst_arrays = tmp_path / "src-arrays", tmp_path / "dst-arrays"
        start = dt.datetime(2001, 11, 6, 23, 59, 58, tzinfo=ZONE)
        with run_service(src_uri, src_arrays, start, seconds=4) as (_, archive):
            want = all_frames(archive)
        assert {day for _, day in want} == {"2001-11-06", "2001-11-07"}

        first = migrate(src_uri, dst_uri, day="2001-11-07",
                        src_data_dir=src_arrays, dst_data_dir=dst_arrays)
        assert first.days == ["2001-11-07"] and len(first.copied) == 1
        everything = migrate(src_uri, dst_uri, src_data_dir=src_arrays, dst_data_dir=dst_arrays)
        assert len(everything.copied) == 1 and len(everything.skipped) == 1
        got, n_runs = served_frames(dst_uri, dst_arrays)
        assert n_runs == 2
        assert got.keys() == want.keys()
        for key, frame in want.items():
            pd.testing.assert_frame_equal(got[key], frame, check_exact=True, obj=str(key))

        again = migrate(src_uri, dst_uri, src_data_dir=src_arrays, dst_data_dir=dst_arrays)
        assert again.copied == [] and len(again.skipped) == 2 and again.events == 0
        got_again, n_runs = served_frames(dst_uri, dst_arrays)
        assert n_runs == 2
        for key, frame in want.items():
            pd.testing.assert_frame_equal(got_again[key], frame, check_exact=True, obj=str(key))


@pytest.mark.parametrize("dst", ["sqlite", "postgresql", "mongo"])
def test_migrate_replaces_an_interrupted_copy(dst, tmp_path, request):
    runs = synthetic_runs()
    with (fresh_archive("mongo", tmp_path / "src", request) as src_uri,
          fresh_archive(dst, tmp_path / "dst", request) as dst_uri):
        source = open_backend(src_uri)
        write_documents(source, runs)
        source.close()
        arrays = tmp_path / "dst-arrays"
        target = open_backend(dst_uri, data_dir=arrays)
        # start, descriptors and the first pages (an array among them), then "a crash"
        interrupted = runs[0][:8]
        assert [name for name, _ in interrupted][-3:] == ["event_page"] * 3
        write_documents(target, [interrupted])
        target.close()
        summary = migrate(src_uri, dst_uri, dst_data_dir=arrays)
        assert len(summary.copied) == 2 and len(summary.replaced) == 1
        assert summary.events == sum(
            len(doc["seq_num"]) for docs in runs for name, doc in docs if name == "event_page"
        )
        backend = open_backend(dst_uri, data_dir=arrays)
        try:
            with served(backend, objects=["gauge", "wcm"]) as (url, key):
                archive = Archive(tiled_from_uri(url, api_key=key), zone=ZONE)
                assert len(list(archive.catalog)) == 2
                assert_frames_equal(archive.day("wcm", "2001-11-06"), expected_day(runs, "wcm"))
                assert_frames_equal(archive.day("gauge", "2001-11-06"),
                                    expected_day(runs, "gauge"))
        finally:
            backend.close()


# -- errors ----------------------------------------------------------------------------------------
def test_bad_archive_uris_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown archive URI scheme 'ftp'"):
        open_backend("ftp://host/archive")
    with pytest.raises(ValueError, match="names no database"):
        open_backend("mongomock://x")
    with pytest.raises(ArchiveUnavailable, match="cannot open the archive"):
        open_backend("postgresql://nobody:secret@127.0.0.1:9/none")  # discard port: refused
    with pytest.raises(ArchiveUnavailable, match="no such file"):
        migrate(f"sqlite:///{tmp_path / 'absent.db'}", f"sqlite:///{tmp_path / 'b.db'}")
    with pytest.raises(ValueError, match="the same archive"):
        migrate("mongomock://same/db", "mongomock://same/db")
    with pytest.raises(QueryError, match="malformed date"):
        migrate("mongomock://a/db", "mongomock://b/db", day="6 Nov")


def test_the_service_refuses_an_in_memory_archive(tmp_path, capsys):
    """mongomock:// lives in one process; the service writes and serves from others."""
    uri = "mongomock://demo/warden"
    backend = open_backend(uri)
    try:
        with pytest.raises(ConfigError, match="archive: mongomock:// is in memory"):
            WardenService(sim_config(tmp_path), backend=backend)
    finally:
        backend.close()
        drop_mock(uri)
    config = tmp_path / "warden.yml"
    config.write_text("archive: mongomock://demo/warden\nobjects:\n"
                      "  - {name: yi2-wcm3, type: WcmControl, source: sim, mode: monitor}\n")
    assert main(["run", str(config), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warden run: archive") and "mongomock" in err[0]


def test_passwords_never_show():
    with pytest.raises(ArchiveUnavailable) as err:
        open_backend("postgresql://warden:hunter2@127.0.0.1:9/archive")
    assert "hunter2" not in str(err.value) and "warden:***@127.0.0.1:9" in str(err.value)
    assert ArchiveURI.parse("mongodb://w:hunter2@m1:27017,m2/db?authSource=admin").redacted() == (
        "mongodb://w:***@m1:27017,m2/db?authSource=admin"
    )
    assert ArchiveURI.parse("sqlite:///a/b.db").redacted() == "sqlite:///a/b.db"


def test_documents_written_again_land_once(archive_uri, tmp_path, monkeypatch):
    """What a replay of the spool does after a crash: a new writer is given documents of which
    some are already in the archive, one page of them only partly (its table but not its
    array); every reading still lands exactly once."""
    import catalog.writer

    runs = synthetic_runs()
    docs = [d for run in runs for d in run]
    backend = open_backend(archive_uri, data_dir=tmp_path / "arrays")
    real, calls = catalog.writer._Stream._append_array, []

    def cut_short(self, key, array):  # the archive goes away between table and array
        calls.append(key)
        if len(calls) == 2:
            raise ConnectionError("archive went away")
        return real(self, key, array)

    try:
        with served(backend, objects=["gauge", "wcm", "idle"]) as (url, key):
            monkeypatch.setattr(catalog.writer._Stream, "_append_array", cut_short)
            crashed = backend.sink(url, key)
            with pytest.raises(ConnectionError) if "mongo" not in archive_uri else \
                    contextlib.nullcontext():
                for name, doc in docs[: 2 * len(docs) // 3]:
                    crashed(name, doc)
            monkeypatch.undo()
            for _ in range(2):  # replayed after a restart, then once more
                again = backend.sink(url, key)
                for name, doc in docs:
                    again(name, doc)
            archive = Archive(tiled_from_uri(url, api_key=key), zone=ZONE)
            assert len(list(archive.catalog)) == len(runs)
            for stream in ("gauge", "wcm"):
                assert_frames_equal(archive.day(stream, "2001-11-06"), expected_day(runs, stream))
            assert len(archive.connections("gauge", "2001-11-06")) == 6
    finally:
        backend.close()
