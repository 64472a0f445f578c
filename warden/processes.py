"""Starting the service's child processes (its Tiled server and its archive writer), and
the garbage collector's settings of every long-running warden process (:func:`tune_gc`).

Children are forked from a server process that has imported them once (``forkserver``), so a
second start costs a fraction of a second, not the seconds of Tiled's imports. A child talks
to the service over pipes, and ends when its end of a pipe closes (the service gone, even on
``kill -9``).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import sys
import types
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

CHILD_MODULES = ["warden.server_process", "warden.writer_process"]  # imported once, shared


@contextlib.contextmanager
def caller_script_hidden() -> Iterator[None]:
    """Start a child without the caller's ``__main__``: multiprocessing would run the script
    that started the service again in the child (and start a service there too, unless the
    script guards itself with ``if __name__ == "__main__"``). The child needs nothing of it."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def child_context() -> BaseContext:
    """The context of the service's children: one forkserver that imported them."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(CHILD_MODULES)
    return ctx


def start_child(target: Callable[..., None], args: tuple, name: str, answers: Connection,
                child_ends: tuple[Connection, ...], what: str, timeout: float
                ) -> tuple[BaseProcess, Any]:
    """Start ``target(*args)`` in a child (``child_ends``: its ends of the pipes, closed here
    once it has them); return the process and the first thing it sends on ``answers``. A
    child that sends ``("error", message)``, ends or stays silent ``timeout`` seconds raises
    RuntimeError naming ``what``."""
    process = child_context().Process(target=target, args=args, name=name, daemon=True)
    with caller_script_hidden():
        process.start()
    for end in child_ends:
        end.close()
    try:
        if not answers.poll(timeout):
            raise RuntimeError(f"it did not start in {timeout:.0f} s")
        kind, value = answers.recv()
    except (EOFError, RuntimeError) as err:
        process.kill()
        raise RuntimeError(f"{what} failed to start: {str(err) or 'it exited'}") from None
    if kind == "error":
        process.join(timeout=10)
        raise RuntimeError(value)
    return process, value


YOUNG_GC = 50_000  # allocations between two collections of the young generation (Python: 700)


def tune_gc() -> None:
    """Set the garbage collector for a long-running warden process, once it has started:
    what it holds by then (imports, devices, the archive's nodes) is moved out of the
    collector's sight (``gc.freeze``), and the young generation is collected every
    ``YOUNG_GC`` allocations. Documents are acyclic, freed as they go out of use; with
    Python's settings a writer of 10,000 streams spent half its CPU time in collections
    that found nothing, the oldest generation's taking 0.5 s each (benchmarks/README.md).
    """
    gc.freeze()
    gc.set_threshold(YOUNG_GC, 20, 20)
