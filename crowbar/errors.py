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

    @property
    def headers(self) -> dict[str, str] | None:
        """Extra HTTP headers for the answer (e.g. Retry-After), or None."""
        return None

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


class BadGateway(CrowbarError):
    """A service Crowbar asked on the caller's behalf (the live Neutron API) did not answer, or
    answered something that is not what it should (HTTP 502): the request was valid, the other end
    failed. The message names the service, the URL and what went wrong, never a body it sent."""

    status = 502
    kind = "bad_gateway"


class TooLarge(CrowbarError):
    """The request body is larger than the route accepts; refused before the rest is read."""

    status = 413
    kind = "too_large"


class Unauthorized(CrowbarError):
    status = 401
    kind = "unauthorized"


class Forbidden(CrowbarError):
    """The caller is known (or needs no token) but may not do this: a missing or wrong proof."""

    status = 403
    kind = "forbidden"


class RateLimited(CrowbarError):
    """Too many requests of this kind right now; try again after `retry_after` seconds (HTTP 429)."""

    status = 429
    kind = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, field: str | None = None):
        super().__init__(message, field=field)
        self.retry_after = max(1, int(-(-retry_after // 1)))  # whole seconds, rounded up

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class BarclampError(InvalidInput):
    """A barclamp definition is wrong; the message names the file and the role."""

    kind = "invalid_barclamp"


class PreconditionFailed(CrowbarError):
    """If-Match named a version the object no longer has: someone changed it since the caller read
    it (HTTP 412). The answer carries the current ETag, so a client can read again and redo."""

    status = 412
    kind = "precondition_failed"

    def __init__(self, message: str, *, etag: str, field: str | None = "If-Match"):
        super().__init__(message, field=field)
        self.etag = etag

    @property
    def headers(self) -> dict[str, str]:
        return {"ETag": self.etag}
