"""The ``warden`` command as a new user meets it, run as a subprocess: a wrong or missing API
key, no server, a day's table and CSV, a restarted day, ASCII exports that never overwrite,
plots that show when the warden was not recording, the demo's stopping and plugins, config
mistakes, and the clients' extra.

One module-scoped ``warden run`` (``sim`` source, real time) is stopped with SIGTERM and
started again on the same archive, so today has two runs with a pause between them.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import API_KEY, ROOT, wait_for

from catalog.query import Archive, ServerUnreachable

WRONG = "wrongkey123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def warden(*argv: str, key: str | None = API_KEY, cwd: Path | None = None, timeout: float = 120
           ) -> subprocess.CompletedProcess:
    """``python -m warden ARGV`` with ``WARDEN_API_KEY=key`` (none when ``key`` is None)."""
    env = {k: v for k, v in os.environ.items() if k != "WARDEN_API_KEY"}
    if key is not None:
        env["WARDEN_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "warden", *argv], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)


def one_line(out: subprocess.CompletedProcess, command: str) -> str:
    """The single line a failed command prints (and no traceback)."""
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith(f"warden {command}: ") and out.stderr.count("\n") == 1, \
        out.stderr
    return out.stderr.strip()


def start_run(config: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "warden", "run", str(config)],
                            env={**os.environ, "WARDEN_API_KEY": API_KEY},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = [proc.stdout.readline()]
    while "serving" not in seen[-1]:
        assert seen[-1] and len(seen) < 50, "".join(seen)
        seen.append(proc.stdout.readline())
    return proc


@pytest.fixture(scope="module")
def restarted(tmp_path_factory):
    """``warden run`` stopped with SIGTERM and started again: today holds two runs."""
    tmp = tmp_path_factory.mktemp("cli")
    port = free_port()
    config = tmp / "warden.yaml"
    config.write_text(yaml.safe_dump({
        "archive": f"sqlite:///{tmp / 'archive.db'}",
        "serve": {"host": "127.0.0.1", "port": port},
        "objects": [
            {"name": "yi2-wcm3", "type": "WcmControl", "source": "sim", "mode": "monitor"},
            {"name": "ring-yellow", "type": "ringSpec", "source": "sim", "period": 1,
             "offset": 0.2},
        ],
    }))
    url = f"http://127.0.0.1:{port}"
    proc = start_run(config)
    try:
        archive = Archive.from_uri(url, api_key=API_KEY)
        day = dt.datetime.now(archive.zone).date().isoformat()
        first = wait_for(lambda: len(archive.day("yi2-wcm3", day)), timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.stdout.read()
        proc.stdout.close()
        proc = start_run(config)
        archive = Archive.from_uri(url, api_key=API_KEY)
        wait_for(lambda: len(archive.day("yi2-wcm3", day)) > first, timeout=60)
        yield {"url": url, "day": day, "archive": archive, "tmp": tmp}
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        proc.stdout.close()


# -- a wrong or missing API key -----------------------------------------------------------------
def test_wrong_or_missing_api_key_is_one_line_and_exit_2(restarted, tmp_path):
    url, day = restarted["url"], restarted["day"]
    png, dat = tmp_path / "day.png", tmp_path / "day.dat"
    commands = [["latest", "yi2-wcm3"], ["status"], ["day", "yi2-wcm3", day], ["objects"],
                ["days"], ["plot", "yi2-wcm3", day, "-o", str(png)],
                ["export-ascii", day, "-o", str(dat)], ["plugins", "start", "lifetime"]]
    cases = [(argv, key) for argv in commands for key in (WRONG, None)]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda c: warden(*c[0], "--server", url, key=c[1]), cases))
    for (argv, key), out in zip(cases, outs, strict=True):
        assert out.returncode == 2, (argv, key, out.stderr)
        line = one_line(out, argv[0])
        if key is None:
            assert f"the warden server at {url} requires an API key; set WARDEN_API_KEY" in line
        else:
            assert f"the warden server at {url} refused the API key" in line, line
            assert line.endswith("check WARDEN_API_KEY"), line
    assert not png.exists() and not dat.exists()


def test_wrong_api_key_in_the_readme_python_snippets(restarted):
    """``Archive`` raises :class:`ApiKeyError`; the stock client's error is as the README says."""
    snippets = {
        "catalog.query.ApiKeyError: the warden server at {url} refused the API key": (
            "from catalog.query import Archive\n"
            "a = Archive.from_uri({url!r}, api_key={key!r})\n"),
        "tiled.client.utils.ClientError: 401: Invalid API key": (
            "from tiled.client import from_uri\n"
            "runs = from_uri({url!r}, api_key={key!r})['archive']\n"),
    }
    for last, code in snippets.items():
        out = subprocess.run([sys.executable, "-c", code.format(url=restarted["url"], key=WRONG)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1
        assert out.stderr.strip().splitlines()[-1].startswith(last.format(url=restarted["url"]))


# -- no server ------------------------------------------------------------------------------
def test_no_server_listening_is_one_line_without_retries(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    for argv in (["latest", "yi2-wcm3"], ["day", "yi2-wcm3", "2001-11-06"], ["status"],
                 ["plugins"]):
        out = warden(*argv, "--server", url, timeout=60)
        assert out.returncode == 1, out.stderr
        line = one_line(out, argv[0])
        assert f"cannot reach the warden server at {url}" in line and "refused" in line, line
        assert "Retrying" not in out.stderr
    # refused before Tiled's client (which retries for tens of seconds) is asked anything
    import catalog.query

    def never(*args, **kwargs):
        raise AssertionError("the Tiled client was asked")

    monkeypatch.setattr(catalog.query, "tiled_from_uri", never)
    with pytest.raises(ServerUnreachable, match="connection refused"):
        Archive.from_uri(url)


# -- a day's table and CSV ----------------------------------------------------------------------
def test_day_table_shows_every_attribute_and_csv_one_column_per_element(restarted):
    url, day, archive = restarted["url"], restarted["day"], restarted["archive"]
    table = warden("day", "yi2-wcm3", day, "--server", url)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["time", "wcmBeam", "bunchIntensity"]
    assert re.search(r"\[120\] mean \d", lines[1]), lines[1]
    assert "..." not in lines[1]
    df = archive.day("yi2-wcm3", day)  # (and rows archived since then)
    csv = warden("day", "yi2-wcm3", day, "--format", "csv", "--server", url)
    assert csv.returncode == 0, csv.stderr
    rows = [line.split(",") for line in csv.stdout.splitlines()]
    assert rows[0] == ["time", "wcmBeam", *(f"bunchIntensity[{i}]" for i in range(120))]
    assert len(rows) - 1 >= len(df)
    n = len(df)
    got = np.array([[float(x) for x in r[2:]] for r in rows[1 : n + 1]])
    np.testing.assert_allclose(got, np.stack(df["bunchIntensity"].to_list()), rtol=1e-12)
    assert [float(r[1]) for r in rows[1 : n + 1]] == df["wcmBeam"].tolist()


# -- a restarted day ----------------------------------------------------------------------------
README_RECIPE = """
from tiled.client import from_uri
from tiled.queries import Key
import xarray as xr
runs = from_uri({url!r}, api_key={key!r})["archive"]
day = runs.search(Key("day") == {day!r})                              # every run of the day
ds = xr.concat([run["yi2-wcm3"].read() for run in day.values() if "yi2-wcm3" in run],
               dim="time").sortby("time")
print(len(day), ds.sizes["time"])
"""


def test_a_restarted_day_is_read_whole_by_the_stock_recipe_and_by_the_cli(restarted):
    url, day, archive = restarted["url"], restarted["day"], restarted["archive"]
    readme = (ROOT / "README.md").read_text()
    recipe = README_RECIPE.format(url=url, key=API_KEY, day=day)
    stock = "\n".join(recipe.strip().splitlines()[:-1])  # the README's lines, but its print
    shown = stock.replace(repr(url), '"http://127.0.0.1:8000"').replace(repr(API_KEY), '"..."')
    assert shown.replace(repr(day), '"2001-11-06"') in readme
    recording = archive.recording(day)
    assert len(recording) == 2 and recording["stop"].notna().iloc[0]
    before = len(archive.day("yi2-wcm3", day))
    out = subprocess.run([sys.executable, "-c", recipe], capture_output=True, text=True,
                         timeout=60)
    runs, rows = map(int, out.stdout.split())
    assert runs == 2 and rows >= before, out.stderr
    cli = warden("day", "yi2-wcm3", day, "--format", "json", "--server", url)
    assert cli.returncode == 0 and cli.stdout.count('"wcmBeam"') >= before


# -- export-ascii -------------------------------------------------------------------------------
def test_export_ascii_names_never_collide_and_nothing_is_overwritten(restarted, tmp_path):
    url, day = restarted["url"], restarted["day"]
    d = dt.date.fromisoformat(day)
    whole = tmp_path / f"rhicdata.{d:%b%d%Y}.dat"
    one = tmp_path / f"rhicdata.{d:%b%d%Y}.yi2-wcm3.dat"
    out = warden("export-ascii", day, "--server", url, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith(whole.name), out.stderr
    kept = whole.read_bytes()
    out = warden("export-ascii", day, "--object", "yi2-wcm3", "--server", url, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith(one.name), out.stderr
    assert whole.read_bytes() == kept
    assert all(line.startswith("yi2-wcm3,") for line in one.read_text().splitlines())
    assert any(line.startswith("ring-yellow,") for line in kept.decode().splitlines())
    for argv in ([], ["--object", "yi2-wcm3", "-o", whole.name]):
        out = warden("export-ascii", day, *argv, "--server", url, cwd=tmp_path)
        assert out.returncode == 2
        assert one_line(out, "export-ascii").endswith(f"{whole.name} exists; "
                                                      "--force to overwrite it")
        assert whole.read_bytes() == kept
    out = warden("export-ascii", day, "--object", "yi2-wcm3", "-o", whole.name, "--force",
                 "--server", url, cwd=tmp_path)
    assert out.returncode == 0 and whole.read_bytes() != kept
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([whole.name, one.name])


# -- plots: when the warden was not recording ---------------------------------------------------
def test_plot_shows_where_the_warden_was_not_recording(restarted, tmp_path):
    from catalog.plot import not_recording_intervals, plot_day

    url, day, archive = restarted["url"], restarted["day"], restarted["archive"]
    out = warden("plot", "yi2-wcm3", day, "-o", str(tmp_path / "p.png"), "--server", url)
    assert out.returncode == 0, out.stderr
    rec = archive.recording(day)
    stop, restart = rec["stop"].iloc[0], rec["start"].iloc[1]
    assert f"not recording  {stop:%H:%M:%S} to {restart:%H:%M:%S}" in out.stdout, out.stdout
    assert f"not recording  00:00:00 to {rec['start'].iloc[0]:%H:%M:%S}" in out.stdout
    assert (stop, restart) in not_recording_intervals(archive, day)
    fig = plot_day(archive, "yi2-wcm3", day)
    ax = fig.axes[0]
    assert "not recording" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert np.isnan(ax.lines[0].get_ydata()).sum() == 2  # broken at both pauses


# -- the demo -----------------------------------------------------------------------------------
def start_demo(tmp_path: Path, port: int) -> tuple[subprocess.Popen, str, list[str]]:
    """``warden demo`` in a session of its own, from a shell with no EPICS settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "warden", "demo", "--duration", "600", "--port", str(port),
         "--data-dir", str(tmp_path / "demo"), "--update-period", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True)
    seen = [proc.stdout.readline()]
    while "Ctrl-C stops" not in seen[-1]:
        assert seen[-1] and len(seen) < 80, "".join(seen)
        seen.append(proc.stdout.readline())
    key = re.search(r"API key\s+(\w+)", "".join(seen)).group(1)
    return proc, key, seen


def test_demo_plugins_are_startable_and_ctrl_c_stops_before_the_duration(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc, key, seen = start_demo(tmp_path, port)
    try:
        listed = warden("plugins", "--server", url, key=None)
        assert listed.returncode == 0, listed.stderr
        states = dict(line.split()[:2] for line in listed.stdout.splitlines()[1:])
        assert states == {"lifetime": "enabled", "fill": "enabled"}, listed.stdout
        for action, state in (("stop", "stopped"), ("start", "enabled")):
            out = warden("plugins", action, "fill", "--server", url, key=key)
            assert out.returncode == 0 and out.stdout.splitlines()[1].split()[:2] == [
                "fill", state], out.stdout + out.stderr
        proc.send_signal(signal.SIGINT)  # long before --duration 600 runs out
        rest = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, rest
        assert "warden demo: stopped; the archive stays in" in rest
        assert "Traceback" not in "".join(seen) + rest
    finally:
        kill_session(proc)


def kill_session(proc: subprocess.Popen) -> None:
    """Kill what is left of the demo's session (the demo, its IOC), should it not have stopped."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.poll() is None or proc.stdout and not proc.stdout.closed:
        proc.communicate()


@pytest.mark.parametrize("second", [None, signal.SIGINT, signal.SIGTERM],
                         ids=["SIGTERM", "SIGTERM then Ctrl-C", "SIGTERM twice"])
def test_demo_stops_on_sigterm_and_at_once_on_a_second_signal(tmp_path, second):
    proc, _, _ = start_demo(tmp_path, free_port())
    try:
        proc.send_signal(signal.SIGTERM)
        seen = [proc.stdout.readline()]
        while "warden: stopping; again to stop at once" not in seen[-1]:
            assert seen[-1], "".join(seen)
            seen.append(proc.stdout.readline())
        if second is not None:
            proc.send_signal(second)
        rest = "".join(seen) + proc.communicate(timeout=60)[0]
        assert "Traceback" not in rest
        if second is None:
            assert proc.returncode == 0, rest
            assert "warden demo: stopped; the archive stays in" in rest
        else:  # (0 if the first had finished)
            assert proc.returncode in (0, 130), rest
            if proc.returncode == 130:
                assert rest.rstrip().endswith("warden: stopped at once; the spool keeps what "
                                              "was not written"), rest
    finally:
        kill_session(proc)


# -- config mistakes ----------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("objects: [\n", "not valid YAML: {path}, line 2, column 1: expected the node content"),
    ("objects: [{name: a, type: WcmControl}]\nserve: {port: 1\n",
     "not valid YAML: {path}, line 3, column 1: expected ',' or '}}'"),
    ("objects: [{name: a, type: WcmControl, perod: 3}]\n",
     "objects[0] ('a').perod: unknown field (did you mean 'period'?)"),
    ("objects: [{name: a, type: WcmControl}]\nflush_intervall: 1\n",
     "flush_intervall: unknown field (did you mean 'flush_interval'?)"),
    ("objects: [{name: a, type: WcmControl}]\nserve: {hots: 0.0.0.0}\n",
     "serve.hots: unknown field (did you mean 'host'?)"),
    ("objects: [{name: a, type: WcmControl}]\nserve: {colour: red}\n",
     "serve.colour: unknown field (known: host, port)"),
], ids=["yaml", "yaml flow", "object field", "top field", "serve field", "no near name"])
def test_config_errors_name_the_file_and_the_nearest_field(tmp_path, text, message):
    path = tmp_path / "warden.yaml"
    path.write_text(text)
    out = warden("check-config", str(path), key=None)
    assert out.returncode == 2
    line = one_line(out, "check-config")
    assert message.format(path=path) in line, line
    assert "<unicode string>" not in line


# -- the clients' extra -------------------------------------------------------------------------
def test_clients_extra_and_the_profile_leaves_the_tree_clean(tmp_path):
    """``pip install -e .[clients]`` has what the profile and the notebooks need; what IPython
    writes into the profile directory is ignored by git."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    names = {re.match(r"[\w-]+", r).group(0) for r in extras["clients"]}
    assert {"ipython", "ipykernel", "nbclient", "nbconvert"} <= names
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -e ".[clients]"' in readme
    assert "ipython --profile-dir=profile_collection" in readme
    assert "jupyter nbconvert --execute --to html" in readme

    profile = tmp_path / "profile_collection"
    shutil.copytree(ROOT / "profile_collection", profile)
    before = {p.relative_to(profile) for p in profile.rglob("*")}
    config = tmp_path / "w.yaml"
    config.write_text("objects: [{name: yi2-wcm3, type: WcmControl, source: sim}]\n")
    env = {**os.environ, "WARDEN_CONFIG": str(config), "IPYTHONDIR": str(tmp_path / "ipy"),
           "WARDEN_SERVER": f"http://127.0.0.1:{free_port()}"}
    out = subprocess.run([sys.executable, "-m", "IPython", f"--profile-dir={profile}",
                          "--no-banner", "-c", "print('up')"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "up" in out.stdout, out.stdout + out.stderr
    assert "connection refused" in out.stdout  # the session starts without a server
    written = {p.relative_to(profile) for p in profile.rglob("*") if p.is_file()} - before
    assert Path("history.sqlite") in written
    # and the README IPython copies into a startup folder it creates
    files = [str(Path("profile_collection") / p) for p in [*written, Path("startup/README")]]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=ROOT,
                             capture_output=True, text=True)
    assert sorted(ignored.stdout.split()) == sorted(files), ignored.stdout
