"""Bad input gets a clear error and leaves nothing half-written: hostile config files, unknown
objects and attributes, impossible dates and ranges, odd object names, in Python, on the
command line and over HTTP; the config loader and the query parsing fuzzed with hypothesis.

(``test_config.py`` has the everyday config mistakes; this file has the hostile ones.)
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote
from zoneinfo import ZoneInfo

import httpx
import pandas as pd
import pytest
import yaml
from conftest import API_KEY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog.query import (
    MAX_RANGE_DAYS,
    Archive,
    QueryError,
    UnknownObjectError,
    parse_day,
    parse_time,
)
from warden.cli import main
from warden.config import MAX_CONFIG_BYTES, ConfigError, WardenConfig, load_config, parse_config

ZONE = ZoneInfo("America/New_York")
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
GOOD = "{name: yi2-wcm3, type: WcmControl, mode: monitor}"
BIG = "1" + "0" * 400  # 10**400


def with_object(text: str) -> str:
    return f"{text}\nobjects: [{GOOD}]\n"


def billion_laughs() -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\nobjects: *a9\n"


# -- hostile config files: exit 2 naming the field, ConfigError from Python ---------------------
HOSTILE = {
    # wrong types
    "period as text": ("objects: [{name: a, type: ringSpec, period: fast}]",
                       "objects[0] ('a').period: ", "valid number"),
    "flush_interval as list": (with_object("flush_interval: [1]"), "flush_interval: ",
                               "valid number"),
    "port as text": (with_object("serve: {port: http}"), "serve.port: ", "valid integer"),
    "serve as number": (with_object("serve: 8000"), "serve: ", "valid dictionary"),
    "name as number": ("objects: [{name: 12, type: WcmControl}]", "objects[0].name: ",
                       "valid string"),
    "objects as mapping": ("objects: {yi2-wcm3: WcmControl}", "objects: ", "valid list"),
    "objects as set": ("objects: !!set {a, b}", "objects[0]: ", "valid dictionary"),
    "archive as date": (with_object("archive: 2001-11-06"), "archive: ", "valid string"),
    "plugins as text": (with_object("plugins: lifetime"), "plugins: ", "valid list"),
    "attributes as number": ("objects: [{name: a, type: generic, attributes: 7}]",
                             "objects[0] ('a').attributes", "valid list"),
    # huge numbers
    "period 1e308": ("objects: [{name: a, type: ringSpec, period: 1.0e+308}]",
                     "objects[0] ('a').period: ", "must be <= 86400"),
    "period 10**400": (f"objects: [{{name: a, type: ringSpec, period: {BIG}}}]",
                       "objects[0] ('a').period: ", "valid number"),
    "period infinite": ("objects: [{name: a, type: ringSpec, period: .inf}]",
                        "objects[0] ('a').period: ", "must be <= 86400"),
    "period NaN": ("objects: [{name: a, type: ringSpec, period: .nan}]",
                   "objects[0] ('a').period: ", "must be <= 86400"),
    "offset 10**400": (f"objects: [{{name: a, type: ringSpec, offset: {BIG}}}]",
                       "objects[0] ('a').offset: ", "valid number"),
    "port 10**400": (with_object(f"serve: {{port: {BIG}}}"), "serve.port: ", "must be <= 65535"),
    "threads 10**400": (with_object(f"plugin_threads: {BIG}"), "plugin_threads: ",
                        "must be <= 64"),
    "flush -1e308": (with_object("flush_interval: -1.0e+308"), "flush_interval: ",
                     "must be > 0"),
    "exchange period 10**400": (with_object(f"exchange: [{{source: a, target: b, period: {BIG}}}]"),
                                "exchange[0].period: ", "valid number"),
    # unknown keys, at every level
    "unknown top-level key": (with_object("colour: red"), "colour: ", "unknown field"),
    "unknown serve key": (with_object("serve: {hots: 0.0.0.0}"), "serve.hots: ", "unknown field"),
    "unknown exchange key": (with_object("exchange: [{source: a, target: b, direction: up}]"),
                             "exchange[0].direction: ", "unknown field"),
    "unknown plugin key": (with_object("plugins: [{name: lifetime, every: 3}]"),
                           "plugins[0].every: ", "unknown field"),
    # YAML bombs and tags
    "billion laughs": (billion_laughs(), "line 2: ", "YAML aliases are not allowed"),
    "merge key": ("base: &b {type: WcmControl}\nobjects: [{<<: *b, name: a}]",
                  "line 2: ", "YAML aliases are not allowed"),
    "python tag": ("objects: !!python/object/apply:os.system [touch /tmp/warden-pwned]",
                   "not valid YAML: ", "could not determine a constructor"),
    # deep nesting
    "deep flow lists": ("objects: " + "[" * 5000 + "]" * 5000, "line 1: ",
                        "nested too deeply (more than 32 levels)"),
    "deep flow mappings": ("objects: " + "{a: " * 3000 + "1" + "}" * 3000, "line 1: ",
                           "nested too deeply"),
    "deep block lists": ("objects:\n" + "".join(" " * i + "-\n" for i in range(1500)),
                         "line 33: ", "nested too deeply"),
    # garbage and emptiness
    "empty": ("", "", "must be a mapping"),
    "only a comment": ("# nothing here\n", "", "must be a mapping"),
    "null": ("~\n", "", "must be a mapping"),
    "control characters": ("objects: \x00\x01\x02", "not valid YAML: ",
                           "special characters are not allowed"),
    # odd object names, in each place names go
    "name with slash": ("objects: [{name: a/b, type: WcmControl}]",
                        "objects[0] ('a/b').name: ", "must be 1-128 letters"),
    "name with bell": ('objects: [{name: "a\\ab", type: WcmControl}]',
                       "objects[0] ('a\\x07b').name: ", "must be 1-128 letters"),
    "name with newline": ('objects: [{name: "a\\nb", type: WcmControl}]',
                          "objects[0] ('a\\nb').name: ", "must be 1-128 letters"),
    "name with escape": ('objects: [{name: "\\e[31mred", type: WcmControl}]',
                         "objects[0] ('\\x1b[31mred').name: ", "must be 1-128 letters"),
    "name of dots": ("objects: [{name: .., type: WcmControl}]", "objects[0] ('..').name: ",
                     "must be 1-128 letters"),
    "name in a folder": ("objects: [{name: yi2-wcm3/.., type: WcmControl}]",
                         "objects[0] ('yi2-wcm3/..').name: ", "must be 1-128 letters"),
    "name too long": (f"objects: [{{name: {'a' * 129}, type: WcmControl}}]", "objects[0] (",
                      "should have at most 128 characters"),
    "plugin name with slash": (with_object("plugins: [{name: ../lifetime}]"),
                               "plugins[0].name: ", "must be 1-128 letters"),
    "plugin named twice": (with_object("plugins: [{name: lifetime}, {name: lifetime}]"),
                           "plugins[1].name: ", "duplicate plugin name 'lifetime' (first at "
                           "plugins[0])"),
    "attribute with slash": ("objects: [{name: g, type: generic, attributes: [ok, a/b]}]",
                             "objects[0] ('g').attributes: ", "attribute 'a/b' is not a valid"),
    "ascii prefix with dots": (with_object("ascii: {directory: /tmp, prefix: ../../x}"),
                               "ascii.prefix: ", "should match pattern"),
    # time zones that are files or folders, not zones
    "timezone a folder": (with_object("timezone: America"), "timezone: ", "unknown timezone"),
    "timezone too long": (with_object(f"timezone: {'a' * 5000}"), "timezone: ",
                          "unknown timezone"),
    "timezone a path": (with_object("timezone: ../../../../etc/passwd"), "timezone: ",
                        "unknown timezone"),
}


@pytest.mark.parametrize("text, field, message", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_config_is_a_clear_error(tmp_path, capsys, text, field, message):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert time.monotonic() - t0 < 5  # refused, not expanded or ground through
    assert field in str(err.value) and message in str(err.value), str(err.value)
    assert main(["check-config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert field in captured.err and message in captured.err
    assert "Traceback" not in captured.err
    assert not os.path.exists("/tmp/warden-pwned")


def test_binary_garbage_and_oversized_files(tmp_path, capsys):
    import random

    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(random.Random(6).randbytes(4096))
    huge = tmp_path / "huge.yaml"
    huge.write_text("objects: [" + ", ".join([GOOD] * (MAX_CONFIG_BYTES // len(GOOD) + 1)) + "]")
    for path, message in ((garbage, "cannot read: 'utf-8' codec can't decode"),
                          (huge, f"larger than {MAX_CONFIG_BYTES} bytes")):
        with pytest.raises(ConfigError, match=message):
            load_config(path)
        assert main(["check-config", str(path)]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(ConfigError, match=f"larger than {MAX_CONFIG_BYTES}"):
        parse_config(huge.read_text())
    # giant lists inside the size limit: too many objects, or thousands of bad ones, are
    # one short message
    with pytest.raises(ConfigError) as err:
        parse_config("objects: [" + ",".join(["0"] * 100_001) + "]")
    assert str(err.value) == "objects: List should have at most 100000 items after validation, " \
                             "not 100001"
    with pytest.raises(ConfigError) as err:
        parse_config("objects: [" + ",".join(["{name: a/b, type: x}"] * 1000) + "]")
    lines = str(err.value).splitlines()
    assert len(lines) == 21 and lines[-1] == "... and 1980 more errors", lines
    assert lines[0] == "objects[0] ('a/b').name: must be 1-128 letters, digits or '_.+:-', " \
                       "start with a letter or digit and not contain '..'"


def test_console_script_never_shows_a_traceback(tmp_path):
    """The installed ``warden`` exits 2 with one line naming the field, whatever the file."""
    cases = {
        "deep.yaml": ("objects: " + "[" * 5000 + "]" * 5000, "nested too deeply"),
        "zone.yaml": (with_object("timezone: America"), "timezone: unknown timezone 'America'"),
        "bomb.yaml": (billion_laughs(), "YAML aliases are not allowed"),
        "garbage.yaml": (b"\xff\xfe\x00garbage\x80", "cannot read"),
    }

    def check(name: str):
        text, _ = cases[name]
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return subprocess.run([sys.executable, "-m", "warden", "check-config", str(path)],
                              capture_output=True, text=True, timeout=60)

    with ThreadPoolExecutor(4) as pool:
        for name, out in zip(cases, pool.map(check, cases), strict=True):
            assert out.returncode == 2, (name, out.stderr)
            assert "Traceback" not in out.stderr, (name, out.stderr)
            assert cases[name][1] in out.stderr, (name, out.stderr)


def test_run_with_bad_input_writes_nothing(tmp_path, capsys, monkeypatch):
    """``warden run`` refuses a bad config, an unknown plugin or a bad key before it opens or
    creates the archive."""
    archive = tmp_path / "archive" / "archive.db"
    good = {"archive": f"sqlite:///{archive}", "timezone": ZONE.key,
            "objects": [{"name": "yi2-wcm3", "type": "WcmControl", "source": "sim"}]}
    cases = [
        ({**good, "flush_interval": 1e308}, API_KEY, "flush_interval: must be <= 10"),
        ({**good, "plugins": [{"name": "nosuch"}]}, API_KEY,
         "plugins[0].name: unknown plugin 'nosuch'"),
        (good, "has spaces; and=signs", "WARDEN_API_KEY: must be ASCII letters and digits"),
    ]
    for config, key, message in cases:
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(config))
        monkeypatch.setenv("WARDEN_API_KEY", key)
        assert main(["run", str(path), "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert not archive.parent.exists()  # no archive, no log, no spool


@pytest.mark.parametrize("argv, argument", [
    (["day", "yi2-wcm3", "2001-11-06", "--format", "xml"], "--format"),
    (["day", "yi2-wcm3"], "date"),
    (["latest"], "object"),
    (["sim-ioc", "--update-period", "-1"], "--update-period: must be > 0"),
    (["sim-ioc", "--update-period", "1e400x"], "--update-period: '1e400x' is not a number"),
    (["run", "x.yaml", "--port", "eighty"], "--port: invalid int value"),
    (["plugins", "restart", "lifetime"], "action: invalid choice"),
])
def test_bad_arguments_exit_2_naming_the_argument(capsys, argv, argument):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert argument in err and "Traceback" not in err


# -- queries: Python, CLI, HTTP, against the running `warden run` -------------------------------
@pytest.fixture(scope="module")
def archive(warden_server):
    return Archive.from_uri(warden_server["url"], api_key=API_KEY)


def today() -> str:
    return dt.datetime.now(ZONE).date().isoformat()


ODD_NAMES = ["nope", "a/b", "../archive", "..", ".", "/", "yi2-wcm3/..", "yi2-wcm3/wcmBeam",
             "yi2-wcm3/../ring-blue", "%2E%2E", "a\x00b", "a\nb", "\x1b[31mred", "yi2-wcm3\n",
             " yi2-wcm3", "", "latest", "archive", "connection", "exchange"]


@pytest.mark.parametrize("name", ODD_NAMES, ids=repr)
def test_unknown_and_odd_object_names_in_python(archive, name):
    day = today()
    for ask in (lambda: archive.latest(name), lambda: archive.day(name, day),
                lambda: archive.range(name, day, f"{day}T23:59"),
                lambda: archive.connections(name, day)):
        with pytest.raises(UnknownObjectError) as err:
            ask()
        assert str(err.value) == f"unknown object {name!r}"
        assert isinstance(err.value, QueryError) and isinstance(err.value, LookupError)


@pytest.mark.parametrize("name", [None, 5, ["yi2-wcm3"], b"yi2-wcm3"], ids=repr)
def test_object_names_that_are_not_text(archive, name):
    with pytest.raises(UnknownObjectError, match="unknown object"):
        archive.latest(name)
    with pytest.raises(UnknownObjectError, match="unknown object"):
        archive.day(name, today())


BAD_DAYS = {
    "2001-02-30": "impossible date '2001-02-30'",
    "2001-13-01": "impossible date '2001-13-01'",
    "2001-00-10": "impossible date '2001-00-10'",
    "0000-01-01": "impossible date '0000-01-01'",
    "yesterday": "malformed date 'yesterday'",
    "": "malformed date ''",
    "6 Nov 2001": "malformed date '6 Nov 2001'",
    "2001-11-06\n": "malformed date '2001-11-06\\n'",
    "2001-11-6": "malformed date '2001-11-6'",
    "\u0662\u0660\u0660\u0661-\u0661\u0661-\u0660\u0666": "malformed date",  # Arabic digits
    "2001-11-06T00:00": "malformed date '2001-11-06T00:00'",
}


def test_malformed_and_impossible_dates(archive, capsys, monkeypatch, warden_server):
    monkeypatch.setenv("WARDEN_API_KEY", API_KEY)
    for day, message in BAD_DAYS.items():
        with pytest.raises(QueryError) as err:
            archive.day("yi2-wcm3", day)
        assert message in str(err.value)
        with pytest.raises(QueryError, match="date"):
            archive.connections("yi2-wcm3", day)
        if day in ("2001-02-30", "2001-13-01", "yesterday", "6 Nov 2001"):
            assert main(["day", "yi2-wcm3", day, "--server", warden_server["url"]]) == 2
            err_text = capsys.readouterr().err
            assert message in err_text and "Traceback" not in err_text
    for day in (None, 20011106, 2001.1106):
        with pytest.raises(QueryError, match="malformed date"):
            archive.day("yi2-wcm3", day)


def test_ranges_backwards_empty_and_out_of_range(archive):
    with pytest.raises(QueryError, match="range end '2001-11-06' is not after its start"):
        archive.range("yi2-wcm3", "2001-11-07", "2001-11-06")
    with pytest.raises(QueryError, match="not after its start"):
        archive.range("yi2-wcm3", "2001-11-06T12:00", "2001-11-06T12:00")
    with pytest.raises(QueryError, match="malformed time 'yesterday'"):
        archive.range("yi2-wcm3", "yesterday", "2001-11-06")
    with pytest.raises(QueryError, match="impossible date '2001-02-30'"):
        archive.range("yi2-wcm3", "2001-02-30", "2001-03-02")
    with pytest.raises(QueryError, match="malformed time '2001-11-06T25:00'"):
        archive.range("yi2-wcm3", "2001-11-06", "2001-11-06T25:00")
    for start, end in (("9999-12-31", "9999-12-31T23:59"), ("0001-01-01T00:00+14:00",
                                                            "0001-01-02"),
                       (0, 1e20), (float("nan"), 5), (0, float("inf")), (10**400, 10**401)):
        with pytest.raises(QueryError, match="out of range"):
            archive.range("yi2-wcm3", start, end)


def test_ten_years_is_refused_before_anything_is_read(archive, monkeypatch):
    def no_reading(*args):
        raise AssertionError("a refused range must read nothing")

    monkeypatch.setattr(archive, "_runs", no_reading)
    t0 = time.monotonic()
    with pytest.raises(QueryError) as err:
        archive.range("yi2-wcm3", "2016-01-01", "2026-01-01")
    assert time.monotonic() - t0 < 1
    assert str(err.value) == (f"range spans 3654 days; ask for at most {MAX_RANGE_DAYS} "
                              "at a time")
    everything = (dt.date(9999, 12, 30) - dt.date(1, 1, 2)).days + 1
    with pytest.raises(QueryError, match=f"range spans {everything} days"):
        archive.range("yi2-wcm3", "0001-01-02", "9999-12-30")
    with pytest.raises(QueryError, match=f"range spans {MAX_RANGE_DAYS + 1} days"):
        archive.range("yi2-wcm3", "2001-01-01", "2002-01-02")
    monkeypatch.undo()  # the longest range allowed is answered (no run then: empty)
    df = archive.range("yi2-wcm3", "2001-01-01", "2002-01-01T00:00")
    assert df.empty and list(df.columns) == ["time"]


def test_unknown_attributes(archive, warden_server, tmp_path, capsys, monkeypatch):
    from catalog.plot import render_day_png

    png = tmp_path / "day.png"
    with pytest.raises(QueryError, match=r"bo2-dvm has no attribute 'nosuch' \(known: "):
        render_day_png(archive, "bo2-dvm", today(), ["dvmBeam", "nosuch"], png, 800, 600)
    assert not png.exists()
    monkeypatch.setenv("WARDEN_API_KEY", API_KEY)
    url = warden_server["url"]
    assert main(["plot", "bo2-dvm", today(), "../x", "-o", str(png), "--server", url]) == 2
    assert "bo2-dvm has no attribute '../x'" in capsys.readouterr().err
    assert not png.exists()
    # nor an attribute as a child of the object over HTTP
    r = httpx.get(f"{url}/api/v1/metadata/latest/yi2-wcm3/wcmBeam",
                  headers={"Authorization": f"Apikey {API_KEY}"}, trust_env=False)
    assert r.status_code == 404 and "No such entry" in r.json()["detail"]


def test_odd_object_names_on_the_command_line(warden_server, capsys, monkeypatch):
    monkeypatch.setenv("WARDEN_API_KEY", API_KEY)
    url = warden_server["url"]
    names = ["nope", "a/b", "../archive", "..", "yi2-wcm3/wcmBeam", "a\nb", "\x1b[31mred", "",
             "connection", "latest"]
    for i, name in enumerate(names):  # (each command connects anew: alternate, not all)
        argv = [["latest", name], ["day", name, today()], ["day", name, "2001-02-30"]][i % 3]
        assert main([*argv, "--server", url]) == 2
        captured = capsys.readouterr()
        assert f"unknown object {name!r}" in captured.err and "Traceback" not in captured.err
        assert captured.out == ""


def test_export_with_bad_input_writes_no_file(warden_server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WARDEN_API_KEY", API_KEY)
    out = tmp_path / "day.dat"
    url = warden_server["url"]
    for argv, message in ((["2001-13-01"], "impossible date"),
                          (["yesterday"], "malformed date"),
                          ([today(), "--object", "../etc"], "unknown object '../etc'"),
                          ([today(), "--object", "yi2-wcm3/internal"], "unknown object")):
        assert main(["export-ascii", *argv, "-o", str(out), "--server", url]) == 2, argv
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_query_errors_from_the_console_script(warden_server):
    """The installed ``warden``: exit 2, one line, no traceback."""
    env = {**os.environ, "WARDEN_API_KEY": API_KEY}
    url = warden_server["url"]
    runs = [["latest", "../archive"], ["day", "yi2-wcm3", "2001-02-30"],
            ["day", "a/b\x1b[31m", "yesterday"]]

    def run(argv):
        return subprocess.run([sys.executable, "-m", "warden", *argv, "--server", url],
                              capture_output=True, text=True, env=env, timeout=60)

    with ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(run, runs))
    for argv, out in zip(runs, outs, strict=True):
        assert out.returncode == 2, (argv, out.stderr)
        assert "Traceback" not in out.stderr
        assert out.stderr.startswith(f"warden {argv[0]}: ") and out.stderr.count("\n") == 1
    assert "unknown object '../archive'" in outs[0].stderr
    assert "impossible date '2001-02-30'" in outs[1].stderr
    assert "unknown object 'a/b\\x1b[31m'" in outs[2].stderr  # shown escaped, never raw


@pytest.mark.parametrize("name", [n for n in ODD_NAMES if n not in ("", "/")], ids=repr)
def test_odd_object_names_over_http(warden_server, name):
    """``GET /api/v1/metadata/latest/<name>``: 404 with a message, never another node."""
    url = warden_server["url"]
    headers = {"Authorization": f"Apikey {API_KEY}"}
    encoded = quote(name, safe="").replace(".", "%2E")  # every byte as sent, no dot-segments
    for path in {encoded, quote(name, safe="/").replace(".", "%2E")}:
        r = httpx.get(f"{url}/api/v1/metadata/latest/{path}", headers=headers, trust_env=False)
        assert r.status_code == 404, (path, r.status_code, r.text)  # (Starlette alone would
        assert r.json()["detail"], r.text  # answer 'yi2-wcm3\n' as 'yi2-wcm3': not here)
        assert '"structure_family"' not in r.text


def test_empty_object_names_over_http_are_the_latest_node_itself(warden_server):
    """Tiled drops empty path segments: ``latest/``, ``latest/%2F`` and ``latest//`` are the
    ``latest`` node (the list of objects), never the archive or the root."""
    url = warden_server["url"]
    headers = {"Authorization": f"Apikey {API_KEY}"}
    for path in ("", "%2F", "/", "%2F%2F"):
        r = httpx.get(f"{url}/api/v1/metadata/latest/{path}", headers=headers, trust_env=False)
        assert r.status_code == 200 and r.json()["data"]["id"] == "latest", (path, r.text)


# -- fuzzing -------------------------------------------------------------------------------------
@FUZZ
@given(st.one_of(st.text(), st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}\Z"),
                 st.dates().map(dt.date.isoformat)))
def test_fuzz_parse_day(text):
    try:
        day = parse_day(text)
    except QueryError as err:
        assert repr(text) in str(err)
    else:
        assert day.isoformat() == text


OFFSETS = st.sampled_from([None, dt.UTC, ZONE, dt.timezone(dt.timedelta(hours=14)),
                           dt.timezone(dt.timedelta(hours=-12))])
TIMES = st.one_of(
    st.text(max_size=40),
    st.datetimes(timezones=OFFSETS).map(dt.datetime.isoformat),
    st.datetimes(timezones=OFFSETS),
    st.dates().map(dt.date.isoformat),
    st.floats(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.integers(),
)


@FUZZ
@given(TIMES)
def test_fuzz_parse_time(text):
    try:
        seconds = parse_time(text, ZONE)
    except QueryError:
        return
    assert isinstance(seconds, float) and seconds == seconds  # a number, never NaN


class OfflineArchive(Archive):
    """The real ``range`` checks, on no server: reading records the days asked for."""

    def __init__(self):
        self.zone = ZONE
        self.asked: list[list[str]] = []

    def _check(self, obj):
        pass

    def _read(self, obj, days):
        self.asked.append(days)
        return pd.DataFrame({"time": pd.Series([], dtype=f"datetime64[ns, {ZONE.key}]")})


@FUZZ
@given(TIMES, TIMES)
def test_fuzz_range(start, end):
    archive = OfflineArchive()
    try:
        df = archive.range("yi2-wcm3", start, end)
    except QueryError:
        assert archive.asked == []  # refused before reading
        return
    assert df.empty and len(archive.asked) == 1
    assert 1 <= len(archive.asked[0]) <= MAX_RANGE_DAYS
    assert parse_time(end, ZONE) > parse_time(start, ZONE)


FIELDS = ["archive", "timezone", "flush_interval", "serve", "ascii", "objects", "exchange",
          "plugins", "plugin_dir", "plugin_threads", "plugin_tick", "name", "type", "source",
          "prefix", "mode", "period", "offset", "attributes", "host", "port", "directory",
          "target", "protocol", "interval"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300),
    st.floats(), st.text(max_size=12),
    st.sampled_from(["WcmControl", "generic", "ringSpec", "sim", "epics", "tango", "scan",
                     "monitor", "yi2-wcm3", "sqlite:///fuzz/archive.db", "America/New_York",
                     "America", "../x", "a/b", "lifetime", "0", "1e308"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), inner, max_size=5),
    max_leaves=20,
)
OBJECT = st.fixed_dictionaries(
    {"name": st.sampled_from(["yi2-wcm3", "a", "a/b", ".."]) | st.text(max_size=8),
     "type": st.sampled_from(["WcmControl", "generic", "ringSpec", "nosuch"])},
    optional={k: VALUES for k in ("source", "mode", "period", "offset", "attributes",
                                  "prefix")},
)
CONFIGS = st.fixed_dictionaries(
    {"objects": st.lists(OBJECT | VALUES, max_size=3) | VALUES},
    optional={k: VALUES for k in FIELDS[:11] if k != "objects"},
)


def loads_or_config_error(text: str) -> None:
    try:
        config = parse_config(text)
    except ConfigError as err:
        assert str(err) and "Traceback" not in str(err)
    else:
        assert isinstance(config, WardenConfig)


@FUZZ
@given(st.text())
def test_fuzz_config_text(text):
    loads_or_config_error(text)


@FUZZ
@given(CONFIGS)
def test_fuzz_config_structures(data):
    loads_or_config_error(yaml.safe_dump(data))


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_config_files(tmp_path, data):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as err:
        assert str(err)
