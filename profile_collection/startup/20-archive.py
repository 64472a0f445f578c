# Beamline Warden IPython profile, part 2: the archive.
#
#   runs                      the catalog of day runs (stock Tiled / bluesky-tiled-plugins client)
#   archive                   the query helper (catalog.query.Archive)
#   objects(), days()         what is archived
#   latest("yi2-wcm3")        newest value of every attribute, and whether it is connected
#   day("yi2-wcm3", "2001-11-06")            a day's readings as a DataFrame
#   plot_day("yi2-wcm3", "2001-11-06", ["wcmBeam"], path="wcm.png")   a matplotlib Figure
#   connect(url, api_key)     (re)connect, e.g. after the server was restarted

from catalog.query import Archive


def connect(url: str | None = None, api_key: str | None = None):
    """Connect ``archive`` and ``runs`` to a warden server; return the ``Archive``."""
    global archive, runs
    archive = Archive.from_uri(url or WARDEN_SERVER,  # noqa: F821 - from 00-base.py
                               api_key=api_key or WARDEN_API_KEY)  # noqa: F821
    runs = archive.root["archive"]
    return archive


def _archive() -> Archive:
    return archive if archive is not None else connect()


def objects() -> list[str]:
    """Names of the objects the server knows."""
    return _archive().objects()


def days() -> list[str]:
    """Archive days, oldest first."""
    return _archive().days()


def latest(obj: str) -> dict:
    """Newest value and upstream timestamp of each attribute of ``obj``."""
    return _archive().latest(obj)


def day(obj: str, date):
    """Every reading of ``obj`` on archive day ``date`` (``YYYY-MM-DD``), as a DataFrame."""
    return _archive().day(obj, date)


def plot_day(obj: str, date, attrs=None, path=None, **options):
    """Plot ``obj`` on ``date`` (see ``catalog.plot.plot_day``); save it too if ``path``."""
    import matplotlib.pyplot as plt

    from catalog.plot import plot_day as _plot_day

    options.setdefault("figsize", (10, 5))
    fig = _plot_day(_archive(), obj, date, attrs, fig=plt.figure(**options))
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


archive = runs = None
try:
    connect()
    print(f"warden profile: archive at {WARDEN_SERVER}: "  # noqa: F821
          f"{len(archive.days())} days, {len(archive.objects())} objects")
except Exception as _err:  # noqa: BLE001 - the session must start without a server
    print(f"warden profile: no archive yet ({_err}); "
          "call connect() when it is up")
