"""Keep secrets out of everything nnops writes or prints.

Credentials (``user:password@host``) and query values (``?token=...``) in URLs are replaced by
``***`` before a URL reaches a log line, an error message, an MLflow param or a report. Secrets
themselves come from environment variables that ``params.yaml`` only names (``data.url_env``,
``data.auth_env``), so neither ``params.yaml`` nor ``dvc.lock`` ever holds one.
Standard library only: the params check imports this module.
"""

from __future__ import annotations

import base64
import logging
import os
import re
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()\[\]{}]*[^\s'\"<>()\[\]{}.,:;]")


def _url_parts(url: str) -> SplitResult | None:
    """``url`` split into its parts, or None when it is not a URL with a scheme and a host."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return parts if parts.scheme and parts.netloc else None


def redact_url(url: str) -> str:
    """Return ``url`` with its password (or user:password) and every query value masked.

    Args:
        url: any URL or URI; a value that is not one is returned unchanged.
    """
    parts = _url_parts(url)
    if parts is None:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{MASK}@{host}"
    query, fragment = parts.query, parts.fragment
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK) for k, _ in pairs], safe="*") if pairs else MASK
    if "=" in fragment:  # #access_token=... (OAuth implicit flow); a plain #anchor stays
        pairs = parse_qsl(fragment, keep_blank_values=True)
        fragment = urlencode([(k, MASK) for k, _ in pairs], safe="*") if pairs else MASK
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_text(text: str) -> str:
    """Mask the secrets of every URL found in a free-form text (a log line, an error).

    Args:
        text: the text.
    """
    if "://" not in text:
        return text
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


# Query parameter names that hold a credential: tokens, API keys, signed-URL signatures (S3,
# GCS, Azure SAS), passwords, session ids. Other queries (``?dl=1``, ``?raw=true``) are not secret.
_SECRET_QUERY = re.compile(
    r"token|key|sig|secret|pass|pwd|auth|cred|session|x-amz-|x-goog-", re.IGNORECASE
)


def url_secret(url: str) -> str | None:
    """What secret a URL carries, in words ("a password", "the query value 'token'"), or None.

    A password in the user info (``user:password@``) always counts, and so does a bare
    ``token@`` in an http(s) URL (a database URL's ``user@`` is only a user name); a query or
    fragment parameter counts when its name looks like a credential.

    Args:
        url: any string; one that is not a URL carries none.
    """
    parts = _url_parts(url)
    if parts is None:
        return None
    if "@" in parts.netloc:
        if ":" in parts.netloc.rsplit("@", 1)[0]:
            return "a password"
        if parts.scheme.lower() in ("http", "https"):
            return "a user name or token"
    for where, text in (("query", parts.query), ("fragment", parts.fragment)):
        keys = [k for k, _ in parse_qsl(text, keep_blank_values=True) if _SECRET_QUERY.search(k)]
        if keys:
            return f"the {where} value {keys[0]!r}"
    return None


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """Take ``user:password@`` out of a URL: return the bare URL and the credentials, if any.

    Args:
        url: an http(s) URL.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return bare, (unquote(user), unquote(password))


def basic_auth(user: str, password: str) -> str:
    """The value of an HTTP ``Authorization`` header for basic authentication.

    Args:
        user: the user name.
        password: the password.
    """
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def from_env(name: str, key: str) -> str:
    """Read a secret from the environment variable ``name`` that params key ``key`` names.

    Args:
        name: the environment variable.
        key: the dotted params key naming it, for the message.

    Raises:
        KeyError: with a message when the variable is unset or empty.
    """
    value = os.environ.get(name, "")
    if not value:
        raise KeyError(f"{key} names the environment variable {name}, which is not set")
    return value


def auth_header(value: str) -> str:
    """Turn the value of ``data.auth_env``'s variable into an ``Authorization`` header value.

    ``user:password`` becomes basic authentication; a value with a scheme (``Bearer abc``,
    ``Token abc``) is sent as it is.

    Args:
        value: the secret.
    """
    if " " in value.strip():
        return value.strip()
    user, _, password = value.partition(":")
    return basic_auth(user, password)


class RedactingFilter(logging.Filter):
    """A logging filter that masks URL secrets in every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True
