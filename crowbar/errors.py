"""Errors that services raise; the API maps them to HTTP codes, the CLI to one readable line.

Each error carries a message meant for a person, and where it helps, the `field` that was wrong.
"""


class CrowbarError(Exception):
    """Base of every error a user can cause or see."""

    status = 400
    kind = "bad_request"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict:
        body = {"error": self.kind, "message": self.message}
        if self.field:
            body["field"] = self.field
        return body


class InvalidInput(CrowbarError):
    """The request is malformed or a value breaks a rule (HTTP 400 / 422)."""

    status = 422
    kind = "invalid"


class NotFound(CrowbarError):
    status = 404
    kind = "not_found"


class Conflict(CrowbarError):
    """The request is valid but the current state forbids it (duplicate, in use, wrong state)."""

    status = 409
    kind = "conflict"


class IllegalTransition(Conflict):
    kind = "illegal_transition"


class Unauthorized(CrowbarError):
    status = 401
    kind = "unauthorized"


class TooLarge(CrowbarError):
    """A request body (or an upload) is over its size limit (HTTP 413)."""

    status = 413
    kind = "too_large"


class BarclampError(InvalidInput):
    """A barclamp definition is wrong; the message names the file and the role."""

    kind = "invalid_barclamp"
