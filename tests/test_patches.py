"""The workarounds of plans/patches.py: they answer as the libraries do, and only while the
monitoring plan runs."""

import contextlib
import sys
import threading
import time
import typing

import event_model
import pytest
from bluesky import RunEngine

from plans.buffer import ConnectionLog, ObjectBuffer
from plans.monitor import monitor_objects
from plans.patches import (
    cached_protocol_checks,
    descriptors_validated_once,
    light_page_validation,
)
from warden_devices.build import build_device

PAGE = event_model.DocumentNames.event_page


def patched_now() -> tuple[bool, bool]:
    """Whether the page validator and typing's protocol attributes are patched now."""
    validator = event_model.schema_validators[PAGE]
    return type(validator).__name__ == "_PageShapeValidator", hasattr(
        typing._get_protocol_attrs, "cache_info")


def test_protocol_checks_answer_the_same_with_their_attributes_cached():
    """The RunEngine's protocol checks still tell a buffer from an object that lacks what a
    protocol asks."""
    from bluesky.protocols import Collectable, EventPageCollectable, Readable, WritesStreamAssets

    device = build_device("wcm", "WcmControl", "wcm:", "sim")
    buffer = ObjectBuffer(device, True, ConnectionLog(time.time))
    protocols = (Collectable, EventPageCollectable, Readable, WritesStreamAssets)
    objects = (buffer, device, object())
    plain = [isinstance(o, p) for o in objects for p in protocols]
    original = typing._get_protocol_attrs
    with cached_protocol_checks():
        cached = [isinstance(o, p) for o in objects for p in protocols]
    assert cached == plain
    assert plain[:4] == [True, True, False, False]  # a buffer collects pages, has no assets
    assert plain[6] and not any(plain[8:])  # the device reads; a plain object is nothing
    assert typing._get_protocol_attrs is original
    device.destroy()


def test_light_page_validation_still_rejects_pages_whose_columns_do_not_match():
    run = event_model.compose_run()
    stream = run.compose_descriptor(
        name="wcm", data_keys={"x": {"dtype": "number", "shape": [], "source": "s"}})
    good = stream.compose_event_page(data={"x": [1.0, 2.0]}, timestamps={"x": [1.0, 2.0]})
    short = {**good, "data": {"x": [1.0]}}
    other = {**good, "timestamps": {"y": [1.0, 2.0]}}
    with light_page_validation():
        event_model.schema_validators[PAGE].validate(good)
        for bad in (short, other):
            with pytest.raises(event_model.EventModelValidationError):
                event_model.schema_validators[PAGE].validate(bad)
    assert patched_now() == (False, False)
    with pytest.raises(Exception, match="is not of type"):  # jsonschema's own check again
        event_model.schema_validators[PAGE].validate({**good, "seq_num": "1"})


def test_a_descriptor_is_validated_in_full_once_per_content_and_bad_ones_still_fail():
    keys = {"x": {"dtype": "number", "shape": [], "source": "s"}}
    full = event_model.schema_validators[event_model.DocumentNames.descriptor]
    calls = []

    class Counting:
        def validate(self, doc):
            calls.append(doc["uid"])
            full.validate(doc)

    event_model.schema_validators[event_model.DocumentNames.descriptor] = Counting()
    try:
        with descriptors_validated_once():
            days = [event_model.compose_run() for _ in range(3)]  # the same stream each day
            uids = [day.compose_descriptor(name="wcm", data_keys=keys).descriptor_doc["uid"]
                    for day in days]
            assert calls == uids[:1]
            other = days[0].compose_descriptor(name="dcct", data_keys=keys)  # another content
            assert calls == [uids[0], other.descriptor_doc["uid"]]
            validator = event_model.schema_validators[event_model.DocumentNames.descriptor]
            seen = days[1].compose_descriptor(name="wcm", data_keys=keys).descriptor_doc
            for bad in ({**seen, "uid": 7}, {**seen, "time": "noon"},
                        {**seen, "data_keys": {"x": {"dtype": "number"}}}):
                with pytest.raises(Exception, match="is not of type|is a required property"):
                    validator.validate(bad)
    finally:
        event_model.schema_validators[event_model.DocumentNames.descriptor] = full


@pytest.mark.parametrize("fail", [False, True], ids=["stopped", "failed"])
def test_the_plan_patches_only_while_it_runs(fail):
    """Patched from the plan's first step to its end, whether it stops or fails; making the
    plan patches nothing."""
    device = build_device("wcm", "WcmControl", "wcm:", "sim")
    connections = ConnectionLog(time.time)
    stop = threading.Event()
    seen: list[tuple[bool, bool]] = []

    def on_document(name, doc):
        if name == "event_page":  # the connection stream's first page
            seen.append(patched_now())
            stop.set()
            if fail:
                raise RuntimeError("a subscriber fails")

    RE = RunEngine({}, context_managers=[])
    RE.subscribe(on_document)
    plan = monitor_objects([ObjectBuffer(device, True, connections)], connections, {},
                           flush_interval=0.05, stop=stop)
    assert patched_now() == (False, False)
    try:
        if fail:
            with pytest.raises(RuntimeError, match="a subscriber fails"):
                RE(plan)
        else:
            RE(plan)
    finally:
        device.destroy()
    assert seen[0] == (True, sys.version_info < (3, 12))
    assert patched_now() == (False, False)


def test_two_plans_share_the_patches_and_the_last_to_end_removes_them():
    """Two monitoring plans in one process (each in a thread of its own) may end in either
    order: the libraries are patched while either runs and as they were once both ended."""
    validators = dict(event_model.schema_validators)
    protocol_attrs = typing._get_protocol_attrs
    first, second = contextlib.ExitStack(), contextlib.ExitStack()
    for plan in (first, second):
        for patch in (light_page_validation, descriptors_validated_once, cached_protocol_checks):
            plan.enter_context(patch())
    assert patched_now() == (True, sys.version_info < (3, 12))
    first.close()  # the plan that started first ends first
    assert patched_now() == (True, sys.version_info < (3, 12))
    second.close()
    assert patched_now() == (False, False)
    assert dict(event_model.schema_validators) == validators
    assert typing._get_protocol_attrs is protocol_attrs
