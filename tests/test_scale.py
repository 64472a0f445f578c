"""Scale-out: shards as real processes on loopback, NATS JetStream between them and the
archive writer, PostgreSQL as the archive (``warden.shards``, ``catalog.jetstream``).

NATS: the server at ``WARDEN_TEST_NATS_URL`` (default ``nats://127.0.0.1:4222``, which
``.ci/run`` starts). Outside CI the tests that need it are skipped when none answers.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pandas as pd
import pytest
import yaml
from test_backends import fresh_archive, postgres_server  # noqa: F401 - fixture

from catalog.jetstream import Bus, DocumentPublisher, NatsLink, documents, open_generation
from catalog.query import Archive
from warden.cli import main
from warden.config import parse_config
from warden.shards import ArchiveHost, Shard, SharedDayRuns, shard_config, shard_of

NATS_URL = os.environ.get("WARDEN_TEST_NATS_URL", "nats://127.0.0.1:4222")
API_KEY = "scaletest0key"
OBJECTS = [  # names chosen so that each of two shards has monitored and scanned objects
    {"name": "yi2-wcm3", "type": "WcmControl", "mode": "monitor"},
    {"name": "bo2-wcm3", "type": "WcmControl", "mode": "monitor"},
    {"name": "ring-yellow", "type": "ringSpec", "mode": "scan", "period": 1},
    {"name": "ring-blue", "type": "ringSpec", "mode": "scan", "period": 1},
    {"name": "yi2-dvm", "type": "DvmControl", "mode": "scan", "period": 1},
    {"name": "bi8-dvm", "type": "DvmControl", "mode": "scan", "period": 1},
]


# -- the split, without a server -------------------------------------------------------------------
def test_every_object_is_on_exactly_one_shard_and_stays_there():
    names = [f"obj{i:04d}" for i in range(1000)]
    for k in (1, 2, 3, 7):
        shards = [[n for n in names if shard_of(n, k) == i] for i in range(k)]
        assert sorted(n for part in shards for n in part) == sorted(names)
        assert all(len(part) > 1000 / k / 2 for part in shards)  # roughly even
    before = {n: shard_of(n, 3) for n in names}
    assert {n: shard_of(n, 3) for n in [*names, "new-object"] if n in before} == before


def test_shard_configs_split_the_objects_and_keep_exchange_on_shard_0():
    config = parse_config(yaml.safe_dump({
        "shards": 2, "nats": {"url": NATS_URL},
        "objects": [{**o, "source": "sim"} for o in OBJECTS],
        "exchange": [{"source": "a:b", "target": "c:d"}],
    }))
    parts = [shard_config(config, i, 2) for i in range(2)]
    assert sorted(o.name for p in parts for o in p.objects) == sorted(o["name"] for o in OBJECTS)
    assert all(p.objects for p in parts)
    assert [len(p.exchange) for p in parts] == [1, 0]


def test_bad_shard_settings_are_clear_errors(tmp_path, capsys):
    path = tmp_path / "warden.yaml"
    path.write_text(yaml.safe_dump({"shards": 2, "objects": [{**OBJECTS[0], "source": "sim"}]}))
    assert main(["check-config", str(path)]) == 2
    assert "shards: more than one shard needs nats" in capsys.readouterr().err
    path.write_text(yaml.safe_dump({"shards": 2, "nats": {"url": NATS_URL},
                                    "objects": [{**o, "source": "sim"} for o in OBJECTS]}))
    for arg, message in [("2/2", "--shard: i must be 0 to K-1"), ("x", "--shard: expected i/K"),
                         ("0/3", "--shard: the config has shards: 2, not 3")]:
        assert main(["run", str(path), "--shard", arg]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


# -- real processes: NATS, PostgreSQL, two shards, the archive host --------------------------------
@pytest.fixture(scope="module")
def nats_server() -> str:
    host, port = urlsplit(NATS_URL).hostname, urlsplit(NATS_URL).port or 4222
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as err:
        message = f"no NATS server at {NATS_URL}: {err!r}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must run the scale-out tests)")
        pytest.skip(message)
    return NATS_URL


@pytest.fixture
def deployment(nats_server):
    """A deployment name of the test's own; its stream and buckets are removed afterwards."""
    name = f"wt{secrets.token_hex(4)}"
    yield name
    link = NatsLink(Bus(nats_server, name))
    try:
        link.remove()
    finally:
        link.close()


