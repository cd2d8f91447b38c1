"""Sites in the admin: the tag to paste, allowed domains, privacy settings, time zone, deleting."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from zoneinfo import available_timezones

from flask import Response, current_app, redirect, render_template, request, url_for
from sqlalchemy import select

from tracker.admin import bp
from tracker.admin.configure import row_or_404
from tracker.admin.deleting import delete_page
from tracker.auth import roles
from tracker.db import db
from tracker.models import Site
from tracker.sites import create_site, normalise_domain

MAX_DOMAINS = 50
"""Domains one site may list; more is a paste gone wrong."""


@dataclass
class SiteForm:
    """What the site form says, checked; `errors` maps a field to what is wrong with it."""

    name: str = ""
    domains: list[str] = field(default_factory=list)
    domains_text: str = ""
    respect_dnt: bool = False
    truncate_ips: bool = True
    timezone: str = "UTC"
    errors: dict[str, str] = field(default_factory=dict)


def read_site_form(form: dict[str, str]) -> SiteForm:
    """Check the posted site fields: a name, one or more domains, a known IANA time zone."""
    checked = SiteForm(
        name=(form.get("name") or "").strip(),
        domains_text=(form.get("domains") or "").strip(),
        respect_dnt=bool(form.get("respect_dnt")),
        truncate_ips=bool(form.get("truncate_ips")),
        timezone=(form.get("timezone") or "").strip(),
    )
    if not checked.name:
        checked.errors["name"] = "give the site a name (it is shown in reports)"
    elif len(checked.name) > 200:
        checked.errors["name"] = "at most 200 characters"
    typed = [d for d in re.split(r"[\s,]+", checked.domains_text) if d]
    try:
        checked.domains = sorted({normalise_domain(d) for d in typed})
    except ValueError as e:
        checked.errors["domains"] = str(e)
    if not typed:
        checked.errors["domains"] = "list the domains allowed to send events, e.g. example.com"
    elif len(checked.domains) > MAX_DOMAINS:
        checked.errors["domains"] = f"at most {MAX_DOMAINS} domains"
    checked.errors.update(_timezone_error(checked.timezone))
    return checked


@cache
def time_zones() -> frozenset[str]:
    """The IANA time zone names this machine knows (the tzdata package at least)."""
    return frozenset(available_timezones())


def _timezone_error(name: str) -> dict[str, str]:
    if not name:
        return {"timezone": "give an IANA time zone such as Europe/Berlin, or UTC"}
    if name not in time_zones():
        return {"timezone": f"{name!r} is not an IANA time zone name such as Europe/Berlin"}
    return {}


def paste_tags(site: Site) -> tuple[str, str]:
    """The script tag and the <noscript> pixel a site pastes into every page."""
    from tracker.cli import script_tag

    base = current_app.config["BASE_URL"].rstrip("/")
    pixel = f'<noscript><img src="{base}/p.gif?k={site.key}" alt=""></noscript>'
    return script_tag(base, site), pixel


@bp.get("/sites")
@roles("admin")
def sites_list() -> str:
    """The sites, each with the tags to paste."""
    sites = db.session.scalars(select(Site).order_by(Site.id)).all()
    return render_template(
        "admin/config/sites.html", sites=[(site, *paste_tags(site)) for site in sites]
    )


@bp.route("/sites/new", methods=["GET", "POST"])
@roles("admin")
def site_new() -> Response | str:
    """Create a site; its key and tags show on the next page."""
    if request.method == "GET":
        return render_template("admin/config/site.html", site=None, form=SiteForm())
    form = read_site_form(request.form)
    if form.errors:
        return Response(render_template("admin/config/site.html", site=None, form=form), 400)
    site = create_site(form.name, form.domains, form.respect_dnt)
    site.timezone, site.truncate_ips = form.timezone, form.truncate_ips
    db.session.commit()
    return redirect(url_for("admin.site_edit", site_id=site.id, saved=1))


@bp.route("/sites/<int:site_id>", methods=["GET", "POST"])
@roles("admin")
def site_edit(site_id: int) -> Response | str:
    """A site's tags to paste, and its name, domains, privacy settings and time zone."""
    site = row_or_404(Site, site_id)
    script, pixel = paste_tags(site)
    if request.method == "GET":
        form = SiteForm(
            name=site.name,
            domains_text="\n".join(site.domains or []),
            respect_dnt=site.respect_dnt,
            truncate_ips=site.truncate_ips,
            timezone=site.timezone,
        )
        return render_template(
            "admin/config/site.html", site=site, form=form, script=script, pixel=pixel
        )
    form = read_site_form(request.form)
    if form.errors:
        page = render_template(
            "admin/config/site.html", site=site, form=form, script=script, pixel=pixel
        )
        return Response(page, 400)
    site.name, site.domains = form.name, form.domains
    site.respect_dnt, site.truncate_ips, site.timezone = (
        form.respect_dnt,
        form.truncate_ips,
        form.timezone,
    )
    db.session.commit()
    return redirect(url_for("admin.site_edit", site_id=site.id, saved=1))


@bp.route("/sites/<int:site_id>/delete", methods=["GET", "POST"])
@roles("admin")
def site_delete(site_id: int) -> Response:
    """Delete a site that collected nothing and nothing names, after a confirmation page."""
    from automation.removal_records import plan_site

    site = row_or_404(Site, site_id)
    return delete_page(
        lambda conn: plan_site(conn, site.id),
        back=url_for("admin.site_edit", site_id=site.id),
        done=url_for("admin.sites_list"),
    )
