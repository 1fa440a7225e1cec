"""The API's error type, free of any HTTP framework import."""

from __future__ import annotations


class ApiError(Exception):
    """An error with the HTTP status and the message the client should see."""

    def __init__(
        self, status: int, message: str, headers: dict[str, str] | None = None, errors: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # Extra response headers (`Retry-After` on a 429 or 503).
        self.headers = headers or {}
        # Every problem found when there are several (`message` is the first): a body's
        # validation reports them all, each naming its field.
        self.errors = errors


def field_error(field: str, problem: str) -> ApiError:
    """The 400 error naming `field` and what is wrong with it: `{"error": "port: ..."}`."""
    return ApiError(400, f"{field}: {problem}")
