"""The API key check of the warden's own routes: plugin control, the retrieval API, the page.

As Tiled checks its single-user key: a key is read from ``Authorization: Apikey <key>`` or
``?api_key=``; a key given must be the right one, even on a public server; without a key, a
public server allows reads and nothing else.
"""

from __future__ import annotations

import secrets

from fastapi import HTTPException
from starlette.requests import Request


def given_key(request: Request) -> str:
    """The key a request carries (``""`` for none)."""
    header = request.headers.get("authorization", "")
    given = header.removeprefix("Apikey ").strip() if header.startswith("Apikey ") else ""
    return given or request.query_params.get("api_key", "")


def key_allows(request: Request, api_key: str, public: bool, write: bool = False) -> bool:
    """Whether ``request`` may read (or ``write``) on a server keyed ``api_key``."""
    given = given_key(request)
    if given:
        return secrets.compare_digest(given.encode(), api_key.encode())
    return public and not write


def require_key(request: Request, api_key: str, public: bool, write: bool = False) -> None:
    """Raise a 401 unless :func:`key_allows` the request."""
    if not key_allows(request, api_key, public, write):
        raise HTTPException(status_code=401, detail="an API key is required")
