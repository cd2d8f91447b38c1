"""Users in the admin: create, deactivate and reactivate, reset passwords, unlock, delete.

A generated password is shown once, on the page that answers the form, and
never stored but as its hash; no page shows a hash. Deleting a user hands
their leads and opportunities to someone else, or leaves them unowned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import Response, abort, redirect, render_template, request, url_for
from sqlalchemy import select

from tracker.admin import bp
from tracker.admin.configure import row_or_404
from tracker.admin.deleting import Choice, Offer, delete_page
from tracker.admin.opportunities import owners
from tracker.auth import MIN_PASSWORD, ROLES, current_user, hash_password, new_password, roles
from tracker.db import db
from tracker.models import User, as_utc, utcnow
from tracker.payload import EMAIL_RE, normalise_email


@dataclass
class UserForm:
    """The new-user form, checked; `errors` maps a field to what is wrong with it."""

    email: str = ""
    name: str = ""
    role: str = "sales"
    password: str = ""
    errors: dict[str, str] = field(default_factory=dict)


def read_user_form(form: dict[str, str]) -> UserForm:
    """Check the posted user: a new email address, a role, a long enough password if typed."""
    checked = UserForm(
        email=normalise_email(form.get("email") or "")[:320],
        name=(form.get("name") or "").strip()[:200],
        role=form.get("role") or "",
        password=form.get("password") or "",
    )
    if not EMAIL_RE.fullmatch(checked.email):
        checked.errors["email"] = f"{checked.email!r} is not an email address"
    elif db.session.scalar(select(User.id).where(User.email == checked.email)):
        checked.errors["email"] = f"a user with the email {checked.email!r} exists already"
    if checked.role not in ROLES:
        checked.errors["role"] = f"choose one of {', '.join(ROLES)}"
    if checked.password and len(checked.password) < MIN_PASSWORD:
        checked.errors["password"] = (
            f"at least {MIN_PASSWORD} characters, or leave it empty to have one generated"
        )
    return checked


@bp.get("/users")
@roles("admin")
def users_list() -> str:
    """Everyone who can log in or be handed leads."""
    users = db.session.scalars(select(User).order_by(User.id)).all()
    now = utcnow()
    locked = {u.id for u in users if u.locked_until is not None and as_utc(u.locked_until) > now}
    return render_template("admin/config/users.html", users=users, locked=locked)


@bp.route("/users/new", methods=["GET", "POST"])
@roles("admin")
def user_new() -> Response | str:
    """Add a user; a generated password is shown once on the answer page."""
    if request.method == "GET":
        return render_template("admin/config/user_new.html", form=UserForm(), roles=ROLES)
    form = read_user_form(request.form)
    if form.errors:
        page = render_template("admin/config/user_new.html", form=form, roles=ROLES)
        return Response(page, 400)
    password = form.password or new_password()
    user = User(
        email=form.email,
        name=form.name or form.email.split("@")[0],
        role=form.role,
        password_hash=hash_password(password),
    )
    db.session.add(user)
    db.session.commit()
    return render_template(
        "admin/config/user_password.html",
        user=user,
        password=None if form.password else password,
        what="created",
    )


USER_ACTIONS = ("deactivate", "reactivate", "reset-password", "unlock")
"""What the buttons on the users page do."""


@bp.post("/users/<int:user_id>/<action>")
@roles("admin")
def user_action(user_id: int, action: str) -> Response | str:
    """Deactivate, reactivate, reset the password of (shown once) or unlock a user."""
    if action not in USER_ACTIONS:
        abort(404)
    user = row_or_404(User, user_id)
    if action == "deactivate":
        if user.id == current_user().id:
            abort(400, "you cannot deactivate yourself; ask another admin")
        user.active = False
    elif action == "reactivate":
        user.active = True
    elif action == "unlock":
        user.failed_logins, user.locked_until = 0, None
    else:
        password = new_password()
        user.password_hash = hash_password(password)
        user.failed_logins, user.locked_until = 0, None
        db.session.commit()
        return render_template(
            "admin/config/user_password.html", user=user, password=password, what="reset"
        )
    db.session.commit()
    return redirect(url_for("admin.users_list", saved=1))


def _heir(raw: str | None, allowed: set[int]) -> int | None:
    """Whom the deleted user's leads go to: None for nobody, else one of `allowed` (or 400)."""
    text = (raw or "").strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) not in allowed:
        abort(400, "choose whom their leads and opportunities go to from the list, or nobody")
    return int(text)


@bp.route("/users/<int:user_id>/delete", methods=["GET", "POST"])
@roles("admin")
def user_delete(user_id: int) -> Response:
    """Delete another user after a confirmation page: not yourself, nor the last admin."""
    from automation.removal_records import plan_user

    user = row_or_404(User, user_id)
    heirs = [u for u in owners() if u.id != user.id]
    hand_to = _heir(request.form.get("hand_to"), {u.id for u in heirs})
    actor_id, now = current_user().id, utcnow()
    return delete_page(
        lambda conn: plan_user(conn, user.id, actor_id, hand_to, now),
        back=url_for("admin.users_list"),
        done=url_for("admin.users_list"),
        offer=Offer(
            "Deactivate instead",
            url_for("admin.user_action", user_id=user.id, action="deactivate"),
            "Deactivated, they cannot log in or be handed leads; what they own and wrote stays "
            "theirs, and an admin can reactivate them.",
        ),
        choice=Choice(
            "hand_to",
            "Hand their leads and opportunities to",
            [("", "nobody (they show as unowned)")]
            + [(str(u.id), f"{u.name} ({u.role})") for u in heirs],
            str(hand_to or ""),
        ),
    )
