"""Archive URIs: one parser (``catalog.uri.ArchiveURI``) for the config, the CLI and the
backends; a bad URI is a one-line error (exit 2) that never shows a password."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalog.uri import ArchiveURI, ArchiveURIError
from warden.cli import main


def test_sqlite_uris_name_the_catalog_file_and_the_places_beside_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = ArchiveURI.parse("sqlite:///warden-data/archive.db")
    absolute = ArchiveURI.parse(f"sqlite:///{tmp_path}/warden-data/archive.db")  # (4 slashes)
    assert relative == absolute == ArchiveURI.parse("sqlite:///./warden-data/../warden-data/archive.db")
    assert relative.scheme == "sqlite"
    assert relative.path == tmp_path / "warden-data" / "archive.db"
    assert relative.tables_path == tmp_path / "warden-data" / "archive.tables.db"
    assert relative.data_dir == tmp_path / "warden-data" / "archive.data"
    assert relative.catalog == f"sqlite:///{tmp_path}/warden-data/archive.db"
    assert relative.tables == f"sqlite:///{tmp_path}/warden-data/archive.tables.db"


def test_postgresql_uris_as_adbc_asyncpg_and_tiled_take_them():
    uri = ArchiveURI.parse("postgresql+asyncpg://warden:s3cret@db1:5433/archive?sslmode=require")
    assert (uri.scheme, uri.host, uri.database) == ("postgresql", "db1:5433", "archive")
    assert uri.dsn == "postgresql://warden:s3cret@db1:5433/archive?sslmode=require"
    assert uri.catalog == uri.tables == uri.dsn  # (Tiled adds its own driver to the catalog's)
    assert uri.data_dir == Path("warden-data/archive.data")
    assert uri == ArchiveURI.parse("postgresql://warden@db1:5433/archive")  # same database
    assert uri != ArchiveURI.parse("postgresql://warden@db1:5433/other")
    assert uri.with_database("other") == (
        "postgresql+asyncpg://warden:s3cret@db1:5433/other?sslmode=require")


def test_mongodb_uris_and_the_in_memory_kind():
    uri = ArchiveURI.parse("mongodb+srv://w:hunter2@c1.example,c2.example/warden?authSource=a")
    assert (uri.scheme, uri.host, uri.database) == ("mongodb", "c1.example,c2.example", "warden")
    mock = ArchiveURI.parse("mongomock://tests/warden")
    assert (mock.scheme, mock.host, mock.database) == ("mongomock", "tests", "warden")


def test_passwords_are_redacted_everywhere_they_could_show():
    uri = ArchiveURI.parse("mongodb://w:hunter2@m1:27017,m2/db?authSource=admin")
    assert uri.redacted() == str(uri) == "mongodb://w:***@m1:27017,m2/db?authSource=admin"
    assert "hunter2" not in repr(uri)
    assert ArchiveURI.parse("postgresql://warden@h/db").redacted() == "postgresql://warden@h/db"
    with pytest.raises(ArchiveURIError) as err:
        ArchiveURI.parse("postgresql://warden:hunter2@h:port/db")
    assert "hunter2" not in str(err.value) and "warden:***@h:port" in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("ftp://host/archive", "unknown archive URI scheme 'ftp'"),
    ("archive.db", "unknown archive URI scheme ''"),
    ("sqlite://host/archive.db", "is not sqlite:///path/archive.db"),
    ("sqlite:///", "is not sqlite:///path/archive.db"),
    ("sqlite:///archive.db?mode=ro", "is not sqlite:///path/archive.db"),
    ("postgresql://h:5432", "names no database (postgresql://host/DB)"),
    ("postgresql://h/a/b", "names no database"),
    ("mongodb://h", "names no database (mongodb://host/DB)"),
    ("mongomock://x", "names no database"),
    ("postgresql://[::1/db", "Invalid IPv6 URL"),
])
def test_bad_uris_are_one_line_errors(text, message):
    with pytest.raises(ArchiveURIError) as err:
        ArchiveURI.parse(text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_config_takes_no_in_memory_archive(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    for archive, message in [("mongomock://x/db", "mongomock:// is in memory, one per process"),
                             ("sqlite://host/a.db", "is not sqlite:///path/archive.db")]:
        config.write_text(f"archive: '{archive}'\n"
                          "objects: [{name: a, type: WcmControl, mode: monitor}]\n")
        assert main(["check-config", str(config)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("warden check-config: archive: ")
        assert message in err and err.count("\n") == 1


def test_migrate_with_a_bad_uri_exits_2_with_one_line(tmp_path, capsys):
    target = f"sqlite:///{tmp_path / 'b.db'}"
    assert main(["migrate", "postgresql://warden:hunter2@h", target]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names no database" in err and "hunter2" not in err
    assert main(["migrate", target, f"sqlite:///{tmp_path}/./b.db"]) == 2
    assert "the same archive" in capsys.readouterr().err
    assert not (tmp_path / "b.db").exists()  # nothing opened, nothing created
