"""Workarounds for upstream costs, each active only while the monitoring plan runs.

The monitoring plan (:func:`plans.monitor.monitor_objects`) enters the context managers
around its runs; everything is put back when the plan ends, fails or is aborted, so other plans
of the same RunEngine and the rest of the process see the libraries as they are. Several
monitoring plans in one process (in threads of their own) share each patch: the first to start
puts it in, the last to end takes it out, in whatever order they end. Each patch goes once its
upstream issue is fixed in the versions we support.

Event-page validation (:func:`light_page_validation`)
    bluesky composes every collected event page with event-model's ``ComposeEventPage``,
    which validates the page against the JSON schema (bluesky/bluesky#1579, with no way to
    opt out; bluesky/bluesky#57 left making validation optional for later). That is about
    0.5 ms a page, 80 % of the RunEngine's time when a thousand objects flush twice a
    second. The pages come from our own buffers: checking their shape is enough, and
    event-model still checks the keys against the descriptor.

Descriptor validation (:func:`descriptors_validated_once`)
    Each run's descriptors are validated against the JSON schema as they are composed, about
    2.6 ms each: a new day of 10,000 objects spends 26 s of the RunEngine's time on them,
    while the objects' first readings of the day wait. The descriptors of a day are those
    of the day before but for their uid, time and run: each is validated in full once per
    content (a 16-byte digest kept), and after that its uid, time and run only.

Runtime protocol checks (:func:`cached_protocol_checks`)
    The RunEngine checks every object it collects against bluesky's runtime-checkable
    protocols, five to eight ``isinstance`` calls a ``collect``. Python 3.11 walks each
    protocol's class dictionaries again on every call (python/cpython#74690, fixed in 3.12
    by python/cpython#103160): 10 % of the service's interpreter time at a thousand objects.
    On 3.11 the walk is cached for the run; on 3.12 and later nothing is patched.

Not a patch: :mod:`warden_devices.reconnect` re-creates the channels of a restarted IOC
through pyepics' public channel functions, because libca finds them only on its slow
beacon-anomaly search timer and pyepics has no call that gives a PV a fresh channel
(pyepics/pyepics#68).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import sys
import threading
from collections.abc import Callable, Iterator

import event_model
import orjson


class _PageShapeValidator:
    """What event-model's JSON schema checks of an event page's columns, at a fraction of
    its cost."""

    def validate(self, doc: dict) -> None:
        n = len(doc["seq_num"])
        columns = [doc["time"], doc["uid"], *doc["data"].values(), *doc["timestamps"].values()]
        if any(len(column) != n for column in columns) or set(doc["data"]) != set(
            doc["timestamps"]
        ):
            raise event_model.EventModelValidationError("event page columns do not match")


_lock = threading.Lock()
_users: dict[str, int] = {}  # patch -> the plans inside it now
_saved: dict[str, object] = {}  # patch -> what it replaced


@contextlib.contextmanager
def _shared(patch: str, get: Callable[[], object], put: Callable[[object], None],
            make: Callable[[object], object]) -> Iterator[None]:
    """``put(make(get()))`` while any plan is inside; the last one out puts the original back."""
    with _lock:
        if not _users.get(patch):
            _saved[patch] = get()
            put(make(_saved[patch]))
        _users[patch] = _users.get(patch, 0) + 1
    try:
        yield
    finally:
        with _lock:
            _users[patch] -= 1
            if not _users[patch]:
                put(_saved.pop(patch))


def _validator(name: event_model.DocumentNames,
               make: Callable[[object], object]) -> contextlib.AbstractContextManager[None]:
    """event-model's validator of the documents ``name`` is ``make(its own)`` meanwhile."""
    validators = event_model.schema_validators
    return _shared(f"validator {name.value}", lambda: validators[name],
                   lambda validator: validators.__setitem__(name, validator), make)


def light_page_validation() -> contextlib.AbstractContextManager[None]:
    """Check event pages' shape instead of validating each against the JSON schema."""
    return _validator(event_model.DocumentNames.event_page, lambda _: _PageShapeValidator())


class _DescriptorOnceValidator:
    """Validates a descriptor in full the first time its content (all but uid, time and
    run) is seen."""

    VARYING = ("uid", "time", "run_start")

    def __init__(self, full):
        self.full = full
        self.seen: set[bytes] = set()

    def validate(self, doc: dict) -> None:
        try:
            content = orjson.dumps({k: v for k, v in doc.items() if k not in self.VARYING},
                                   option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:  # (a value orjson cannot write: validated each time)
            self.full.validate(doc)
            return
        digest = hashlib.blake2b(content, digest_size=16).digest()
        if digest in self.seen and isinstance(doc.get("uid"), str) and isinstance(
                doc.get("run_start"), str) and isinstance(doc.get("time"), int | float):
            return
        self.full.validate(doc)
        self.seen.add(digest)


def descriptors_validated_once() -> contextlib.AbstractContextManager[None]:
    """Validate each descriptor's content against the JSON schema once (see above)."""
    return _validator(event_model.DocumentNames.descriptor, _DescriptorOnceValidator)


def cached_protocol_checks() -> contextlib.AbstractContextManager[None]:
    """Remember the attributes of each ``typing.Protocol`` class (Python < 3.12)."""
    if sys.version_info >= (3, 12):
        return contextlib.nullcontext()
    import typing

    return _shared("typing protocol attributes", lambda: typing._get_protocol_attrs,
                   lambda walk: setattr(typing, "_get_protocol_attrs", walk), functools.cache)

