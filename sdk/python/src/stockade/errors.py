"""Exceptions raised by the SDK."""

from __future__ import annotations

__all__ = ["StockadeError", "StockadeConnectionError"]


class StockadeError(Exception):
    """The daemon refused a request, or could not be talked to.

    ``status`` is the HTTP status (0 when no answer was received), ``code``
    the API's stable error code (``not_found``, ``invalid_request``,
    ``invalid_path``, ``conflict``, ...) and ``message`` the daemon's
    sentence saying what was wrong and what to do.
    """

    status: int
    code: str
    message: str

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        if self.status:
            return f"{self.message} (HTTP {self.status}, {self.code})"
        return f"{self.message} ({self.code})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status!r}, {self.code!r}, {self.message!r})"


class StockadeConnectionError(StockadeError):
    """The daemon could not be reached, or the connection broke mid-answer.

    ``status`` is 0; ``code`` is ``unreachable`` (nothing answered on the
    socket), ``connection_lost`` (the answer was cut short) or
    ``protocol`` (the answer could not be understood).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(0, code, message)
