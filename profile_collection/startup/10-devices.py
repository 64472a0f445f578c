# Beamline Warden IPython profile, part 1: every configured object as an Ophyd device.
#
# `yi2_wcm3` is the device of object "yi2-wcm3" (names made Python-safe); `devices` maps
# every object name to its device, `warden_config` is the validated config. EPICS devices
# connect in the background; `yi2_wcm3.wait_for_connection()` waits for one.

import keyword
import re

from warden.config import ConfigError, load_config
from warden_devices.build import build_device


def python_name(name: str) -> str:
    """A Python identifier for an object name: ``yi2-wcm3`` -> ``yi2_wcm3``."""
    safe = re.sub(r"\W", "_", name)
    if safe[:1].isdigit() or keyword.iskeyword(safe):
        safe = "_" + safe
    return safe


_PROFILE_NAMES = {"RE", "latest", "day", "days", "plot_day", "objects", "archive", "runs",
                  "devices", "monitor_plan", "connect", "sim"}

devices = {}
try:
    warden_config = load_config(WARDEN_CONFIG)  # noqa: F821 - from 00-base.py
except ConfigError as _err:
    warden_config = None
    print(f"warden profile: no devices: {_err}")
else:
    for _obj in warden_config.objects:
        devices[_obj.name] = build_device(
            _obj.name, _obj.type, _obj.pv_prefix, _obj.source, _obj.attribute_suffixes
        )
        _var = python_name(_obj.name)
        if _var in _PROFILE_NAMES or _var in globals():
            _var += "_obj"
        globals()[_var] = devices[_obj.name]
    print(f"warden profile: {len(devices)} devices from {WARDEN_CONFIG}: "  # noqa: F821
          f"{', '.join(python_name(n) for n in devices)}")
