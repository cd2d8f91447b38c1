"""A small demo website that embeds the snippet, served from its own origin.

`closedloop dev` runs it beside the tracker so a person can click around and
watch events arrive; the browser tests drive the same pages.
"""

from __future__ import annotations

from flask import Flask, Response, render_template, request

DEMO_SITE_NAME = "Demo site"


def create_demo_app(tracker_url: str, site_key: str) -> Flask:
    """Build the demo website; its pages load `tracker_url`/s.js with `site_key`."""
    app = Flask(__name__)

    @app.context_processor
    def _snippet() -> dict[str, object]:
        # ?consent=required and ?dnt=respect show the snippet's privacy modes.
        return {
            "tracker_url": tracker_url.rstrip("/"),
            "site_key": site_key,
            "consent_required": request.args.get("consent") == "required",
            "respect_dnt": request.args.get("dnt") == "respect",
        }

    @app.get("/")
    def index() -> str:
        return render_template("demo/index.html")

    @app.get("/<any(pricing, app, contact):page>")
    @app.get("/app/<path:step>", defaults={"page": "app"})
    def page(page: str, step: str | None = None) -> str:
        return render_template(f"demo/{page}.html")

    @app.route("/thanks", methods=["GET", "POST"])
    def thanks() -> str:
        return render_template("demo/thanks.html")

    @app.get("/files/whitepaper.pdf")
    def whitepaper() -> Response:
        body = b"%PDF-1.4\n% Closed Loop demo whitepaper\n%%EOF\n"
        return Response(
            body,
            mimetype="application/pdf",
            headers={"Content-Disposition": "attachment; filename=whitepaper.pdf"},
        )

    return app
