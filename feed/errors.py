"""Domain errors raised by services; ``feed.app`` maps each to one HTTP response. No HTTP codes live here."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a user may see. The message is shown to them: it never carries post text or keys."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


NOT_FOUND = "Record not found"


class NotFound(DomainError):
    def __init__(self, message: str = NOT_FOUND) -> None:
        super().__init__(message)


class Forbidden(DomainError):
    pass


class Unauthorized(DomainError):
    pass


class SessionEnded(Forbidden):
    """A form of a page whose session ended since it was drawn (logged out, maybe in another tab)."""


class NeedsUser(DomainError):
    """An API call that acts for an account, made with a token of an app alone (422, as Mastodon answers)."""


class Conflict(DomainError):
    pass


class Invalid(DomainError):
    """Input that breaks a rule; ``field`` names the form field when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class RateLimited(DomainError):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
