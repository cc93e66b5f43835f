"""Who may call what: an optional bearer token per scope, compared in constant time.

=========  =====================================  ======================  ==================================
scope      routes                                 token                   without a token
=========  =====================================  ======================  ==================================
ingest     ``POST /events``                       FRESHREC_INGEST_TOKEN   open to whoever reaches the port
read       ``/recommend``, ``/versions``,         FRESHREC_READ_TOKEN     open to whoever reaches the port
           ``/metrics``, the dashboard
admin      ``POST /admin/rollback``               FRESHREC_ADMIN_TOKEN    loopback clients only
=========  =====================================  ======================  ==================================

The dashboard (``/``, ``/dashboard/status``, ``/dashboard/stream``) is a read route that also takes the
`DASHBOARD_COOKIE` its login form sets (a browser's EventSource cannot send a header); the cookie holds a
digest of the read token, never the token. ``/healthz`` and ``/readyz`` are always open (probes). A token
is an environment variable or a file named by ``[serving] <scope>_token_file``, never a configuration
value: every published version stores the trainer's configuration, and ``/versions`` shows it.
A token that is empty, shorter than `MIN_TOKEN_LENGTH` or not visible ASCII is refused at start-up
(`ConfigError`), never accepted and never echoed. A request without ``Authorization: Bearer <token>``
gets 401 (with ``WWW-Authenticate: Bearer``), one with a wrong token 403. A token grants its own scope only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fastapi import HTTPException, Request

from freshrec.errors import ConfigError
from freshrec.serving.config import ServingConfig

__all__ = [
    "DASHBOARD_COOKIE",
    "MIN_TOKEN_LENGTH",
    "SCOPES",
    "TOKEN_VARIABLES",
    "AccessControl",
    "AccessTokens",
    "check_token",
]

Scope = Literal["ingest", "read", "admin"]
SCOPES: tuple[Scope, ...] = ("ingest", "read", "admin")
#: The environment variable holding each scope's token.
TOKEN_VARIABLES: dict[Scope, str] = {scope: f"FRESHREC_{scope.upper()}_TOKEN" for scope in SCOPES}
#: Shortest token accepted: 16 characters (`openssl rand -hex 32` makes 64).
MIN_TOKEN_LENGTH = 16
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="freshrec"'}
#: The cookie the dashboard's login sets: HttpOnly, SameSite=Strict, holding `AccessControl.cookie_value`.
DASHBOARD_COOKIE = "freshrec_dashboard"


def check_token(token: str, where: str) -> str:
    """`token` if it is usable as a bearer token, else a `ConfigError` naming `where` it came from (and
    never the token).

    >>> check_token("0123456789abcdef", "FRESHREC_READ_TOKEN")
    '0123456789abcdef'
    >>> check_token("s3cret", "FRESHREC_ADMIN_TOKEN")
    Traceback (most recent call last):
    ...
    freshrec.errors.ConfigError: FRESHREC_ADMIN_TOKEN is 6 characters long; a token needs at least 16 \
