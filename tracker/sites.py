"""Sites: creating them, and the in-memory directory collection checks keys against.

Collection must not query the database per event, so each process keeps a copy
of the (small) sites table and reloads it every `SITE_CACHE_SECONDS`, or at once
(at most once a second) when an unknown key shows up, so a new site works
within a second of being created.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from tracker.db import db
from tracker.errors import StorageUnavailable
from tracker.models import Site

MISS_RELOAD_SECONDS = 1.0


@dataclass(frozen=True)
class SiteInfo:
    """What collection needs to know of a site."""

    id: int
    key: str
    domains: tuple[str, ...]
    respect_dnt: bool
    # Store only the network part of visitors' addresses (the site's privacy setting).
    truncate_ips: bool = True

    def allows_host(self, host: str | None) -> bool:
        """Return True when `host` is one of the site's domains or a subdomain of one."""
        if not host:
            return False
        host = host.lower().rstrip(".")
        return any(host == d or host.endswith("." + d) for d in self.domains)


def normalise_domain(domain: str) -> str:
    """Return the bare host in what an operator typed: "https://Example.com/" → example.com."""
    domain = domain.strip().lower()
    if "://" in domain:
        domain = domain.split("://", 1)[1]
    domain = domain.split("/", 1)[0].split(":", 1)[0].rstrip(".")
    if not domain or any(c.isspace() for c in domain):
        raise ValueError(f"{domain!r} is not a domain name; use e.g. example.com")
    return domain


def create_site(name: str, domains: Iterable[str], respect_dnt: bool = False) -> Site:
    """Create a site with a fresh public key; the caller commits."""
    site = Site(
        key="cl_" + secrets.token_urlsafe(12),
        name=name,
        domains=sorted({normalise_domain(d) for d in domains}),
        respect_dnt=respect_dnt,
    )
    db.session.add(site)
    return site


def load_sites() -> dict[str, SiteInfo]:
    """Read every site from the database."""
    rows = db.session.execute(
        select(Site.id, Site.key, Site.domains, Site.respect_dnt, Site.truncate_ips)
    ).all()
    db.session.remove()
    return {
        key: SiteInfo(id_, key, tuple(domains or ()), bool(dnt), truncate is not False)
        for id_, key, domains, dnt, truncate in rows
    }


class SiteDirectory:
    """A per-process copy of the sites table, refreshed on a timer or on a miss."""

    def __init__(self, loader: Callable[[], dict[str, SiteInfo]], ttl: float) -> None:
        self._loader = loader
        self._ttl = ttl
        self._sites: dict[str, SiteInfo] = {}
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def _reload(self, min_age: float) -> None:
        with self._lock:
            if time.monotonic() - self._loaded_at < min_age:
                return
            try:
                self._sites = self._loader()
            except SQLAlchemyError as e:
                # A database outage must not stop collection: keep the last copy
                # and try again in a second; with no copy at all, say so.
                db.session.remove()
                if not self._sites:
                    raise StorageUnavailable("the sites table cannot be read") from e
                self._loaded_at = time.monotonic() - self._ttl + MISS_RELOAD_SECONDS
                return
            self._loaded_at = time.monotonic()

    def get(self, key: str) -> SiteInfo | None:
        """Return the site for `key`, or None when no such site exists."""
        age = time.monotonic() - self._loaded_at
        if age >= self._ttl:
            self._reload(self._ttl)
        site = self._sites.get(key)
        if site is None and time.monotonic() - self._loaded_at >= MISS_RELOAD_SECONDS:
            self._reload(MISS_RELOAD_SECONDS)
            site = self._sites.get(key)
        return site

    def for_host(self, host: str | None) -> SiteInfo | None:
        """Return a site whose domains include `host` (or a parent domain of it), or None."""
        if time.monotonic() - self._loaded_at >= self._ttl:
            self._reload(self._ttl)
        return next((site for site in self._sites.values() if site.allows_host(host)), None)
