"""WSGI module for bench/collect.py only: the product app, configured from the environment
like wsgi.py, plus `POST /bare`, which only answers 204, as the floor to compare against.

Never imported by the product or the tests; the route is not part of Closed Loop.
"""

from __future__ import annotations

from tracker import create_app

app = create_app()


@app.post("/bare")
def bare() -> tuple[str, int]:
    """Answer 204 and do nothing else: what the framework and server cost on their own."""
    return "", 204
