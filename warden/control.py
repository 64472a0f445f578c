"""HTTP control of the running service, mounted on its Tiled server under ``/api/v1/warden``.

``GET /plugins`` lists the plugins and their state; ``POST /plugins/{name}/start`` and
``/stop`` switch one. Every request needs the API key (``Authorization: Apikey <key>`` or
``?api_key=``), except reading the list on a ``--public`` server. Nothing here writes upstream.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from catalog.access import require_key

from .plugins.runner import PluginRunner


def control_router(
    runner: PluginRunner, api_key: str, public: bool = False, discovered: list[str] = ()
) -> APIRouter:
    """The control routes; ``discovered`` plugins not in the config are listed as available."""
    router = APIRouter(prefix="/warden")  # Tiled mounts it under /api/v1

    def authorize(request: Request, write: bool) -> None:
        require_key(request, api_key, public, write)

    @router.get("/plugins")
    def plugins(request: Request) -> list[dict]:
        authorize(request, write=False)
        available = [
            {"name": name, "state": "available", "interval": "-", "runs": 0, "errors": 0,
             "overruns": 0, "last_error": "enable it in the config's plugins"}
            for name in discovered if name not in runner.states
        ]
        return runner.status() + available

    @router.post("/plugins/{name}/{action}")
    def switch(name: str, action: str, request: Request) -> dict:
        authorize(request, write=True)
        if action not in ("start", "stop"):
            raise HTTPException(status_code=404, detail=f"unknown action {action!r}")
        if name in discovered and name not in runner.states:
            raise HTTPException(status_code=404, detail=f"plugin {name!r} is not in the "
                                f"config: add {{name: {name}}} to its plugins and restart")
        if name not in runner.states:
            raise HTTPException(status_code=404, detail=f"unknown plugin {name!r}")
        return runner.enable(name, action == "start")

    return router
