"""Delete actions of the admin: a confirmation page on GET, the deletion on POST.

GET never deletes: it shows what deleting would take with it, or what refers
to the item and what to do about it. The POST (carrying the session's CSRF
token, as every admin POST must) deletes in one transaction, says so in a
flash message and redirects; a refused deletion answers 409 with the same
page and changes nothing. The plans are `automation.removal_*`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import Response, abort, flash, redirect, render_template, request
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError, NoResultFound

from tracker.db import db

if TYPE_CHECKING:
    from automation.removal import Plan

RACED = (
    "Nothing was deleted: something started using the {what} while it was being deleted. "
    "Open its delete page again to see what refers to it now."
)
"""What a deletion says when the database refused it (a reference written meanwhile)."""


@dataclass(frozen=True)
class Offer:
    """What the page offers instead of deleting: a button that POSTs to `url`."""

    label: str
    url: str
    note: str = ""


@dataclass(frozen=True)
class Choice:
    """A select the delete form carries (whom a deleted user's leads go to, say)."""

    name: str
    label: str
    options: list[tuple[str, str]] = field(default_factory=list)
    selected: str = ""


def _page(plan: Plan, status: int, **shown: object) -> Response:
    page = render_template("admin/confirm_delete.html", plan=plan, refused=status == 409, **shown)
    return Response(page, status)


def delete_page(
    planner: Callable[[Connection], Plan],
    *,
    back: str,
    done: str,
    offer: Offer | None = None,
    choice: Choice | None = None,
    after: Callable[[], None] | None = None,
) -> Response:
    """GET: the confirmation page; POST: carry the plan out, flash, and redirect to `done`.

    `back` is the item's own page (Cancel); `after` runs once the deletion is committed.
    """
    from automation.removal import RemovalRefused, carry_out

    shown = {"back": back, "offer": offer, "choice": choice}
    try:
        plan = planner(db.session.connection())
    except NoResultFound:
        db.session.rollback()
        abort(404)  # deleted by someone else meanwhile
    if request.method != "POST":
        db.session.rollback()
        return _page(plan, 200, **shown)
    try:
        carry_out(db.session.connection(), plan)
        db.session.commit()
    except RemovalRefused:
        db.session.rollback()
        return _page(plan, 409, **shown)
    except IntegrityError:
        db.session.rollback()
        message = RACED.format(what=plan.what)
        return Response(render_template("admin/error.html", status=409, message=message), 409)
    if after is not None:
        after()
    flash(f"Deleted the {plan.what} {plan.name!r}.")
    return redirect(done)
