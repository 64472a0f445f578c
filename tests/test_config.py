"""Config validation: good files pass, each kind of bad file exits 2 naming the field."""

import subprocess
import sys

import pytest
from conftest import EXAMPLE

from warden.cli import main
from warden.config import load_config

GOOD_OBJECT = "{name: yi2-wcm3, type: WcmControl, mode: monitor}"


def check(tmp_path, capsys, text: str) -> tuple[int, str]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    code = main(["check-config", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_example_config_is_valid(capsys):
    assert main(["check-config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "10 objects (4 monitor, 6 scan)" in out
    config = load_config(EXAMPLE)
    assert config.object("ring-yellow").period == 30
    assert config.zone.key == "America/New_York"


def test_example_config_matches_the_simulated_ioc():
    from warden_devices.machine import RHIC_OBJECTS

    config = load_config(EXAMPLE)
    assert [(o.name, o.type) for o in config.objects] == [(n, t) for n, t, _ in RHIC_OBJECTS]


@pytest.mark.parametrize(
    "objects, field, message",
    [
        ("[{name: a, type: WcmControl}, {name: b, type: ringSpec, period: 0}]",
         "objects[1] ('b').period", "must be > 0"),
        ("[{name: a, type: NoSuchType}]", "objects[0] ('a').type", "unknown object type"),
        (f"[{GOOD_OBJECT}, {{name: yi2-wcm3, type: DvmControl}}]", "objects[1].name",
         "duplicate object name 'yi2-wcm3'"),
        ("[{name: a, type: ringSpec, period: 10, offset: 10}]", "objects[0] ('a').offset",
         "must be smaller than period"),
        ("[{name: a, type: ringSpec, colour: red}]", "objects[0] ('a').colour", "unknown field"),
        ("[{name: '../etc', type: ringSpec}]", "objects[0] ('../etc').name", "'..'"),
        ("[{name: a, type: generic}]", "objects[0] ('a').attributes", "needs a list"),
        ("[{name: a, type: ringSpec, mode: sometimes}]", "objects[0] ('a').mode", "must be one"),
    ],
)
def test_bad_objects_exit_2_naming_the_field(tmp_path, capsys, objects, field, message):
    code, out = check(tmp_path, capsys, f"objects: {objects}\n")
    assert code == 2
    assert f"{field}: " in out and message in out
    assert "Traceback" not in out


def test_unknown_archive_scheme(tmp_path, capsys):
    code, out = check(tmp_path, capsys, f"archive: ftp://host/x\nobjects: [{GOOD_OBJECT}]\n")
    assert code == 2
    assert "archive: unknown archive URI scheme 'ftp'" in out


def test_unknown_timezone(tmp_path, capsys):
    code, out = check(tmp_path, capsys, f"timezone: Mars/Olympus\nobjects: [{GOOD_OBJECT}]\n")
    assert code == 2 and "timezone: unknown timezone" in out


@pytest.mark.parametrize(
    "text, message",
    [
        ("objects: [", "not valid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        ("a: &x [1, 2]\nb: *x\nobjects: []\n", "aliases are not allowed"),
        ("objects: 12\n", "objects: "),
    ],
)
def test_malformed_files(tmp_path, capsys, text, message):
    code, out = check(tmp_path, capsys, text)
    assert code == 2 and message in out


def test_missing_file_and_no_traceback_from_the_console_script(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("objects: [{name: a, type: WcmControl, period: -1}]\n")
    for path in (bad, tmp_path / "missing.yaml"):
        out = subprocess.run([sys.executable, "-m", "warden", "check-config", str(path)],
                             capture_output=True, text=True)
        assert out.returncode == 2
        assert "Traceback" not in out.stderr
    assert "objects[0] ('a').period: must be > 0" in subprocess.run(
        [sys.executable, "-m", "warden", "check-config", str(bad)], capture_output=True, text=True
    ).stderr
