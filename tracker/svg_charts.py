"""Charts as server-rendered SVG: no JavaScript, nothing fetched, every label escaped.

Pure: numbers and labels in, `Markup` out. Every piece of text goes through
`Markup.format`, which escapes its arguments, so a label a marketer typed (a UTM
campaign, a name) is shown as text.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup

BAR_COLOUR = "#3b7dd8"
TEXT_COLOUR = "#333"


def _scale(values: Sequence[float]) -> float:
    return max([*values, 0]) or 1


def bar_chart(
    items: Sequence[tuple[str, float]], title: str, width: int = 640, row: int = 26
) -> Markup:
    """Horizontal bars, one per (label, value), longest = widest; the value after each bar."""
    label_w, value_w = 140, 90
    room = max(width - label_w - value_w, 10)
    top = _scale([value for _, value in items])
    height = row * len(items) + 4
    parts = [
        Markup(
            '<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
            'viewBox="0 0 {} {}" width="{}" height="{}" aria-label="{}"><title>{}</title>'
        ).format(width, height, width, height, title, title)
    ]
    for i, (label, value) in enumerate(items):
        y = 2 + i * row
        bar = max(round(room * value / top), 1 if value else 0)
        parts.append(
            Markup(
                "<g><title>{}: {}</title>"
                '<text x="{}" y="{}" text-anchor="end" fill="{}" font-size="13">{}</text>'
                '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"></rect>'
                '<text x="{}" y="{}" fill="{}" font-size="13">{}</text></g>'
            ).format(
                label,
                _number(value),
                label_w - 8,
                y + row * 0.65,
                TEXT_COLOUR,
                label,
                label_w,
                y + 3,
                bar,
                row - 8,
                BAR_COLOUR,
                label_w + bar + 6,
                y + row * 0.65,
                TEXT_COLOUR,
                _number(value),
            )
        )
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def column_chart(
    points: Sequence[tuple[str, float]], title: str, width: int = 640, height: int = 160
) -> Markup:
    """Vertical columns over time, one per (label, value); first and last labels under the axis,
    every column's label and value in its tooltip."""
    axis_h, top_pad, left = 18, 16, 4
    plot_h = height - axis_h - top_pad
    top = _scale([value for _, value in points])
    step = (width - 2 * left) / max(len(points), 1)
    parts = [
        Markup(
            '<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
            'viewBox="0 0 {} {}" width="{}" height="{}" aria-label="{}"><title>{}</title>'
            '<text x="{}" y="12" fill="{}" font-size="12">max {}</text>'
            '<line x1="0" y1="{}" x2="{}" y2="{}" stroke="#bbb"></line>'
        ).format(
            width,
            height,
            width,
            height,
            title,
            title,
            left,
            TEXT_COLOUR,
            _number(top if points else 0),
            top_pad + plot_h,
            width,
            top_pad + plot_h,
        )
    ]
    for i, (label, value) in enumerate(points):
        h = plot_h * value / top
        x = left + i * step
        parts.append(
            Markup(
                '<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" fill="{}">'
                "<title>{}: {}</title></rect>"
            ).format(
                x + step * 0.1,
                top_pad + plot_h - h,
                max(step * 0.8, 1),
                h,
                BAR_COLOUR,
                label,
                _number(value),
            )
        )
    if points:
        baseline = height - 4
        parts.append(
            Markup(
                '<text x="{}" y="{}" fill="{}" font-size="12">{}</text>'
                '<text x="{}" y="{}" fill="{}" font-size="12" text-anchor="end">{}</text>'
            ).format(
                left,
                baseline,
                TEXT_COLOUR,
                points[0][0],
                width - left,
                baseline,
                TEXT_COLOUR,
                points[-1][0],
            )
        )
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.1f}"
