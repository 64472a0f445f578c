"""The daily ASCII files: the line format, the live writer on a real RunEngine, the export."""

import datetime as dt
import math
import signal
import subprocess
import sys
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from conftest import run_service, sim_config, wait_for

from catalog.ascii import (
    AsciiDayWriter,
    day_file_name,
    export_day,
    format_line,
    format_value,
    parse_line,
    parse_value,
    read_day_file,
)
from warden.cli import main

ZONE = ZoneInfo("America/New_York")
SAMPLE = "yi2-wcm3,Tue Nov  6 23:52:07 2001,wcmBeam,16.4228"
NUMBER = {"dtype": "number", "shape": [], "dtype_numpy": "<f8"}
STRING = {"dtype": "string", "shape": []}


# -- the line format -----------------------------------------------------------------------------
def test_sample_line_round_trips_through_parser_and_formatter():
    line = parse_line(SAMPLE, ZONE)
    assert line.object == "yi2-wcm3" and line.attribute == "wcmBeam" and line.value == "16.4228"
    assert line.time == dt.datetime(2001, 11, 6, 23, 52, 7, tzinfo=ZONE)
    assert line.time.utcoffset() == dt.timedelta(hours=-5)
    assert line.parsed() == 16.4228
    for fraction in (0.0, 0.999):  # ctime truncates to the second
        again = format_line("yi2-wcm3", line.timestamp + fraction, "wcmBeam", 16.4228, ZONE, NUMBER)
        assert again == SAMPLE + "\n"
    # two-digit days are not padded; summer times are EDT
    july = dt.datetime(2001, 7, 14, 9, 5, 3, tzinfo=ZONE).timestamp()
    assert format_line("o", july, "a", 1, ZONE) == "o,Sat Jul 14 09:05:03 2001,a,1\n"
    assert parse_line("o,Sat Jul 14 09:05:03 2001,a,1\n", ZONE).timestamp == july


def test_malformed_lines_are_clear_errors():
    with pytest.raises(ValueError, match="4 fields"):
        parse_line("yi2-wcm3,Tue Nov  6 23:52:07 2001,wcmBeam", ZONE)
    with pytest.raises(ValueError, match="not a Mon"):
        parse_line("yi2-wcm3,Mon Nov  6 23:52:07 2001,wcmBeam,1", ZONE)
    with pytest.raises(ValueError, match="not a ctime"):
        parse_line("yi2-wcm3,2001-11-06 23:52:07,wcmBeam,1", ZONE)


def test_day_file_names():
    assert day_file_name("rhicdata", "2001-11-06") == "rhicdata.Nov062001.dat"
    assert day_file_name("rhicdata", dt.date(2002, 1, 31)) == "rhicdata.Jan312002.dat"


@pytest.mark.parametrize("text", ["Au, Au", 'the "store"', "two\nlines", "cr\rlf\r\n", '"', ""])
def test_strings_with_commas_quotes_and_newlines_round_trip(tmp_path, text):
    line = format_line("ring-yellow", 1e9, "species", text, ZONE, STRING)
    assert line.count("\n") == 1 + text.count("\n")
    assert parse_line(line, ZONE).value == text
    path = tmp_path / "f.dat"
    path.write_text(line + line, newline="")
    assert [r.value for r in read_day_file(path, ZONE)] == [text, text]


def test_numbers_and_arrays_round_trip():
    floats = [16.4228, 0.1, 1e-300, -0.0, 1.5e300, 2.0**-1074, math.pi]
    for x in floats:
        assert parse_value(format_value(x, NUMBER)) == x
    assert math.isnan(parse_value(format_value(float("nan"), NUMBER)))
    assert format_value(3, NUMBER) == "3.0"  # the data key decides: a number is a float
    assert format_value(np.int64(34924), {"dtype": "integer", "dtype_numpy": "<i8"}) == "34924"
    assert format_value(True, {"dtype": "boolean"}) == "1"
    bunches = np.random.default_rng(1).random(120)
    key = {"dtype": "array", "shape": [120], "dtype_numpy": "<f8"}
    text = format_value(bunches.tolist(), key)
    assert text.count(" ") == 119 and "," not in text
    np.testing.assert_array_equal(parse_value(text), bunches)
    counts = [0, 17, 123456789012, -3]
    assert parse_value(format_value(counts, {"dtype": "array", "dtype_numpy": "<i8"})) == counts
    f32 = np.array([16.4228, 0.1], dtype=np.float32)
    assert format_value(f32.tolist(), {"dtype": "array", "dtype_numpy": "<f4"}) == "16.4228 0.1"
    line = parse_line(format_line("w", 1e9, "bunchIntensity", bunches, ZONE, key), ZONE)
    np.testing.assert_array_equal(line.parsed(), bunches)