def test_a_restarted_shard_opens_the_next_generation_and_shards_meet_in_it(deployment):
    bus = Bus(NATS_URL, deployment)
    link = NatsLink(bus)
    try:
        docs = []
        runs = [SharedDayRuns(lambda n, d: docs.append((n, d)),
                              lambda day, i=i: open_generation(link, day, i, 2), deployment, 2)
                for i in (0, 1, 0, 1)]  # shard 0, shard 1, both restarted within the day
        uids = [r.day_run("2001-11-06") for r in runs]
        assert uids[0] == uids[1] != uids[2] == uids[3]
        assert runs[0].day_run("2001-11-07") != uids[0]  # (generation 0 of another day)

        runs[1]("start", {"uid": "local", "day": "2001-11-06", "time": 0})
        runs[1]("descriptor", {"uid": "d", "run_start": "local", "name": "x"})
        runs[1]("stop", {"uid": "s", "run_start": "local"})
        start, descriptor, stop = (d for _, d in docs)
        assert start["uid"] == descriptor["run_start"] == stop["run_start"] != "local"
    finally:
        link.close()


def test_a_document_published_twice_is_stored_once(deployment):
    link = NatsLink(Bus(NATS_URL, deployment))
    try:
        link.ensure_stream()
        publisher = DocumentPublisher(link, shard=0)
        doc = {"uid": "u1", "time": 1.0, "day": "2001-11-06"}
        page = {"uid": ["e1"], "descriptor": "d1", "seq_num": [1], "time": [1.0],
                "data": {"p": [1.5]}, "timestamps": {"p": [1.0]}}
        batch = [*publisher.items("start", doc), *publisher.items("event_page", page)]
        assert link.call(publisher._publish(batch))
        # the same batch again, as after an acknowledgement lost on its way
        assert link.call(publisher._publish(list(batch)))
        info = link.call(link.js.stream_info(link.bus.stream))
        assert info.state.messages == 1  # (one message holds both documents)
        sub = link.call(link.js.pull_subscribe(link.bus.subject(">"), stream=link.bus.stream))
        (message,) = link.call(sub.fetch(10, timeout=5))
        assert documents(message.data) == [("start", doc), ("event_page", page)]
        assert publisher.close(30)
        other = DocumentPublisher(link, shard=1)  # another shard's start of the same day run:
        other("start", dict(doc))  # a document of its own (the writer counts the shards)
        assert other.close(30)
        assert link.call(link.js.stream_info(link.bus.stream)).state.messages == 2
    finally:
        link.close()


def test_a_page_over_the_server_s_largest_message_goes_as_pages_of_its_rows(deployment):
    import event_model

    link = NatsLink(Bus(NATS_URL, deployment))
    try:
        link.ensure_stream()
        publisher = DocumentPublisher(link, shard=0)
        stream = event_model.compose_run().compose_descriptor(
            name="connection-shard0", data_keys={"object": {"dtype": "string", "shape": [],
                                                            "source": "warden"}})
        n = 3 * link.nc.max_payload // 200  # rows of about 200 bytes: three times the limit
        names = [f"object-{i:06d}-" + "x" * 150 for i in range(n)]
        page = stream.compose_event_page(data={"object": names},
                                         timestamps={"object": [1.0] * n},
                                         seq_num=list(range(1, n + 1)), time=[1.0] * n)
        publisher("event_page", page)
        assert publisher.close(30)
        sub = link.call(link.js.pull_subscribe(link.bus.subject(">"), stream=link.bus.stream))
        messages = link.call(sub.fetch(100, timeout=5))
        assert len(messages) >= 3
        assert all(len(m.data) <= link.nc.max_payload for m in messages)
        got = [doc for m in messages for _, doc in documents(m.data)]
        assert len(got) >= 4
        assert [s for p in got for s in p["seq_num"]] == list(range(1, n + 1))
        assert [o for p in got for o in p["data"]["object"]] == names
    finally:
        link.close()


