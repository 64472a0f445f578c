"""The warden's configuration: one YAML file, validated with pydantic.

Errors name the field and the object, e.g. ``objects[3] (ring-blue).period: must be > 0``;
an unknown field suggests the nearest known one, a YAML error names the file, line and column.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import tzlocal
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from catalog.uri import ArchiveURI

MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_CONFIG_DEPTH = 32  # levels of nested lists and mappings
GENERIC = "generic"
ARCHIVE_SCHEMES = ("sqlite", "postgresql", "mongodb")
IN_MEMORY = ("mongomock:// is in memory, one per process, and the service writes and serves its "
             "archive from processes of their own: use sqlite://, postgresql:// or mongodb://")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+:-]{0,127}$")
ATTR_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the field."""


def _check_name(value: str) -> str:
    if not NAME_PATTERN.match(value) or ".." in value:
        raise ValueError(
            "must be 1-128 letters, digits or '_.+:-', start with a letter or digit "
            "and not contain '..'"
        )
    return value


ObjectName = Annotated[str, Field(min_length=1, max_length=128)]
Seconds = Annotated[float, Field(gt=0, le=86400)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ObjectConfig(Strict):
    """One upstream object."""

    name: ObjectName
    type: str
    source: Literal["epics", "sim", "tango"] = "epics"
    prefix: str | None = Field(None, max_length=256)
    mode: Literal["scan", "monitor"] = "scan"
    period: Seconds = 30.0
    offset: Annotated[float, Field(ge=0, le=86400)] = 0.0
    attributes: list[str] | dict[str, str] | None = None

    _name = field_validator("name")(_check_name)

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        from warden_devices.rhic import OBJECT_TYPES  # imports ophyd: only when validating

        if value != GENERIC and value not in OBJECT_TYPES:
            known = ", ".join([*OBJECT_TYPES, GENERIC])
            raise ValueError(f"unknown object type {value!r} (known: {known})")
        return value

    @field_validator("attributes")
    @classmethod
    def _attribute_names(cls, value):
        if value is None:
            return value
        for attr in value:
            if not ATTR_PATTERN.match(attr):
                raise ValueError(f"attribute {attr!r} is not a valid name")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ObjectConfig:
        if self.mode == "scan" and self.offset >= self.period:
            raise ValueError(
                f"offset: must be smaller than period ({self.period}), not {self.offset}"
            )
        if self.type == GENERIC and not self.attributes:
            raise ValueError("attributes: a generic object needs a list of attributes")
        if self.source == "tango" and not self.prefix:
            raise ValueError("prefix: a tango object needs its device name as prefix")
        if self.type != GENERIC and self.attributes is not None:
            raise ValueError(f"attributes: only objects of type {GENERIC!r} list attributes")
        return self

    @property
    def pv_prefix(self) -> str:
        return self.prefix if self.prefix is not None else f"{self.name}:"

    @property
    def attribute_suffixes(self) -> dict[str, str] | None:
        """``{attribute: PV suffix}`` of a generic object."""
        if isinstance(self.attributes, list):
            return {a: a for a in self.attributes}
        return self.attributes


class ServeConfig(Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000


class AsciiConfig(Strict):
    directory: Path
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "rhicdata"


class ExchangeConfig(Strict):
    source: Annotated[str, Field(min_length=1, max_length=256)]
    target: Annotated[str, Field(min_length=1, max_length=256)]
    period: Seconds = 120.0
    protocol: Literal["epics", "tango"] = "epics"  # of both source and target


# -- scale-out (warden.shards) ---------------------------------------------------------------
class NatsConfig(Strict):
    """The NATS JetStream server between the shards and the archive writer."""

    url: Annotated[str, Field(pattern=r"^(nats|tls)://[^\s]+$")] = "nats://127.0.0.1:4222"
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "warden"  # stream, buckets
# -- end scale-out ------------------------------------------------------------------------------


class PluginConfig(Strict):
    name: ObjectName
    interval: Seconds | None = None
    offset: Annotated[float, Field(ge=0, le=86400)] | None = None

    _name = field_validator("name")(_check_name)  # served and archived as an object's name


class WardenConfig(Strict):
    """The whole configuration file."""

    archive: str = "sqlite:///warden-data/archive.db"
    spool: Path | None = None  # write-ahead spool directory; default: <archive dir>/spool
    timezone: str | None = None
    flush_interval: Annotated[float, Field(gt=0, le=10)] = 0.5
    serve: ServeConfig = ServeConfig()
    ascii: AsciiConfig | None = None
    objects: Annotated[list[ObjectConfig], Field(min_length=1, max_length=100_000)]
    exchange: list[ExchangeConfig] = []
    plugins: list[PluginConfig] = []
    plugin_dir: Path | None = None
    plugin_threads: Annotated[int, Field(ge=1, le=64)] = 4
    plugin_tick: Annotated[float, Field(gt=0, le=10)] = 0.1
    shards: Annotated[int, Field(ge=1, le=1024)] = 1  # scale-out: processes, warden.shards
    nats: NatsConfig | None = None  # scale-out: the transport between shards and the writer

    @field_validator("archive")
    @classmethod
    def _archive_uri(cls, value: str) -> str:
        if ArchiveURI.parse(value).scheme not in ARCHIVE_SCHEMES:  # (errors: ValueErrors)
            raise ValueError(IN_MEMORY)
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder's name
                raise ValueError(f"unknown timezone {value!r}") from None
        return value

    @field_validator("objects")
    @classmethod
    def _unique_names(cls, objects: list[ObjectConfig]) -> list[ObjectConfig]:
        seen: dict[str, int] = {}
        for i, obj in enumerate(objects):
            if obj.name in seen:
                raise ValueError(
                    f"objects[{i}].name: duplicate object name {obj.name!r} "
                    f"(first at objects[{seen[obj.name]}])"
                )
            seen[obj.name] = i
        return objects

    @model_validator(mode="after")
    def _plugin_names_free(self) -> WardenConfig:
        objects = {o.name for o in self.objects}
        seen: dict[str, int] = {}
        for i, p in enumerate(self.plugins):
            if p.name in objects:
                raise ValueError(f"plugins[{i}].name: {p.name!r} is already an object's name")
            if p.name in seen:
                raise ValueError(f"plugins[{i}].name: duplicate plugin name {p.name!r} "
                                 f"(first at plugins[{seen[p.name]}])")
            seen[p.name] = i
        return self

    @model_validator(mode="after")
    def _shards_need_nats(self) -> WardenConfig:  # scale-out
        if self.shards > 1 and self.nats is None:
            raise ValueError("shards: more than one shard needs nats: {url: nats://host:4222}")
        return self

    @property
    def zone(self) -> ZoneInfo:
        """The facility time zone: ``timezone``, else the machine's."""
        return ZoneInfo(self.timezone or tzlocal.get_localzone_name())

    def object(self, name: str) -> ObjectConfig:
        for obj in self.objects:
            if obj.name == name:
                return obj
        raise KeyError(name)

    def summary(self) -> str:
        modes = {m: sum(o.mode == m for o in self.objects) for m in ("monitor", "scan")}
        return (
            f"{len(self.objects)} objects ({modes['monitor']} monitor, {modes['scan']} scan), "
            f"archive {self.archive.split('://')[0]}, {len(self.exchange)} exchange, "
            f"{len(self.plugins)} plugins, serve {self.serve.host}:{self.serve.port}"
        )


class _NoAliasLoader(yaml.SafeLoader):
    """A safe loader that refuses YAML aliases (and so alias 'bombs') and deep nesting."""

    depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"{self.name}, line {event.start_mark.line + 1}: "
                              "YAML aliases are not allowed")
        if self.depth >= MAX_CONFIG_DEPTH:  # the composer recurses once per level
            line = self.peek_event().start_mark.line + 1
            raise ConfigError(f"{self.name}, line {line}: the config is nested too deeply "
                              f"(more than {MAX_CONFIG_DEPTH} levels)")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def parse_config(text: str, source: str = "<config>") -> WardenConfig:
    """Validate the YAML text of a config file (``source`` names it in YAML errors)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        loader = _NoAliasLoader(text)  # (checks the characters)
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_error(err, source)) from None
    loader.name = source  # marks name the file, not "<unicode string>"
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_error(err, source)) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping of settings")
    try:
        return WardenConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, data)) from None


def load_config(path: str | Path) -> WardenConfig:
    """Read and validate a config file; raise :class:`ConfigError` naming the bad field."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from None
    return parse_config(text, str(path))


def _yaml_error(err: yaml.YAMLError, source: str) -> str:
    """One line: ``not valid YAML: FILE, line L, column C: problem (context at line L)``."""
    if isinstance(err, yaml.reader.ReaderError):
        first = str(err).splitlines()[0]
        return f"not valid YAML: {source}, character {err.position + 1}: {first}"
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is None or problem is None:
        return f"not valid YAML: {source}: {' '.join(str(err).split())}"
    text = f"not valid YAML: {source}, line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, at = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context:
        where = f" at line {at.line + 1}" if at is not None and at.line != mark.line else ""
        text += f" ({context}{where})"
    return text


_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than_equal": "must be <= {le}",
    "missing": "is required",
    "extra_forbidden": "unknown field",
    "literal_error": "must be one of {expected}",
}