# -- the live writer -----------------------------------------------------------------------------
def documents(day: str, pages: int, rows: int = 2, t0: float = 1005108000.0):
    """A run of ``day`` with an object stream and a connection stream, as plain documents."""
    from event_model import compose_run

    run = compose_run(metadata={"day": day})
    yield "start", run.start_doc
    conn = run.compose_descriptor(
        name="connection",
        data_keys={"object": {**STRING, "source": "w"}, "connected": {"dtype": "boolean",
                                                                       "shape": [], "source": "w"}},
    )
    yield "descriptor", conn.descriptor_doc
    yield "event_page", conn.compose_event_page(
        data={"object": ["w"], "connected": [True]}, timestamps={"object": [t0], "connected": [t0]}
    )
    keys = {
        "wcmBeam": {**NUMBER, "source": "w"},
        "bunchIntensity": {"dtype": "array", "shape": [120], "dtype_numpy": "<f8", "source": "w"},
        "note": {**STRING, "source": "w"},
    }
    obj = run.compose_descriptor(name="yi2-wcm3", data_keys=keys)
    yield "descriptor", obj.descriptor_doc
    for p in range(pages):
        ts = [t0 + p * rows + i for i in range(rows)]
        data = {
            "wcmBeam": [16.4228 + p + i for i in range(rows)],
            "bunchIntensity": [[0.1 * (p + i)] * 120 for i in range(rows)],
            "note": ['a, "quoted"\nnote'] * rows,
        }
        yield "event_page", obj.compose_event_page(data=data, timestamps=dict.fromkeys(data, ts))
    yield "stop", run.compose_stop()


def test_writer_skips_connection_and_appends_runs_of_the_same_day(tmp_path):
    writer = AsciiDayWriter(tmp_path, "rhicdata", ZONE)
    for name, doc in documents("2001-11-06", pages=3):
        writer(name, doc)
    for name, doc in documents("2001-11-06", pages=2, t0=1005140000.0):  # a restart, same day
        writer(name, doc)
    assert writer.errors == 0 and writer.lines == (3 + 2) * 2 * 3
    assert [p.name for p in tmp_path.iterdir()] == ["rhicdata.Nov062001.dat"]
    lines = read_day_file(tmp_path / "rhicdata.Nov062001.dat", ZONE)
    assert len(lines) == writer.lines
    assert {x.object for x in lines} == {"yi2-wcm3"}
    assert [x.attribute for x in lines[:3]] == ["wcmBeam", "bunchIntensity", "note"]
    assert lines[0].time == dt.datetime(2001, 11, 6, 23, 40, tzinfo=ZONE)  # the upstream time
    assert lines[-3].timestamp == 1005140000.0 + 3
    assert lines[2].value == 'a, "quoted"\nnote'


def test_a_lone_event_writes_the_lines_of_a_page_of_one_row(tmp_path):
    from event_model import unpack_event_page

    pages = list(documents("2001-11-06", pages=2))
    as_pages, as_events = AsciiDayWriter(tmp_path / "p", "rhicdata", ZONE), AsciiDayWriter(
        tmp_path / "e", "rhicdata", ZONE)
    for name, doc in pages:
        as_pages(name, doc)
        for event in unpack_event_page(doc) if name == "event_page" else [doc]:
            as_events("event" if name == "event_page" else name, event)
    assert as_events.errors == as_pages.errors == 0 and as_events.lines == as_pages.lines > 0
    file = "rhicdata.Nov062001.dat"
    assert (tmp_path / "e" / file).read_bytes() == (tmp_path / "p" / file).read_bytes()


KILLED_WRITER = """
import sys
from zoneinfo import ZoneInfo
from event_model import compose_run
from catalog.ascii import AsciiDayWriter
writer = AsciiDayWriter(sys.argv[1], "rhicdata", ZoneInfo("America/New_York"))
run = compose_run(metadata={"day": "2001-11-06"})
writer("start", run.start_doc)
key = {"dtype": "array", "shape": [120], "dtype_numpy": "<f8", "source": "w"}
stream = run.compose_descriptor(name="yi2-wcm3", data_keys={"bunchIntensity": key})
writer("descriptor", stream.descriptor_doc)
t = 1005108000.0
while True:
    rows = [[t / 7e9 + i for i in range(120)]] * 8
    writer("event_page", stream.compose_event_page(data={"bunchIntensity": rows},
                                                   timestamps={"bunchIntensity": [t] * 8}))
    t += 1
"""


