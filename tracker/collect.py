"""Collection endpoints: the snippet, the event beacon and the no-script pixel.

This is the hot path: validate, stamp, hand to the stream, answer. No database
work happens here unless Redis is down.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Request, Response, current_app, request

from tracker.errors import BadEvent
from tracker.netaddr import client_ip, truncate_ip
from tracker.payload import SITE_RE, parse_batch, parse_event
from tracker.sites import SiteInfo
from tracker.stream import encode

bp = Blueprint("collect", __name__)

PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00"
    b"\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
MAX_USER_AGENT = 512
NO_CACHE = "no-store, no-cache, must-revalidate, private, max-age=0"


def _host(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _site(app: Flask, key: str) -> SiteInfo:
    site = app.extensions["sites"].get(key)
    if site is None:
        raise BadEvent(
            f"no site has the key {key!r}; create one with `sites create`", "unknown_site", 403
        )
    return site


def _request_origin(req: Request) -> tuple[str | None, str | None]:
    """Return (origin, host) of the page that sent this request, from Origin or Referer."""
    origin = req.headers.get("Origin")
    if origin and origin != "null":
        return origin, _host(origin)
    return None, _host(req.headers.get("Referer"))


def client_of(app: Flask, req: Request) -> tuple[str, str]:
    """The client's address (believing only trusted proxies) and user agent."""
    headers = req.headers
    ip = client_ip(
        req.remote_addr, headers.get("X-Forwarded-For"), app.extensions["trusted_proxies"]
    )
    return ip, (headers.get("User-Agent") or "")[:MAX_USER_AGENT]


def _stamp(
    app: Flask, req: Request, events: list[dict[str, Any]], site: SiteInfo, visitor: str
) -> list[bytes]:
    """Add what only the server may say: site, visitor, time, address and user agent."""
    now = time.time()
    ip, user_agent = client_of(app, req)
    if site.truncate_ips:
        ip = truncate_ip(ip)
    stamped = []
    for event in events:
        event.update(site=site.id, visitor=visitor, at=now, ip=ip, ua=user_agent)
        stamped.append(encode(event))
    return stamped


@bp.post("/e", provide_automatic_options=False)
def collect() -> Response:
    """Accept one event or a batch from the snippet; answer 204."""
    # The proxies are looked up once: on this path every lookup shows.
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    limit = app.config["MAX_BODY_BYTES"]
    length = req.content_length
    if length is not None and length > limit:
        raise BadEvent(f"the body is larger than {limit} bytes", "too_large", 413)
    # With a Content-Length, exactly that many bytes straight from the server's input, as
    # WSGI allows; werkzeug's guarded stream costs a sixth of this whole view.
    body = req.environ["wsgi.input"].read(length) if length else req.stream.read(limit + 1)
    if len(body) > limit:
        raise BadEvent(f"the body is larger than {limit} bytes", "too_large", 413)
    batch = parse_batch(body, app.config["MAX_BATCH_EVENTS"])
    site = _site(app, batch.site_key)
    origin, host = _request_origin(req)
    if not site.allows_host(host):
        raise BadEvent(
            f"requests from {host or 'an unknown origin'} are not allowed for this site; "
            "add the domain to the site",
            "origin_not_allowed",
            403,
        )
    response = Response(status=204)
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    if batch.dnt and site.respect_dnt:
        return response
    app.extensions["event_sink"].append(_stamp(app, req, batch.events, site, batch.visitor))
    return response


@bp.route("/e", methods=["OPTIONS"])
def preflight() -> Response:
    """Answer a CORS preflight, for clients that post `application/json`."""
    response = Response(status=204)
    response.headers.update(
        {
            "Access-Control-Allow-Origin": request.headers.get("Origin", "*"),
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": "86400",
            "Vary": "Origin",
        }
    )
    return response


def _pixel_visitor(app: Flask, site: SiteInfo, ip: str, user_agent: str) -> str:
    """A visitor id for browsers without JavaScript: a daily hash, never stored client-side."""
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    secret = app.config["SECRET_KEY"]
    material = f"{secret}|{site.id}|{ip}|{user_agent}|{day}".encode()
    return "px-" + hashlib.sha256(material).hexdigest()[:32]


@bp.get("/p.gif")
def pixel() -> Response:
    """Record a pageview for a browser without JavaScript and answer a 1x1 GIF."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    key = req.args.get("k", "")
    if not SITE_RE.fullmatch(key):
        raise BadEvent("'k' must be the site key from `sites create`", "bad_site")
    site = _site(app, key)
    referer = req.headers.get("Referer")
    url = req.args.get("u") or referer
    if not url:
        raise BadEvent("the pixel needs the page URL: a Referer header or a 'u' parameter")
    event = parse_event(
        {"type": "pageview", "url": url, "referrer": req.args.get("r"), "title": req.args.get("t")}
    )
    if not site.allows_host(_host(referer) or _host(url)):
        raise BadEvent("this page's domain is not allowed for this site", "origin_not_allowed", 403)
    ip, user_agent = client_of(app, req)
    visitor = _pixel_visitor(app, site, ip, user_agent)
    app.extensions["event_sink"].append(_stamp(app, req, [event], site, visitor))
    response = Response(PIXEL, mimetype="image/gif")
    response.headers["Cache-Control"] = NO_CACHE
    response.headers["Pragma"] = "no-cache"
    response.headers["Expires"] = "0"
    return response


@bp.get("/s.js")
def snippet() -> Response:
    """Serve the tracking snippet: strong ETag, cacheable, gzipped when accepted."""
    asset = current_app.extensions["snippet"]
    response = Response(mimetype="application/javascript")
    response.set_etag(asset.etag)
    response.headers["Cache-Control"] = "public, max-age=3600, stale-while-revalidate=86400"
    response.headers["Vary"] = "Accept-Encoding"
    if request.if_none_match.contains(asset.etag):
        response.status_code = 304
        return response
    if "gzip" in (request.headers.get("Accept-Encoding") or ""):
        response.set_data(asset.gzipped)
        response.headers["Content-Encoding"] = "gzip"
    else:
        response.set_data(asset.plain)
    return response