def test_a_writer_that_wrote_but_did_not_acknowledge_loses_and_doubles_nothing(
        deployment, tmp_path, monkeypatch):
    import event_model

    import catalog.jetstream

    config = parse_config(yaml.safe_dump({
        "archive": f"sqlite:///{tmp_path / 'archive.db'}", "serve": {"port": 0},
        "nats": {"url": NATS_URL, "name": deployment},
        "objects": [{"name": "gauge", "type": "generic", "attributes": ["p"], "source": "sim"}],
    }))
    run = event_model.compose_run(metadata={"day": "2001-11-06"})
    desc = run.compose_descriptor(name="gauge", data_keys={
        "p": {"source": "sim", "dtype": "number", "shape": []}})
    pages = [desc.compose_event_page(data={"p": [float(i), i + 0.5]},
                                     timestamps={"p": [float(i), i + 0.5]},
                                     seq_num=[2 * i + 1, 2 * i + 2], time=[float(i)] * 2)
             for i in range(5)]
    documents = [("start", run.start_doc), ("descriptor", desc.descriptor_doc),
                 *(("event_page", p) for p in pages), ("stop", run.compose_stop())]

    async def never(messages) -> None:  # the writer dies between its write and its ack
        return None

    monkeypatch.setattr(catalog.jetstream, "_ack", never)
    first = ArchiveHost(config, api_key=API_KEY)
    first.start()
    link = NatsLink(Bus(NATS_URL, deployment))
    try:
        publisher = DocumentPublisher(link, shard=0)
        for name, doc in documents:
            publisher(name, doc)
        assert publisher.close(30)
        _wait(lambda: first.writer.written == 10, 60, "the first writer's write")
        first.close()  # nothing acknowledged: all of it still in the stream
        monkeypatch.undo()
        second = ArchiveHost(config, api_key=API_KEY)
        second.start()
        try:
            assert second.writer.join(120)
            assert second.writer.written == 10  # all of it came again ...
            archive = Archive.from_uri(second.url, api_key=API_KEY)
            (stored,) = archive.catalog.values()
            assert _rows(archive, stored) == {"gauge": list(range(1, 11))}  # ... and is once
            assert stored.metadata["stop"]["num_events"] == {"gauge": 10}
        finally:
            second.close()
    finally:
        link.close()


def test_two_shards_across_midnight_make_one_run_per_day(deployment, tmp_path):
    import datetime as dt
    import threading
    from zoneinfo import ZoneInfo

    from plans.clock import Clock

    zone = ZoneInfo("America/New_York")
    config = parse_config(yaml.safe_dump({
        "archive": f"sqlite:///{tmp_path / 'archive.db'}", "timezone": zone.key,
        "serve": {"port": 0}, "shards": 2, "nats": {"url": NATS_URL, "name": deployment},
        "objects": [{**o, "source": "sim"} for o in OBJECTS],
    }))
    host = ArchiveHost(config, api_key=API_KEY)
    host.start()
    clock = Clock(zone, rate=2.0)
    shards = [Shard(config, i, clock=clock) for i in range(2)]
    try:
        for shard in shards:
            shard.start()
        clock.set(dt.datetime(2001, 11, 6, 23, 59, 52, tzinfo=zone))
        threads = [threading.Thread(target=s.run) for s in shards]
        for thread in threads:
            thread.start()
        time.sleep(8)  # 16 clock seconds: 8 on each side of midnight
        for shard in shards:
            shard.stop()
        for thread in threads:
            thread.join(120)
    finally:
        for shard in shards:
            shard.close()
    try:
        assert host.writer.join(120)
        archive = Archive.from_uri(host.url, api_key=API_KEY)
        runs = {r.metadata["start"]["day"]: r for r in archive.catalog.values()}
        assert sorted(runs) == ["2001-11-06", "2001-11-07"]  # one run per day for both shards
        for run in runs.values():
            assert set(run) == {*(o["name"] for o in OBJECTS), "connection-shard0",
                                "connection-shard1"}
            assert run.metadata["stop"] and run.metadata["shards_open"] == []
            for stream, seq in _rows(archive, run).items():
                assert seq == list(range(1, len(seq) + 1)), stream
                assert len(seq) == run.metadata["stop"]["num_events"][stream], stream
        for o in OBJECTS:  # each shard's connection log says when its objects connected
            assert archive.connections(o["name"], "2001-11-06")["connected"].any(), o["name"]
        assert archive.streams("2001-11-06") == [o["name"] for o in OBJECTS]
    finally:
        host.close()


