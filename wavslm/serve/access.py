"""Which requests the server answers: its own pages and clients, never pages of another origin.

A server on 127.0.0.1 is reachable from every web page the user opens: a page of any site may open a
WebSocket to it or POST to it (browsers send such requests; only the answer is hidden from the page),
and a DNS-rebinding site may even read answers under its own name. So every request and WebSocket is
checked: its `Host` must be one the server answers (`Access.hosts`), a browser's `Origin`, when sent,
must be the server itself, and with a token set, API requests must carry it. Clients that are not
browsers send no `Origin` and pass that check.
"""

import secrets
from collections.abc import Mapping
from urllib.parse import urlsplit

from .limits import Access

# Routes that serve the page itself (public code, no model behind them): no token needed to load it.
PAGE_ROUTES = ("/", "/app.js", "/recorder.js", "/style.css")


def refusal(path: str, headers: Mapping[str, str], query: Mapping[str, str], access: Access) -> tuple[int, str] | None:
    """`(status, one sentence)` when the request must be refused, else None."""
    host = headers.get("host", "")
    if access.hosts is not None and host.lower() not in access.hosts:
        return 403, f"this server answers requests for {', '.join(access.hosts)} only, not for '{host}'"
    origin = headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
            return 403, f"requests from pages of another origin ('{origin}') are refused"
    if access.token is not None and path not in PAGE_ROUTES:
        given = query.get("token") or _bearer(headers.get("authorization", ""))
        if not secrets.compare_digest(given.encode(), access.token.encode()):
            return 401, "this server needs its token: add ?token=... or an Authorization: Bearer header"
    return None


def _bearer(value: str) -> str:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
