"""Security headers on every response: what a browser may load, run and frame.

- Every response: `X-Content-Type-Options: nosniff` (a JSON answer or an uploaded text is
  never run as script or style) and `Referrer-Policy: no-referrer` (nothing in Studyhall
  needs a referrer; links to a citation's source leak no page address).
- HTML pages: a Content-Security-Policy that allows scripts, styles, images, fonts and
  connections (fetch, websocket) from this origin only, with nothing inline (the pages
  have no inline scripts, styles or handlers; scripts style elements through the CSSOM,
  which CSP allows). `frame-ancestors` says who may frame a page: the origins of
  `STUDYHALL_CORS_ORIGINS` (the setting that lets the widget work on other sites: `*` is
  any origin, a list is those origins plus this one), except the agent console, which
  only this origin may frame (agents act on tickets there: no clickjacking). Not
  X-Frame-Options: it cannot list origins (and with frame-ancestors browsers ignore it).
- API answers: `default-src 'none'; frame-ancestors 'none'`: JSON is never a document.
"""

from __future__ import annotations

from aiohttp import web

from server.keys import SETTINGS

PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'"
)
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
SELF_FRAMED_ONLY = frozenset({"/static/console.html"})


def frame_ancestors(cors_origins: str) -> str:
    """The frame-ancestors source list for embeddable pages, from STUDYHALL_CORS_ORIGINS."""
    if cors_origins.strip() == "*":
        return "*"
    origins = [o.strip().rstrip("/") for o in cors_origins.split(",") if o.strip()]
    # An origin is scheme://host[:port]; anything else (a quote, a semicolon) would break
    # out of the directive, so it is left out.
    safe = [o for o in origins if "://" in o and not any(ch in o for ch in " ;,'\"")]
    return " ".join(["'self'", *safe])


def page_policy(path: str, cors_origins: str) -> str:
    ancestors = "'self'" if path in SELF_FRAMED_ONLY else frame_ancestors(cors_origins)
    return f"{PAGE_POLICY}; frame-ancestors {ancestors}"


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    if response.content_type == "text/html":
        headers["Content-Security-Policy"] = page_policy(request.path, request.app[SETTINGS].http.cors_origins)
    elif request.path.startswith("/api/"):
        headers.setdefault("Content-Security-Policy", API_POLICY)


def install(app: web.Application) -> None:
    app.on_response_prepare.append(add_security_headers)