def _start(args: list[str], log) -> subprocess.Popen:
    env = {**os.environ, "WARDEN_API_KEY": API_KEY}
    return subprocess.Popen([sys.executable, "-m", "warden", *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def _url(log_path, proc: subprocess.Popen, timeout: float = 240.0) -> str:
    """The server URL an archive host prints."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in log_path.read_text().splitlines():
            if line.startswith("warden: serving") and " at http" in line:
                return line.split(" at ")[1].split()[0]
        assert proc.poll() is None, log_path.read_text()
        time.sleep(0.5)
    raise AssertionError(f"no URL in {log_path.read_text()}")


def _wait(predicate, timeout: float, what: str):
    end, error = time.monotonic() + timeout, None
    while time.monotonic() < end:
        try:
            value = predicate()
        except Exception as err:  # noqa: BLE001 - not there yet (server starting, no run)
            value, error = None, err
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what} (last error: {error!r})")


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 120.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _rows(archive: Archive, run) -> dict[str, list[int]]:
    """``seq_num`` of every row of every stream of ``run``."""
    return {name: list(run[name].base["internal"].read()["seq_num"]) for name in run}


@pytest.mark.timeout(900)
def test_two_shards_one_day_run_latest_for_all_writer_killed_loses_and_doubles_nothing(
        deployment, tmp_path, request):
    names = [o["name"] for o in OBJECTS]
    assert {shard_of(n, 2) for n in names} == {0, 1}
    with fresh_archive("postgresql", tmp_path, request) as uri:
        path = tmp_path / "warden.yaml"
        path.write_text(yaml.safe_dump({
            "archive": uri, "timezone": "America/New_York",
            "serve": {"host": "127.0.0.1", "port": 0},
            "shards": 2, "nats": {"url": NATS_URL, "name": deployment},
            "objects": [{**o, "source": "sim"} for o in OBJECTS],
        }))
        logs = {k: (tmp_path / f"{k}.log").open("w") for k in ("host", "host2", "s0", "s1",
                                                                 "replica")}
        procs = [_start(["archive", str(path)], logs["host"])]
        try:
            url = _url(tmp_path / "host.log", procs[0])
            procs += [_start(["run", str(path), "--shard", f"{i}/2"], logs[f"s{i}"])
                      for i in range(2)]
            archive = Archive.from_uri(url, api_key=API_KEY)

            # latest answers for the objects of both shards, from one server
            _wait(lambda: all(archive.latest(n)["time"] for n in names), 300, "latest of all")
            # every object of both shards lands in one run
            _wait(lambda: len(archive.catalog) == 1 and all(
                n in archive.catalog.values().first() and
                len(archive.catalog.values().first()[n].base["internal"].read()) >= 2
                for n in names), 300, "rows of every object in one run")

            # the writer (and its server) killed mid-stream; another takes over
            _stop(procs[0], signal.SIGKILL)
            time.sleep(3)  # the shards publish on into JetStream meanwhile (not timed)
            procs.append(_start(["archive", str(path)], logs["host2"]))
            url = _url(tmp_path / "host2.log", procs[-1])
            archive = Archive.from_uri(url, api_key=API_KEY)
            procs.append(_start(["archive", str(path), "--serve-only"], logs["replica"]))
            replica = Archive.from_uri(_url(tmp_path / "replica.log", procs[-1]),
                                       api_key=API_KEY)
            _wait(lambda: all(replica.latest(n)["time"] for n in names), 120,
                  "latest of all on a second server")
            _wait(lambda: all(replica.latest(n)["archived_time"] for n in names), 120,
                  "the archived time of every object, from the writer")

            for shard in procs[1:3]:  # their runs get their stops
                _stop(shard)
                assert shard.returncode == 0, (tmp_path / "s0.log").read_text()
            run = _wait(lambda: next(
                (r for r in archive.catalog.values() if r.metadata.get("stop")), None),
                300, "the day run's stop, once both shards stopped")

            assert len(archive.catalog) == 1  # one day run for both shards
            start, stop = run.metadata["start"], run.metadata["stop"]
            assert start["shards"] == 2 and set(start["objects"]) == set(names)
            assert run.metadata["shards_open"] == []
            rows = _rows(archive, run)
            assert set(rows) == {*names, "connection-shard0", "connection-shard1"}
            for stream, seq in rows.items():  # nothing lost, nothing doubled
                assert seq == list(range(1, len(seq) + 1)), stream
                assert len(seq) == stop["num_events"][stream], stream
            frame = archive.day(names[0], start["day"])  # the stock query path reads it
            assert len(frame) == len(rows[names[0]])
        finally:
            for proc in procs:
                _stop(proc, timeout=60)
            for log in logs.values():
                log.close()


# -- the buckets that grow by the day expire -------------------------------------------------------
def test_the_days_and_runs_buckets_expire_and_old_buckets_are_given_the_expiry(deployment):
    from catalog.jetstream import KV_EXPIRY

    bus = Bus(NATS_URL, deployment)

    async def made_before(bucket: str, ttl: float | None) -> None:  # (an earlier version)
        import nats

        nc = await nats.connect(NATS_URL)
        kv = await nc.jetstream().create_key_value(bucket=bucket, history=1, ttl=ttl)
        await kv.put("kept", b"1")
        await nc.close()

    asyncio.run(made_before(bus.runs_bucket, None))  # without an expiry
    link = NatsLink(bus)
    try:
        def max_age(bucket: str) -> float:
            return link.call(link.js.stream_info(f"KV_{bucket}")).config.max_age

        runs = link.bucket(bus.runs_bucket)
        assert max_age(bus.runs_bucket) == KV_EXPIRY >= 7 * 86400  # given the expiry ...
        assert link.call(runs.get("kept")).value == b"1"  # ... its keys kept
        link.bucket(bus.days_bucket)
        link.bucket(bus.latest_bucket)
        assert max_age(bus.days_bucket) == KV_EXPIRY  # a new bucket made with it
        assert not max_age(bus.latest_bucket)  # one key per object: never expires
    finally:
        link.close()

    other = Bus(NATS_URL, deployment + "x")  # an expiry an operator set is left as it is
    asyncio.run(made_before(other.days_bucket, 90 * 86400.0))
    link = NatsLink(other)
    try:
        link.bucket(other.days_bucket)
        info = link.call(link.js.stream_info(f"KV_{other.days_bucket}"))
        assert info.config.max_age == 90 * 86400.0
    finally:
        link.call(link.js.delete_stream(f"KV_{other.days_bucket}"))
        link.close()


# -- closed day runs of a sharded SQLite archive move into Parquet ---------------------------------
def test_a_sharded_day_run_is_compacted_once_every_shard_stopped_and_reads_the_same(
        deployment, tmp_path):
    import event_model
    from test_compact import sources, sql_rows

    from catalog.tiled_internals import PARQUET, SQL_TABLE

    names = ["gauge-a", "gauge-b"]  # one on each shard
    config = parse_config(yaml.safe_dump({
        "archive": f"sqlite:///{tmp_path / 'archive.db'}", "serve": {"port": 0}, "shards": 2,
        "nats": {"url": NATS_URL, "name": deployment},
        "objects": [{"name": n, "type": "generic", "attributes": ["p"], "source": "sim"}
                    for n in names],
    }))
    run = event_model.compose_run(metadata={"day": "2001-11-06"})
    shards = []
    for i, name in enumerate(names):
        desc = run.compose_descriptor(name=name, data_keys={
            "p": {"source": "sim", "dtype": "number", "shape": []}})
        pages = [desc.compose_event_page(data={"p": [10.0 * i + j]},
                                         timestamps={"p": [1e9 + j + i / 2]}, seq_num=[j + 1],
                                         time=[1e9 + j]) for j in range(5)]
        stop = {"uid": f"stop-{i}", "run_start": run.start_doc["uid"], "time": 1e9 + 9,
                "exit_status": "success", "reason": "", "num_events": {name: 5}}
        shards.append([("start", run.start_doc), ("descriptor", desc.descriptor_doc),
                       *(("event_page", p) for p in pages), ("stop", stop)])

    host = ArchiveHost(config, api_key=API_KEY, compact_grace=0)
    host.start()
    link = NatsLink(Bus(NATS_URL, deployment))
    publishers = [DocumentPublisher(link, shard=i) for i in range(2)]
    try:
        for i, docs in enumerate(shards):  # both open the run (at their midnights) ...
            publishers[i](*docs[0])
            assert publishers[i].flush(30)
        for i, docs in enumerate(shards):  # ... shard 0 stops it, shard 1 not yet
            for name, doc in docs[1:-1] if i else docs[1:]:
                publishers[i](name, doc)
            assert publishers[i].flush(30)
        assert host.writer.join(60)
        assert host.compacting is not None and host.compacting.started
        archive = Archive.from_uri(host.url, api_key=API_KEY)
        before = {n: archive.day(n, "2001-11-06") for n in names}
        assert sources(tmp_path) == {SQL_TABLE: 2}  # the run is open: its rows stay

        publishers[1](*shards[1][-1])  # the last shard stops: the run's stop is written
        assert publishers[1].flush(30)
        _wait(lambda: sources(tmp_path) == {PARQUET: 2} and sql_rows(tmp_path) == 0, 30,
              "the run's tables in Parquet, their rows deleted")
        (stored,) = archive.catalog.values()
        assert stored.metadata["stop"]["num_events"] == {n: 5 for n in names}
        for n in names:
            assert len(before[n]) == 5
            pd.testing.assert_frame_equal(archive.day(n, "2001-11-06"), before[n], obj=n)
        assert _rows(archive, stored) == {n: [1, 2, 3, 4, 5] for n in names}

        late = DocumentPublisher(link, shard=2)  # a shard whose start comes after the stop
        publishers.append(late)
        late(*shards[0][0])
        assert late.flush(30) and host.writer.join(60)
        stored = archive.catalog[run.start_doc["uid"]]
        assert stored.metadata["stop"] is None and stored.metadata["shards_open"] == [2]
    finally:
        for publisher in publishers:
            publisher.close(10)
        link.close()
        host.close()


# -- warden run with shards: K restarts a shard that dies ------------------------------------------
def test_a_shard_that_keeps_ending_is_started_again_later_and_later():
    from warden.shards import RestartPolicy

    policy = RestartPolicy(first=1.0, most=60.0, healthy=60.0)
    delays, previous = [], None
    for _ in range(8):  # ends at once, again and again: no spinning
        previous = policy.delay(0.5, previous)
        delays.append(previous)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.delay(3600, previous) == 1  # it ran a while: the next end is a new story


def test_local_shards_start_a_killed_shard_again_and_lose_or_double_nothing(
        deployment, tmp_path, monkeypatch):
    from warden.shards import LocalShards, RestartPolicy

    monkeypatch.setenv("WARDEN_API_KEY", API_KEY)
    path = tmp_path / "warden.yaml"
    path.write_text(yaml.safe_dump({  # one shard: each start of a shard costs seconds of CPU
        "archive": f"sqlite:///{tmp_path / 'archive.db'}", "timezone": "America/New_York",
        "serve": {"port": 0}, "shards": 1, "nats": {"url": NATS_URL, "name": deployment},
        "objects": [{**o, "source": "sim"} for o in OBJECTS[:3]],
    }))
    names = [o["name"] for o in OBJECTS[:3]]
    local = LocalShards(parse_config(path.read_text()), path,
                        restarts=RestartPolicy(first=0.1), compact_grace=None)
    archive = Archive.from_uri(local.start(), api_key=API_KEY)
    try:
        def rows_in(runs: int) -> bool:
            found = list(archive.catalog.values())
            return len(found) == runs and all(
                n in r and len(r[n].base["internal"].read()) >= 2 for r in found for n in names)

        _wait(lambda: rows_in(1), 120, "rows of every object")
        first = local.children[0]
        first.send_signal(signal.SIGKILL)
        _wait(lambda: rows_in(2), 120, "rows of every object in the next generation")
        assert local.restarts == 1 and local.children[0] is not first
        local.stop_shards()

        runs = sorted(archive.catalog.values(), key=lambda r: r.metadata["start"]["time"])
        assert len({r.metadata["start"]["day"] for r in runs}) == 1  # two runs of one day
        killed, again = runs
        assert not killed.metadata.get("stop")  # (no shard is left to stop it)
        assert again.metadata["stop"] and again.metadata["shards_open"] == []
        for run in runs:
            for stream, seq in _rows(archive, run).items():  # nothing lost, nothing doubled
                assert seq == list(range(1, len(seq) + 1)), stream
        for stream, seq in _rows(archive, again).items():
            assert len(seq) == again.metadata["stop"]["num_events"][stream], stream
    finally:
        local.close()
