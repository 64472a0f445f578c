# Beamline Warden IPython profile, part 0: settings, the RunEngine.
#
# Settings come from the environment (see ../README.md):
#   WARDEN_CONFIG   the warden's config file (default examples/rhic.yaml in the cwd or the repo)
#   WARDEN_SERVER   its Tiled server (default http://127.0.0.1:8000)
#   WARDEN_API_KEY  the server's API key (not needed when it serves reads publicly)
# Channel Access is configured by the usual EPICS_CA_* variables, which must be set before
# IPython starts: ophyd (imported in 10-devices.py) starts pyepics when it is imported, and
# this profile never sets or changes them.

import os
import sys
from pathlib import Path

from bluesky import RunEngine

WARDEN_REPO = Path(__file__).resolve().parent.parent.parent
if str(WARDEN_REPO) not in sys.path and (WARDEN_REPO / "warden").is_dir():
    sys.path.append(str(WARDEN_REPO))  # a checkout that is not pip-installed


def _warden_config_path() -> Path:
    """``WARDEN_CONFIG``, else ``examples/rhic.yaml`` in the working directory or the repo."""
    if os.environ.get("WARDEN_CONFIG"):
        return Path(os.environ["WARDEN_CONFIG"]).expanduser()
    for base in (Path.cwd(), WARDEN_REPO):
        if (base / "examples" / "rhic.yaml").is_file():
            return base / "examples" / "rhic.yaml"
    return Path("examples") / "rhic.yaml"


WARDEN_CONFIG = _warden_config_path()
WARDEN_SERVER = os.environ.get("WARDEN_SERVER") or "http://127.0.0.1:8000"
WARDEN_API_KEY = os.environ.get("WARDEN_API_KEY") or None

RE = RunEngine({})