def _describe(err: ValidationError, data: dict, most: int = 20) -> str:
    lines = []
    errors = err.errors()
    for e in errors[:most]:
        loc = list(e["loc"])
        path = ""
        for part in loc:
            if isinstance(part, int):
                path += f"[{part}]"
            elif part in ("function-after", "tagged-union") or part.startswith("function-"):
                continue
            else:
                path += f".{part}" if path else str(part)
        if len(loc) >= 2 and loc[0] == "objects" and isinstance(loc[1], int):
            objects = data.get("objects")
            obj = objects[loc[1]] if isinstance(objects, list) else None  # not a !!set
            if isinstance(obj, dict) and isinstance(obj.get("name"), str):
                path = path.replace(f"objects[{loc[1]}]", f"objects[{loc[1]}] ({obj['name']!r})", 1)
        template = _MESSAGES.get(e["type"])
        msg = template.format(**e.get("ctx", {})) if template else e["msg"]
        if e["type"] == "extra_forbidden":
            msg += _nearest(str(loc[-1]), _fields_at(loc[:-1]))
        msg = msg.removeprefix("Value error, ")
        if field := re.match(r"^([a-z_]+): ", msg):  # a model-level check naming its field
            path = f"{path}.{field.group(1)}" if path else field.group(1)
            msg = msg[field.end() :]
        if msg.startswith("objects[") and path == "objects":
            lines.append(msg)
        else:
            lines.append(f"{path}: {msg}" if path else msg)
    if len(errors) > most:  # a giant list of bad items: not a giant message
        lines.append(f"... and {len(errors) - most} more errors")
    return "\n".join(lines)


def _fields_at(loc: list) -> list[str]:
    """The field names of the settings model at ``loc`` (``["objects", 3]``: an object's)."""
    model: type[BaseModel] | None = WardenConfig
    for part in loc:
        if model is None:
            return []
        if isinstance(part, str) and not part.startswith(("function-", "tagged-union")):
            field = model.model_fields.get(part)
            model = _model_in(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def _model_in(annotation) -> type[BaseModel] | None:
    """The settings model inside ``list[X]``, ``X | None``, ``Annotated[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            if found := _model_in(arg):
                return found
    return None


def _nearest(name: str, known: list[str]) -> str:
    """`` (did you mean 'period'?)``, else the known names, else nothing."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known: {', '.join(known)})" if known else ""
