"""Domain exceptions and the one JSON error shape every endpoint answers with."""

from __future__ import annotations

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException


class ClosedLoopError(Exception):
    """Base of every error Closed Loop raises on purpose."""


class ConfigError(ClosedLoopError):
    """A setting is missing or malformed; the message says how to fix it."""


class BadEvent(ClosedLoopError):
    """A collected payload breaks the contract; answered with a 4xx, nothing stored."""

    def __init__(self, message: str, code: str = "bad_request", status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class StorageUnavailable(ClosedLoopError):
    """Neither Redis nor the database accepted an event batch."""


def error_response(status: int, code: str, message: str) -> Response:
    """Return the JSON error shape: `{"error": {"code": ..., "message": ...}}`."""
    response = jsonify(error={"code": code, "message": message})
    response.status_code = status
    return response


def register(app: Flask) -> None:
    """Answer every HTTP error, and every unexpected one, with the JSON error shape."""

    @app.errorhandler(BadEvent)
    def _bad_event(e: BadEvent) -> Response:
        return error_response(e.status, e.code, e.message)

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException) -> Response:
        code = (e.name or "error").lower().replace(" ", "_")
        return error_response(e.code or 500, code, e.description or e.name)

    @app.errorhandler(StorageUnavailable)
    def _storage(e: StorageUnavailable) -> Response:
        response = error_response(503, "storage_unavailable", str(e))
        response.headers["Retry-After"] = "5"
        return response
