"""DICOMweb credentials: read from the environment, sent as one ``Authorization`` header, masked in messages.

Credentials come from the environment only, never from the command line, and never appear in a message, an
exception or a log line (see :mod:`satseg.io.dicomweb`):

- ``SATSEG_DICOMWEB_TOKEN``: an OAuth2 / OpenID Connect access token, sent as ``Authorization: Bearer <token>``; a
  value that already starts with ``Bearer `` is accepted as it is.
- ``SATSEG_DICOMWEB_USER`` and ``SATSEG_DICOMWEB_PASSWORD``: HTTP Basic authentication, encoded as UTF-8 (RFC 7617).

Setting both schemes, or only one of user and password, is refused naming the variables, never their values.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Mapping

from satseg.errors import InputError

TOKEN_ENV = "SATSEG_DICOMWEB_TOKEN"
USER_ENV = "SATSEG_DICOMWEB_USER"
PASSWORD_ENV = "SATSEG_DICOMWEB_PASSWORD"


def credentials_source(environ: Mapping[str, str] | None = None) -> str | None:
    """Which credentials the environment gives (``"SATSEG_DICOMWEB_TOKEN"``, ``"SATSEG_DICOMWEB_USER/..."``) or None.

    Call it before long work so that a half-set or ambiguous setting fails at once (InputError naming the
    variables, never their values).
    """
    credentials = _credentials_from_env(environ)
    return None if credentials is None else credentials[1]


def _credentials_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """``(Authorization header value, name of its source)`` from the environment, or None (no credentials)."""
    env = os.environ if environ is None else environ
    token, user, password = env.get(TOKEN_ENV, "").strip(), env.get(USER_ENV, ""), env.get(PASSWORD_ENV, "")
    if token and (user or password):
        raise InputError(f"set either {TOKEN_ENV} or {USER_ENV} and {PASSWORD_ENV}, not both")
    if token:
        return _bearer(token, TOKEN_ENV), TOKEN_ENV
    if bool(user) != bool(password):
        missing = PASSWORD_ENV if user else USER_ENV
        raise InputError(f"{USER_ENV} and {PASSWORD_ENV} go together; {missing} is not set")
    if not user:
        return None
    if ":" in user:
        raise InputError(f"{USER_ENV} must not contain ':' (HTTP Basic authentication)")
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {encoded}", f"{USER_ENV}/{PASSWORD_ENV}"


def _bearer(token: str, source: str) -> str:
    value = token if token.lower().startswith("bearer ") else f"Bearer {token}"
    if not all(33 <= ord(c) <= 126 for c in value[7:].strip()) or not value[7:].strip():
        raise InputError(f"{source} holds characters an HTTP header cannot carry (spaces, line breaks, non-ASCII)")
    return value


def _secret_forms(header: str, token: str | None) -> tuple[str, ...]:
    forms = [header, header.split(" ", 1)[1]]
    if token:
        forms.append(token.strip())
    if header.startswith("Basic "):
        decoded = base64.b64decode(header[6:]).decode()
        forms += [decoded, decoded.split(":", 1)[1]]
    for name in (TOKEN_ENV, PASSWORD_ENV):
        if os.environ.get(name, "").strip():
            forms.append(os.environ[name].strip())
    return tuple(sorted({f for f in forms if len(f) >= 3}, key=len, reverse=True))


class _HeaderAuth:
    """requests auth that sets one ``Authorization`` value; its repr shows nothing of it."""

    def __init__(self, value: str) -> None:
        self._value = value

    def __call__(self, request):
        request.headers["Authorization"] = self._value
        return request

    def __repr__(self) -> str:
        return "<credentials>"


def _mask(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret (the forms :func:`_secret_forms` gives, longest first) replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
