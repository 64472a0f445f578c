"""The Channel Access repeater that libca expects to find running.

libca learns that an IOC has come back from its beacons, which reach clients only through a
repeater (``caRepeater``, UDP ``EPICS_CA_REPEATER_PORT``). pyepics does not bundle
``caRepeater``; without one, channels of a restarted IOC reconnect only when libca's search
back-off next tries them (26 s after a 30 s outage, measured). caproto's repeater does the
same job: :func:`ensure_repeater` starts it, detached, unless one already runs, as libca
would start ``caRepeater``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys


def repeater_host() -> str:
    """``127.0.0.1`` when Channel Access is confined to loopback servers, else all
    interfaces (beacons of remote IOCs arrive on the subnet's broadcast address)."""
    if os.environ.get("EPICS_CA_AUTO_ADDR_LIST", "YES").upper() != "NO":
        return "0.0.0.0"  # noqa: S104 - as caRepeater binds
    hosts = [a.rsplit(":", 1)[0] for a in os.environ.get("EPICS_CA_ADDR_LIST", "").split()]
    try:
        loopback = bool(hosts) and all(ipaddress.ip_address(h).is_loopback for h in hosts)
    except ValueError:  # a host name
        loopback = False
    return "127.0.0.1" if loopback else "0.0.0.0"  # noqa: S104


def repeater_port() -> int:
    return int(os.environ.get("EPICS_CA_REPEATER_PORT", "5065"))


def ensure_repeater() -> subprocess.Popen | None:
    """Start a CA repeater unless its port is taken (one is running); return the process."""
    host, port = repeater_host(), repeater_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return None  # a repeater (ours, caRepeater or caproto's) has the port
    code = f"from caproto.sync.repeater import run; run({host!r})"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, cwd="/",  # outlives the warden, as caRepeater does
    )
