"""Archive URIs: what the ``archive`` of the config names, parsed once.

=====================================  =========================================================
``sqlite:///dir/archive.db``           the catalog file; beside it ``archive.tables.db`` (rows)
                                       and ``archive.data/`` (arrays, compacted days).
                                       ``sqlite:///rel/path`` is relative, ``sqlite:////abs``
                                       absolute
``postgresql://user:pw@host:port/db``  catalog and rows in database ``db`` (``+asyncpg`` or
                                       another ``+driver`` is accepted and dropped for ADBC)
``mongodb://host:port/db``             databroker's MongoDB layout in database ``db``
                                       (``mongodb+srv://`` too)
``mongomock://name/db``                the same, in memory (tests, demos)
=====================================  =========================================================

>>> uri = ArchiveURI.parse("postgresql+asyncpg://warden:secret@db1:5432/archive")
>>> uri.scheme, uri.database, uri.dsn
('postgresql', 'archive', 'postgresql://warden:secret@db1:5432/archive')
>>> uri.redacted()
'postgresql+asyncpg://warden:***@db1:5432/archive'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

SCHEMES = ("sqlite", "postgresql", "mongodb", "mongomock")


class ArchiveURIError(ValueError):
    """An archive URI that names no usable archive (bad input: the CLI exits 2)."""


@dataclass(frozen=True)
class ArchiveURI:
    """One archive URI. Two URIs naming the same archive compare equal (``sqlite:///a.db``
    and ``sqlite:///./a.db``; a password or driver does not count)."""

    scheme: str  # "sqlite" | "postgresql" | "mongodb" | "mongomock"
    path: Path | None = None  # sqlite: the catalog file, resolved
    host: str = ""  # postgresql, mongodb: the network location without user and password;
    # mongomock: the name of the in-memory server
    database: str = ""  # postgresql, mongodb, mongomock
    text: str = field(default="", compare=False, repr=False)  # as given (password and all)

    @classmethod
    def parse(cls, text: str, schemes: tuple[str, ...] = SCHEMES) -> ArchiveURI:
        """Parse ``text``; raise :class:`ArchiveURIError` (one line, no password) when it
        names no archive of ``schemes``."""
        if not isinstance(text, str):
            raise ArchiveURIError(f"an archive URI is text, not {type(text).__name__}")
        given = text.split("://", 1)[0].lower() if "://" in text else ""
        scheme = "mongodb" if given == "mongodb+srv" else given.split("+", 1)[0]
        if scheme not in schemes:
            known = ", ".join(f"{s}://" for s in schemes)
            raise ArchiveURIError(f"unknown archive URI scheme {given!r} (known: {known})")
        try:
            parts = urlsplit(text)
            if scheme == "postgresql":
                parts.port  # noqa: B018 - raises for a port that is no number
            if scheme == "sqlite":
                if parts.netloc or len(parts.path) < 2 or parts.query or parts.fragment:
                    raise ArchiveURIError(
                        f"archive URI {text!r} is not sqlite:///path/archive.db (a file: "
                        "no host, no query)")
                return cls("sqlite", path=Path(parts.path[1:]).resolve(), text=text)
        except (ValueError, OSError) as err:  # (ArchiveURIError is one)
            if isinstance(err, ArchiveURIError):
                raise
            raise ArchiveURIError(f"archive URI {_redact(text)!r}: {err}") from None
        database = parts.path.strip("/")
        if not database or "/" in database:
            raise ArchiveURIError(f"archive URI {_redact(text)!r} names no database "
                                  f"({scheme}://host/DB)")
        host = parts.netloc.rpartition("@")[2]  # (a MongoDB URI may list several)
        return cls(scheme, host=host, database=database, text=text)

    # -- SQLite: the three places of one archive ----------------------------------------------
    @property
    def tables_path(self) -> Path:
        """SQLite: the file of the table rows, ``archive.tables.db``."""
        return self._sqlite_path().with_suffix(".tables.db")

    @property
    def data_dir(self) -> Path:
        """The directory of arrays (and compacted days): ``archive.data/`` beside a SQLite
        archive; ``./warden-data/<db>.data`` by default for a PostgreSQL one (every server
        of the archive must see it: a config may name another)."""
        if self.scheme == "postgresql":
            return Path("warden-data") / f"{self.database}.data"
        return self._sqlite_path().with_suffix(".data")

    # -- how each library is given it ----------------------------------------------------------
    @property
    def dsn(self) -> str:
        """PostgreSQL: the libpq URI (no ``+driver``) that ADBC and asyncpg take."""
        if self.scheme != "postgresql":
            raise ValueError(f"a {self.scheme}:// archive has no PostgreSQL DSN")
        return "postgresql://" + self.text.split("://", 1)[1]

    @property
    def catalog(self) -> str:
        """The SQLAlchemy URI of Tiled's catalog (Tiled adds its async driver)."""
        if self.scheme == "sqlite":
            return f"sqlite:///{self.path}"
        return self.dsn

    @property
    def tables(self) -> str:
        """The URI of Tiled's table storage, as Tiled and ADBC open it."""
        if self.scheme == "sqlite":
            return f"sqlite:///{self.tables_path}"
        return self.dsn

    def with_database(self, name: str) -> str:
        """This URI (PostgreSQL, MongoDB) naming database ``name`` instead."""
        if self.scheme not in ("postgresql", "mongodb", "mongomock"):
            raise ValueError(f"a {self.scheme}:// archive has no database")
        return urlsplit(self.text)._replace(path=f"/{name}").geturl()

    def redacted(self) -> str:
        """The URI as given, any password shown as ``***``."""
        return _redact(self.text)

    def __str__(self) -> str:
        return self.redacted()

    def _sqlite_path(self) -> Path:
        if self.path is None:
            raise ValueError(f"a {self.scheme}:// archive has no SQLite file")
        return self.path


def _redact(text: str) -> str:
    netloc = re.split(r"[/?#]", text.partition("://")[2], maxsplit=1)[0]
    user, at, _ = netloc.rpartition("@")
    if not at or ":" not in user:
        return text
    return text.replace(f"{user}@", f"{user.split(':', 1)[0]}:***@", 1)
