"""Who may change things in the console: the token, the session cookie, CSRF.

Without a token the console is read-only: every state-changing request is
refused. With one, a browser logs in once (the token is checked and a cookie
derived from it is set), and every POST carries the CSRF value of a second
cookie in a hidden field (double submit; both cookies are ``SameSite=Strict``
and ``HttpOnly``). A script may instead send ``Authorization: Bearer <token>``,
which a browser never adds by itself, so it needs no CSRF value.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["CSRF_COOKIE", "SESSION_COOKIE", "Guard"]

SESSION_COOKIE: Final = "vt_console_session"
CSRF_COOKIE: Final = "vt_console_csrf"
CSRF_FIELD: Final = "csrf"


class Guard:
    """Checks the token, the session and the CSRF value of requests."""

    def __init__(self, token: str | None) -> None:
        self.token = token or None
        self._session = (
            hmac.new(
                self.token.encode(), b"versioned-tasks console session", hashlib.sha256
            ).hexdigest()
            if self.token
            else None
        )

    @property
    def read_only(self) -> bool:
        """Whether the console has no token (then nothing can be changed)."""
        return self.token is None

    def token_matches(self, candidate: str) -> bool:
        """Whether ``candidate`` is the token (in constant time)."""
        return self.token is not None and hmac.compare_digest(
            candidate.encode(), self.token.encode()
        )

    def session_value(self) -> str:
        """The session cookie's value for a browser that gave the right token."""
        assert self._session is not None
        return self._session

    def bearer(self, request: Request) -> bool:
        """Whether the request carries the token in an Authorization header."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(value.strip())

    def logged_in(self, request: Request) -> bool:
        """Whether the request may change things (right session cookie or bearer token)."""
        if self._session is None:
            return False
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self._session.encode()) or self.bearer(request)

    @staticmethod
    def csrf_value(request: Request) -> tuple[str, bool]:
        """The browser's CSRF value, and whether it is new (to be set as a cookie)."""
        value = request.cookies.get(CSRF_COOKIE)
        if value and len(value) >= 32:
            return value, False
        return secrets.token_urlsafe(32), True

    @staticmethod
    def csrf_ok(request: Request, submitted: str | None) -> bool:
        """Whether a POST's hidden CSRF field matches its cookie."""
        cookie = request.cookies.get(CSRF_COOKIE, "")
        return bool(cookie and submitted) and hmac.compare_digest(
            cookie.encode(), (submitted or "").encode()
        )

    def refusal(self, request: Request, submitted_csrf: str | None) -> tuple[int, str] | None:
        """Why a state-changing request is refused (status and text), or None."""
        if self.read_only:
            return 403, (
                "This console is read-only: it was started without a token. Restart it "
                "with --token (or VERSIONED_TASKS_WEB_TOKEN) to replay, edit or delete."
            )
        if self.bearer(request):
            return None
        if not self.logged_in(request):
            return 403, "Log in with the console's token to replay, edit or delete."
        if not self.csrf_ok(request, submitted_csrf):
            return 403, (
                "The form's CSRF check failed (a stale page or a request from another "
                "site); reload the page and try again."
            )
        return None

    @staticmethod
    def set_cookie(response: Response, name: str, value: str, *, secure: bool) -> None:
        """Set one of the console's cookies (HttpOnly, SameSite=Strict)."""
        response.set_cookie(name, value, httponly=True, samesite="strict", secure=secure)
