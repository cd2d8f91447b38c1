"""The closed-loop reports in the admin: campaign ROI, email performance, score calibration.

Each page takes a period (`from`, `to`) and answers `?format=csv` with the same table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any

from flask import Response, render_template, request

from tracker.admin import bp
from tracker.auth import roles

MODELS = {"first": "First touch", "last": "Last touch", "linear": "Linear (multi-touch)"}
"""The attribution models, as the page names them."""


def _period_args() -> tuple[dict[str, str], dict[str, str], Any]:
    """The typed `from`/`to`, errors per field, and the Period (None when wrong)."""
    from automation.reports import Period

    typed = {key: request.args.get(key, "").strip()[:40] for key in ("from", "to")}
    errors: dict[str, str] = {}
    bounds: dict[str, date | None] = {}
    for key, text in typed.items():
        try:
            bounds[key] = date.fromisoformat(text) if text else None
        except ValueError:
            errors[key] = f"{text!r} is not a date: write it as YYYY-MM-DD."
    if errors:
        return typed, errors, None
    try:
        return typed, errors, Period(bounds["from"], bounds["to"])
    except ValueError as e:
        errors["to"] = f"{str(e).capitalize()}."
        return typed, errors, None


def _csv(name: str, period: Any, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Response:
    from automation.report_tables import csv_text

    span = f"{period.starts_on or 'start'}_{period.ends_on or 'now'}"
    return Response(
        csv_text(header, rows),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}_{span}.csv"'},
    )


def _page(template: str, status: int = 200, **context: Any) -> Response:
    """A report page, with the number formatters its tables use."""
    from automation.report_tables import human, percent

    page = render_template(f"admin/reports/{template}", fmt=human, pct=percent, **context)
    return Response(page, status)


def _wants_csv() -> bool:
    return request.args.get("format") == "csv"


@bp.get("/reports/roi")
@roles("marketer")
def report_roi() -> Response:
    """Campaign ROI per attribution model and period."""
    from automation.reports import ROI_COLUMNS, roi_cells, roi_report

    model = request.args.get("model", "linear")
    typed, errors, period = _period_args()
    if model not in MODELS:
        errors["model"] = f"Choose one of: {', '.join(MODELS)}."
        model = "linear"
    if errors:
        return _page(
            "roi.html", 400, report=None, model=model, models=MODELS, typed=typed, errors=errors
        )
    report = roi_report(model, period)
    if _wants_csv():
        return _csv(f"roi_{model}", period, ROI_COLUMNS, (roi_cells(r) for r in report.rows))
    return _page("roi.html", report=report, model=model, models=MODELS, typed=typed, errors={})


@bp.get("/reports/email")
@roles("marketer")
def report_email() -> Response:
    """Email performance per template and variant, per sequence step, and per segment."""
    from automation.reports import EMAIL_COLUMNS, email_report

    typed, errors, period = _period_args()
    if errors:
        return _page("email.html", 400, report=None, typed=typed, errors=errors)
    report = email_report(period)
    if _wants_csv():
        # The three tables one after the other; a row fills the key columns of its table.
        header = ("segment", "sequence", "step", "template", "variant", *EMAIL_COLUMNS)
        rows = [
            [
                r.segment,
                r.sequence,
                None if r.step is None else r.step + 1,
                r.template,
                r.variant,
                *(r.counts[c] for c in EMAIL_COLUMNS),
            ]
            for r in (*report.by_template, *report.by_step, *report.by_segment)
        ]
        return _csv("email", period, header, rows)
    return _page("email.html", report=report, columns=EMAIL_COLUMNS, typed=typed, errors={})


@bp.get("/reports/calibration")
@roles("marketer")
def report_calibration() -> Response:
    """Conversion to opportunity by score band, to check where the MQL threshold sits."""
    from automation.reports import CALIBRATION_COLUMNS, calibration_cells, calibration_report

    typed, errors, period = _period_args()
    if errors:
        return _page("calibration.html", 400, bands=None, typed=typed, errors=errors)
    bands = calibration_report(period)
    if _wants_csv():
        header = (*CALIBRATION_COLUMNS, "thresholds")
        rows = [[*calibration_cells(b), "; ".join(b.thresholds)] for b in bands]
        return _csv("calibration", period, header, rows)
    return _page("calibration.html", bands=bands, typed=typed, errors={})
