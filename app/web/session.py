"""The dashboard's sign-in: an encrypted session cookie, CSRF tokens, and the caller it names.

The session cookie is Litestar's client-side session: AES-GCM encrypted and authenticated with
a key derived from ASSAY_WEB_SECRET, HttpOnly, SameSite=Lax, Secure when
ASSAY_WEB_SECURE_COOKIES is set. It carries the API key the user signed in with, because every
request is authenticated again through the same path as the API's (`Authenticator`), so a
revoked key or a changed role takes effect on the next page, exactly as for the API. Nobody
holding the cookie can read the key out of it (encrypted) or forge one (authenticated).

CSRF tokens (Litestar's CSRF middleware, double-submit cookie signed with another derived
key) guard every form that changes something, sign-in included. Both middlewares sit on the
dashboard's router only: the API, authenticated by header, is untouched.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any
from urllib.parse import quote

from litestar import Request
from litestar.config.csrf import CSRFConfig
from litestar.middleware import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.middleware.session import SessionMiddleware
from litestar.middleware.session.client_side import ClientSideSessionBackend, CookieBackendConfig
from litestar.types import ASGIApp

from app.api.context import container_of
from app.auth import Scope
from app.errors import ApiError
from infrastructure.identity.records import Principal
from infrastructure.settings import Settings

SESSION_COOKIE = "assay_session"
CSRF_COOKIE = "assay_csrf"
SESSION_KEY = "api_key"
SESSION_HOURS = 12


class NotSignedIn(Exception):
    """No valid session: the dashboard answers with the sign-in page, then comes back."""

    def __init__(self, next_url: str, reason: str | None = None) -> None:
        super().__init__(reason or "sign in")
        self.next_url = next_url
        self.reason = reason


def _derived(secret: str, purpose: str) -> bytes:
    return hashlib.sha256(f"assay-web:{purpose}:{secret}".encode()).digest()


def _session_middleware(app: ASGIApp, config: CookieBackendConfig) -> SessionMiddleware[Any]:
    # Built when the route is, not when the router is declared: Litestar copies routers, and
    # the backend's cipher cannot be copied.
    return SessionMiddleware(app=app, backend=ClientSideSessionBackend(config=config))


# Without ASSAY_WEB_SECRET, one random secret per process, so every reader of the session
# cookie in this process (the dashboard's middleware, the API's live stream) agrees on it.
_PROCESS_SECRET = secrets.token_hex(32)


def _secret(settings: Settings) -> str:
    return settings.web_secret or _PROCESS_SECRET


def _session_config(settings: Settings) -> CookieBackendConfig:
    return CookieBackendConfig(
        secret=_derived(_secret(settings), "session"),
        key=SESSION_COOKIE,
        max_age=SESSION_HOURS * 3600,
        httponly=True,
        samesite="lax",
        secure=settings.web_secure_cookies,
    )


async def session_key(request: Request[Any, Any, Any], settings: Settings) -> str | None:
    """The API key a dashboard session cookie carries, for the one API route a browser
    reaches with its cookie alone: the evaluation stream (EventSource sends no header)."""
    if not any(name.startswith(SESSION_COOKIE) for name in request.cookies):
        return None
    backend = ClientSideSessionBackend(config=_session_config(settings))
    raw = (await backend.load_from_connection(request)).get(SESSION_KEY)
    return raw if isinstance(raw, str) else None


def web_middleware(settings: Settings) -> list[DefineMiddleware]:
    """Session first (CSRF failures then still render for a signed-in user), then CSRF."""
    secret = _secret(settings)
    session = _session_config(settings)
    csrf = CSRFConfig(
        secret=_derived(secret, "csrf").hex(),
        cookie_name=CSRF_COOKIE,
        cookie_httponly=True,
        cookie_samesite="lax",
        cookie_secure=settings.web_secure_cookies,
    )
    return [
        DefineMiddleware(_session_middleware, config=session),
        DefineMiddleware(CSRFMiddleware, config=csrf),
    ]


def here(request: Request[Any, Any, Any]) -> str:
    """This page's path and query, to come back to after signing in."""
    query = request.scope.get("query_string", b"").decode("latin-1")
    return request.url.path + (f"?{query}" if query else "")


def login_url(next_url: str) -> str:
    return "/login?next=" + quote(next_url, safe="")


def safe_next(value: str | None) -> str:
    """Only a path of this server: never an open redirect to another site."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


async def signed_in(request: Request[Any, Any, Any]) -> Principal:
    """The principal of the session's key, verified as the API verifies a header's."""
    raw = request.session.get(SESSION_KEY) if request.session else None
    if not isinstance(raw, str):
        raise NotSignedIn(here(request))
    try:
        return await container_of(request).authenticator.principal_of_key(raw)
    except ApiError as error:
        if error.status != 401:
            raise
        request.clear_session()
        raise NotSignedIn(here(request), "your key is no longer valid; sign in again") from error


async def web_scope(request: Request[Any, Any, Any], org: str, ws: str) -> Scope:
    principal = await signed_in(request)
    return await container_of(request).authenticator.scope(principal, org, ws)