def test_a_killed_writer_leaves_only_whole_lines(tmp_path):
    """SIGKILL a writer in full flow; after the restart every line is whole and parses."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)])
    path = tmp_path / "rhicdata.Nov062001.dat"
    try:
        wait_for(lambda: path.exists() and path.stat().st_size > 200_000, timeout=30, interval=0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = path.stat().st_size
    writer = AsciiDayWriter(tmp_path, "rhicdata", ZONE)  # the restart, same day
    for name, doc in documents("2001-11-06", pages=1, t0=1005140000.0):
        writer(name, doc)
    data = path.read_bytes()
    assert data.endswith(b"\n") and len(data) > before - 4096
    lines = read_day_file(path, ZONE)
    assert len(lines) > 100 and all(x.object == "yi2-wcm3" for x in lines)
    assert all(len(x.parsed()) == 120 for x in lines if x.attribute == "bunchIntensity")
    assert [x.attribute for x in lines[-6:]] == ["wcmBeam", "bunchIntensity", "note"] * 2


def test_a_torn_tail_is_cut_when_the_file_is_opened_again(tmp_path):
    path = tmp_path / "rhicdata.Nov062001.dat"
    whole = format_line("yi2-wcm3", 1005108000.0, "wcmBeam", 16.4228, ZONE, NUMBER)
    path.write_text(whole + whole[:20])  # as if a write was cut by a crash
    writer = AsciiDayWriter(tmp_path, "rhicdata", ZONE)
    for name, doc in documents("2001-11-06", pages=1):
        writer(name, doc)
    lines = read_day_file(path, ZONE)
    assert len(lines) == 1 + 2 * 3 and lines[0].value == "16.4228"


# -- the real service: a RunEngine across midnight, the archive, the export ----------------------
API_KEY = "asciikey1"

def ascii_config(tmp_path):
    return sim_config(tmp_path, ascii={"directory": str(tmp_path / "ascii"), "prefix": "rhicdata"})


def run_with_ascii(config, start: dt.datetime, seconds: float):
    return run_service(config, start, seconds, api_key=API_KEY)


def test_live_files_across_midnight_and_a_restart_match_the_archive_and_the_export(
    tmp_path, monkeypatch
):
    config, directory = ascii_config(tmp_path), tmp_path / "ascii"
    start = dt.datetime(2001, 11, 6, 23, 59, 58, tzinfo=ZONE)  # 2 s to midnight, 1.5 s after
    with run_with_ascii(config, start, 3.5):
        pass
    restart = dt.datetime(2001, 11, 7, 8, 30, tzinfo=ZONE)
    with run_with_ascii(config, restart, 2) as archive:
        files = sorted(p.name for p in directory.iterdir())
        assert files == ["rhicdata.Nov062001.dat", "rhicdata.Nov072001.dat"]
        midnight = dt.datetime(2001, 11, 7, tzinfo=ZONE)
        for day in ("2001-11-06", "2001-11-07"):
            path = directory / day_file_name("rhicdata", day)
            lines = read_day_file(path, ZONE)
            check_lines_match_archive(archive, day, lines)
            if day == "2001-11-06":
                assert all(x.time < midnight for x in lines)
            else:
                hours = {x.time.hour for x in lines if x.object == "yi2-wcm3"}
                assert hours == {0, 8}  # both runs of the day, in one file
            assert export_day(archive, day).encode() == path.read_bytes()
            own = "".join(x for x in path.read_bytes().decode().splitlines(keepends=True)
                          if x.startswith("ring-yellow,"))
            assert export_day(archive, day, object="ring-yellow") == own
        # the command line gives the same bytes
        url = archive.root.uri.split("/api/v1")[0]
        out = tmp_path / "exported.dat"
        monkeypatch.setenv("WARDEN_API_KEY", API_KEY)
        assert main(["export-ascii", "2001-11-07", "--server", url, "-o", str(out)]) == 0
        assert out.read_bytes() == (directory / "rhicdata.Nov072001.dat").read_bytes()
        assert main(["export-ascii", "2001-02-30", "--server", url, "-o", str(out)]) == 2


def check_lines_match_archive(archive, day: str, lines) -> None:
    """Each object's lines are its archived rows, attribute by attribute, value by value."""
    for obj, attrs in (("yi2-wcm3", ["wcmBeam", "bunchIntensity"]),
                       ("ring-yellow", ["beamEnergy", "fillNumber", "species", "ringState"])):
        mine = [x for x in lines if x.object == obj]
        table, raw = archive.day(obj, day), archive.raw_day(obj, day)
        assert len(table) >= 1 and len(mine) == len(table) * len(attrs) == len(raw) * len(attrs)
        for i, row in enumerate(table.itertuples(index=False)):
            got = mine[i * len(attrs) : (i + 1) * len(attrs)]
            assert [x.attribute for x in got] == attrs
            for x in got:
                expected = getattr(row, x.attribute)
                stamp = raw[f"ts_{x.attribute}"].iloc[i]
                assert x.timestamp == math.floor(stamp)
                if x.attribute == "bunchIntensity":
                    np.testing.assert_array_equal(x.parsed(), expected)
                elif isinstance(expected, str):
                    assert x.value == expected
                else:
                    value = x.parsed()
                    assert value == expected
                    assert isinstance(value, float) == isinstance(expected, float)
