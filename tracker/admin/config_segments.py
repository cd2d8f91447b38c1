"""Segments in the admin: member counts, the rule tree as YAML, a live preview, deleting."""

from __future__ import annotations

from flask import Response, render_template, request, url_for
from sqlalchemy import func, select

from tracker.admin import bp
from tracker.admin.configure import (
    SECTIONS,
    TOO_LARGE,
    UNFIT,
    ItemRefused,
    edit_page,
    refuse_huge_numbers,
    relabel,
    row_or_404,
    wrap_item,
)
from tracker.admin.deleting import delete_page
from tracker.auth import roles
from tracker.automation_models import Segment, SegmentMember
from tracker.db import db
from tracker.models import utcnow


@bp.get("/segments")
@roles("marketer")
def segments_list() -> str:
    """Segments with their member counts and last full rebuild."""
    counts = dict(
        db.session.execute(
            select(SegmentMember.segment_id, func.count()).group_by(SegmentMember.segment_id)
        ).all()
    )
    segments = db.session.scalars(select(Segment).order_by(Segment.name)).all()
    return render_template("admin/config/segments.html", segments=segments, counts=counts)


def preview_item(text: str, current_name: str | None) -> tuple[int, list[str]]:
    """How many contacts the typed segment would hold now, and a sample; saves nothing."""
    from automation.config_file import ConfigFileError, parse
    from automation.segments import preview

    label = f"segment {current_name!r}" if current_name else "new segment"
    if not text.strip():
        raise ItemRefused(["the segment is empty: write it as a YAML mapping"])
    refuse_huge_numbers(text)
    try:
        spec = parse(wrap_item("segments", text), label)
    except ConfigFileError as e:
        raise ItemRefused(relabel(e.problems, label)) from e
    if len(spec.segments) != 1:
        raise ItemRefused(["write one segment as a YAML mapping"])
    try:
        return preview(db.session.connection(), spec.segments[0].match, utcnow())
    except UNFIT as e:
        raise ItemRefused([f"segment {spec.segments[0].name!r}: {TOO_LARGE}"]) from e
    finally:
        db.session.rollback()  # a preview writes nothing, and keeps no transaction open


def _segment_page(row: Segment | None) -> Response | str:
    info = SECTIONS["segments"]
    members = None
    if row is not None:
        members = db.session.scalar(
            select(func.count())
            .select_from(SegmentMember)
            .where(SegmentMember.segment_id == row.id)
        )
    if request.method == "POST" and request.form.get("action") == "preview":
        text = request.form.get("item") or ""
        try:
            count, sample = preview_item(text, row.name if row else None)
        except ItemRefused as e:
            page = render_template(
                "admin/config/segment.html",
                info=info,
                row=row,
                text=text,
                problems=e.problems,
                members=members,
            )
            return Response(page, 400)
        return render_template(
            "admin/config/segment.html",
            info=info,
            row=row,
            text=text,
            members=members,
            preview={"count": count, "sample": sample},
        )
    return edit_page(info, row, "admin.segment_edit", "admin/config/segment.html", members=members)


@bp.route("/segments/new", methods=["GET", "POST"])
@roles("marketer")
def segment_new() -> Response | str:
    """Create a segment from its rule tree; Preview counts without saving."""
    return _segment_page(None)


@bp.route("/segments/<int:item_id>", methods=["GET", "POST"])
@roles("marketer")
def segment_edit(item_id: int) -> Response | str:
    """Edit a segment's rule tree; a change is rebuilt by a worker."""
    return _segment_page(row_or_404(Segment, item_id))


@bp.route("/segments/<int:item_id>/delete", methods=["GET", "POST"])
@roles("marketer")
def segment_delete(item_id: int) -> Response:
    """Delete a segment and its memberships, after a confirmation page; 409 while it is used."""
    from automation.removal_config import plan_segment

    row = row_or_404(Segment, item_id)
    return delete_page(
        lambda conn: plan_segment(conn, row.id),
        back=url_for("admin.segment_edit", item_id=row.id),
        done=url_for("admin.segments_list"),
    )