(e.g. `openssl rand -hex 32`)
    """
    if not token:
        raise ConfigError(
            f"{where} is set but empty: set a token of at least {MIN_TOKEN_LENGTH} characters, or unset it "
            "to leave the scope open"
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"{where} is {len(token)} characters long; a token needs at least {MIN_TOKEN_LENGTH} "
            "(e.g. `openssl rand -hex 32`)"
        )
    if not all("!" <= character <= "~" for character in token):
        raise ConfigError(
            f"{where} holds a space, a control character or non-ASCII text; a bearer token is sent in an "
            "HTTP header: use visible ASCII (e.g. `openssl rand -hex 32`)"
        )
    return token


@dataclass(frozen=True)
class AccessTokens:
    """The token of each scope (None: the scope is open; admin then answers loopback clients only).

    Tokens never show in a repr, a log line or a traceback.

    >>> AccessTokens(read="0123456789abcdef")
    AccessTokens(ingest=None, read='<set>', admin=None)
    """

    ingest: str | None = field(default=None, repr=False)
    read: str | None = field(default=None, repr=False)
    admin: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for scope in SCOPES:
            token = getattr(self, scope)
            if token is not None:
                check_token(token, f"the {scope} token")

    def __repr__(self) -> str:
        shown = (f"{scope}={'None' if getattr(self, scope) is None else repr('<set>')}" for scope in SCOPES)
        return f"AccessTokens({', '.join(shown)})"

    @classmethod
    def resolve(cls, config: ServingConfig, environ: Mapping[str, str] | None = None) -> AccessTokens:
        """Each scope's token from its environment variable or its ``<scope>_token_file``; both at once is
        an error (which should win is not obvious, so neither does)."""
        environ = os.environ if environ is None else environ
        tokens: dict[str, str | None] = {}
        for scope in SCOPES:
            variable, path = TOKEN_VARIABLES[scope], getattr(config, f"{scope}_token_file")
            if variable in environ and path is not None:
                raise ConfigError(f"both {variable} and serving.{scope}_token_file are set; set one of them")
            if variable in environ:
                tokens[scope] = check_token(environ[variable], variable)
            elif path is not None:
                where = f"serving.{scope}_token_file {path}"
                tokens[scope] = check_token(_read_token_file(Path(path)), where)
            else:
                tokens[scope] = None
        return cls(**tokens)

    def open_scopes(self) -> list[str]:
        """The scopes anyone who reaches the port may use (admin is never among them)."""
        return [scope for scope in ("ingest", "read") if getattr(self, scope) is None]


class AccessControl:
    """FastAPI dependencies that let a request through its scope, or answer 401 / 403."""

    def __init__(self, tokens: AccessTokens) -> None:
        self.tokens = tokens

    def cookie_value(self) -> str | None:
        """What the dashboard cookie holds once a client proved it has the read token (None: reads are
        open): a keyed digest of the token, so that a cookie read off a browser is not the bearer token
        itself and opens the dashboard routes only."""
        token = self.tokens.read
        if token is None:
            return None
        return hmac.new(token.encode("ascii"), b"freshrec dashboard cookie", hashlib.sha256).hexdigest()

    def read_token_matches(self, candidate: str) -> bool:
        """Whether `candidate` is the read token (constant time; False when reads are open)."""
        token = self.tokens.read
        return token is not None and hmac.compare_digest(
            candidate.encode("utf-8", "replace"), token.encode("ascii")
        )

    def require(self, scope: Scope, cookie: bool = False) -> Callable[[Request], None]:
        """The dependency guarding `scope`; with `cookie`, the dashboard's cookie is accepted as well as
        the bearer header (read scope only)."""
        token = getattr(self.tokens, scope)
        expected = None if token is None else token.encode("ascii")
        cookie_expected = self.cookie_value() if cookie and scope == "read" else None

        def check(request: Request) -> None:
            if cookie_expected is not None:
                sent = request.cookies.get(DASHBOARD_COOKIE, "")
                if sent and hmac.compare_digest(sent.encode("utf-8", "replace"), cookie_expected.encode()):
                    return
            if expected is None:
                if scope == "admin" and not _is_loopback(request):
                    raise HTTPException(
                        status_code=403,
                        detail="admin routes answer loopback clients only unless an admin token is set "
                        f"({TOKEN_VARIABLES['admin']} or serving.admin_token_file)",
                    )
                return
            scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
            credentials = credentials.strip()
            if scheme.lower() != "bearer" or not credentials:
                detail = f"{scope} routes need Authorization: Bearer <token>"
                if cookie_expected is not None:
                    detail += " (or the dashboard's cookie: sign in at /)"
                raise HTTPException(status_code=401, detail=detail, headers=_CHALLENGE)
            # Starlette decodes header bytes as latin-1: encoding back gives the bytes sent, whatever.
            if not hmac.compare_digest(credentials.encode("latin-1"), expected):
                detail = f"this bearer token is not valid for {scope} routes"
                raise HTTPException(status_code=403, detail=detail)

        check.__name__ = f"require_{scope}" + ("_or_cookie" if cookie else "")
        return check


def _read_token_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()  # the newline `echo token > file` leaves
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise ConfigError(f"token file {path} cannot be read: {reason}") from None


def _is_loopback(request: Request) -> bool:
    if request.client is None:
        return False
    try:
        address = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket's IPv4 peer
    return (mapped or address).is_loopback
