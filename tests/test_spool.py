"""The spool on its own: segments, their context, torn lines, one owner."""

from __future__ import annotations

import numpy as np
import pytest

from catalog.spool import Position, Spool, SpoolBusy, SpoolReader


def start(uid: str) -> dict:
    return {"uid": uid, "time": 0.0}


def descriptor(uid: str, run: str) -> dict:
    return {"uid": uid, "run_start": run, "name": "s", "data_keys": {}}


def page(n: int) -> dict:
    return {"descriptor": "d1", "seq_num": [n], "data": {"x": np.array([n, n])},
            "timestamps": {"x": [float(n)]}, "time": [1.0], "uid": [f"e{n}"]}


def read_all(spool: Spool) -> list:
    pos, docs = spool.first(), []
    while True:
        got, after = spool.read(pos, max_bytes=300)
        docs += got
        if after == pos:
            return docs
        pos = after


def test_documents_come_back_in_order_and_numpy_as_lists(tmp_path):
    spool = Spool(tmp_path)
    spool.append("start", start("r1"))
    spool.append("descriptor", descriptor("d1", "r1"))
    for n in range(1, 4):
        spool.append("event_page", page(n))
    docs = read_all(spool)
    assert [name for name, _ in docs] == ["start", "descriptor", *["event_page"] * 3]
    assert docs[4][1]["data"]["x"] == [3, 3] and docs[4][1]["seq_num"] == [3]
    spool.close()


def test_readings_come_back_as_they_were_nan_infinities_none_and_float32_included(tmp_path):
    spool = Spool(tmp_path)
    data = {"lost": [float("nan"), float("inf"), -float("inf"), 1.5], "gone": [None, None, 1, 2],
            "gain": np.array([0.1, 2.5, 3, 4], np.float32), "fill": np.int64(34001),
            "species": ["Au", "null", "μ", ""], "ok": np.bool_(True)}
    spool.append("event_page", {"descriptor": "d1", "seq_num": [1, 2, 3, 4], "data": data})
    spool.append("event_page", {"descriptor": "d1", "seq_num": [5], "data": {"x": [2.0]}})
    (_, first), (_, second) = read_all(spool)
    got = first["data"]
    assert np.isnan(got["lost"][0]) and got["lost"][1:] == [float("inf"), -float("inf"), 1.5]
    assert got["gone"] == [None, None, 1, 2]
    assert got["gain"] == [float(np.float32(0.1)), 2.5, 3.0, 4.0]  # float32's exact values
    assert got["fill"] == 34001 and got["ok"] is True
    assert got["species"] == ["Au", "null", "μ", ""]
    assert second["data"] == {"x": [2.0]}


def test_each_segment_begins_with_the_open_runs_so_it_replays_alone(tmp_path):
    spool = Spool(tmp_path, segment_bytes=400)
    spool.append("start", start("r1"))
    spool.append("descriptor", descriptor("d1", "r1"))
    for n in range(1, 20):
        spool.append("event_page", page(n))
    segments = spool.segments()
    assert len(segments) > 3
    for n in segments[1:]:
        first, _ = spool.read(Position(n, 0), max_bytes=10_000)
        assert [name for name, _ in first[:2]] == ["start", "descriptor"]
    pages = [d["seq_num"][0] for name, d in read_all(spool) if name == "event_page"]
    assert pages == list(range(1, 20))  # each page once, in order, across the segments
    spool.append("stop", {"run_start": "r1", "uid": "x"})
    spool.append("start", start("r2"))
    spool.append("event_page", page(99))
    spool.append("event_page", page(100))  # a new segment now holds only r2's start
    spool.append("event_page", page(101))
    last, _ = spool.read(Position(spool.segments()[-1], 0), max_bytes=10_000)
    assert not any(d.get("uid") == "r1" for name, d in last if name == "start")
    spool.close()


def test_a_reader_of_another_process_gets_every_document_once_while_segments_roll(tmp_path):
    """The writer process reads the files alone (no appender state): the live segment up to
    its last whole line, a finished one to its end, then the next."""
    spool = Spool(tmp_path, segment_bytes=500)
    reader = SpoolReader(tmp_path)
    spool.append("start", start("r1"))
    spool.append("descriptor", descriptor("d1", "r1"))
    pos, seen = reader.first(), []
    for n in range(1, 40):
        spool.append("event_page", page(n))
        if n % 3 == 0:  # the reader keeps up now and then, mid-segment or after a roll
            assert reader.wait(pos, timeout=1)
            while True:
                docs, after = reader.read(pos, max_bytes=200)
                seen += [d["seq_num"][0] for name, d in docs if name == "event_page"]
                if after == pos:
                    break
                pos = after
            reader.release(pos)
    live = tmp_path / f"{spool.segments()[-1]:012d}.jsonl"
    with open(live, "ab") as f:
        f.write(b'["event_page",{"descr')  # the appender mid-write: not read yet
    assert seen == list(range(1, 40))
    assert reader.read(pos) == ([], pos)
    assert spool.segments()[0] == pos.segment  # the finished segments are deleted
    spool.close()


def test_release_deletes_only_segments_before_the_position(tmp_path):
    spool = Spool(tmp_path, segment_bytes=300)
    for n in range(1, 10):
        spool.append("event_page", page(n))
    segments = spool.segments()
    spool.release(Position(segments[2], 0))
    assert spool.segments() == segments[2:]
    spool.close()


def test_a_torn_last_line_of_a_crashed_process_is_dropped_alone(tmp_path):
    spool = Spool(tmp_path)
    spool.append("event_page", page(1))
    spool.append("event_page", page(2))
    spool.close()
    path = tmp_path / f"{spool.segments()[0]:012d}.jsonl"
    path.write_bytes(path.read_bytes() + b'["event_page",{"descr')  # killed mid-write
    again = Spool(tmp_path)  # the next process
    assert again.pending_bytes(again.first()) > 0
    docs = read_all(again)
    assert [d["seq_num"] for _, d in docs] == [[1], [2]]
    again.close()


def test_a_spool_has_one_owner(tmp_path):
    spool = Spool(tmp_path)
    with pytest.raises(SpoolBusy, match="in use by another warden"):
        Spool(tmp_path)
    spool.close()
    Spool(tmp_path).close()  # free again
