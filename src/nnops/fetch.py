"""Find the file an npz / csv source reads: a checked local path, or a download into the cache.

Downloads are fetched once into ``data.cache_dir`` (atomically, checked against ``data.sha256``
when given); secrets come from the environment (``data.url_env``, ``data.auth_env``) or from
``user:pass@`` in the URL, and never reach a log line unmasked.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from nnops.config import PLACEHOLDER, DataParams
from nnops.errors import NnopsError
from nnops.io import atomic_path, file_sha256
from nnops.secrets import (
    auth_header,
    basic_auth,
    from_env,
    redact_text,
    redact_url,
    split_credentials,
)

log = logging.getLogger(__name__)


def input_file(path: str | Path, what: str) -> Path:
    """Return ``path`` if it is a readable file; else fail saying which of the usual things it is.

    Args:
        path: the file.
        what: what it should be, e.g. ``"a csv file (data.path)"``.
    """
    path = Path(path)
    try:
        path.resolve(strict=True)
    except RuntimeError:
        raise NnopsError(f"{path}: symlink loop; expected {what}") from None
    except FileNotFoundError:
        if path.is_symlink():
            target = os.readlink(path)
            raise NnopsError(f"{path}: broken symlink to {target}; expected {what}") from None
        raise NnopsError(f"{path}: not found; expected {what}") from None
    except OSError as exc:
        if exc.errno == 40:  # ELOOP
            raise NnopsError(f"{path}: symlink loop; expected {what}") from None
        raise NnopsError(f"{path}: cannot be opened ({exc.strerror}); expected {what}") from None
    if path.is_dir():
        raise NnopsError(f"{path}: is a directory; expected {what}")
    if not path.is_file():
        raise NnopsError(f"{path}: is not a regular file; expected {what}")
    if not os.access(path, os.R_OK):
        raise NnopsError(f"{path}: permission denied; expected {what}, readable")
    return path


def fetch(
    url: str,
    cache_dir: str | Path,
    sha256: str | None = None,
    timeout: float = 60,
    refresh: bool = False,
    authorization: str | None = None,
) -> Path:
    """Download ``url`` into ``cache_dir`` once and return the cached file.

    A cached copy is reused when it exists (and matches ``sha256`` when one is given). A
    download that fails or does not match the checksum leaves nothing behind. Credentials in
    the URL (``user:password@host``) are sent as HTTP basic authentication, never as part of the
    host name; messages and logs show the URL with its secrets masked.

    Args:
        url: an http(s) or file URL.
        cache_dir: the download cache directory.
        sha256: the expected sha256 hex digest of the file, if known.
        timeout: seconds to wait for the server.
        refresh: download even when a cached copy exists (DVC saw the upstream file change).
        authorization: an ``Authorization`` header value (from ``data.auth_env``).
    """
    shown = redact_url(url)
    bare, credentials = split_credentials(url)
    if credentials is not None and authorization is None:
        authorization = basic_auth(*credentials)
    name = Path(urllib.parse.urlparse(bare).path).name or "download"
    key = hashlib.sha256(bare.encode()).hexdigest()[:12]
    target = Path(cache_dir) / f"{key}-{name}"
    expected = sha256.lower() if sha256 else None
    if target.exists() and not refresh:
        if expected is None or file_sha256(target) == expected:
            log.info("using cached %s for %s", target, shown)
            return target
        log.info("cached %s does not match data.sha256; downloading again", target)
    log.info("downloading %s", shown)
    request = urllib.request.Request(bare)
    if authorization:
        request.add_unredirected_header("Authorization", authorization)
    try:
        with atomic_path(target) as tmp:
            digest = hashlib.sha256()
            with (
                urllib.request.urlopen(request, timeout=timeout) as response,
                tmp.open("wb") as out,
            ):
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            if expected is not None and digest.hexdigest() != expected:
                raise NnopsError(
                    f"data.url {shown}: sha256 is {digest.hexdigest()}, expected {expected} "
                    "(data.sha256); the download was discarded"
                )
    except urllib.error.HTTPError as exc:
        hint = (
            "; the server wants credentials: put them in an environment variable named by "
            "data.auth_env (README, 'Secrets')"
            if exc.code in (401, 403)
            else ""
        )
        raise NnopsError(
            f"data.url {shown}: download failed (HTTP {exc.code} {exc.reason}){hint}"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise NnopsError(
            f"data.url {shown}: download failed ({redact_text(str(reason))})"
        ) from None
    return target


def download_source(params: DataParams) -> tuple[str, str | None]:
    """The URL to download and the ``Authorization`` header, secrets read from the environment.

    Args:
        params: the ``data`` params section (``url`` or ``url_env``, optional ``auth_env``).
    """
    try:
        url = from_env(params.url_env, "data.url_env") if params.url_env else str(params.url)
        auth = auth_header(from_env(params.auth_env, "data.auth_env")) if params.auth_env else None
    except KeyError as exc:
        raise NnopsError(str(exc.args[0])) from None
    return url, auth


def source_file(params: DataParams) -> Path:
    """Return the local file an npz / csv source reads, downloading it first if it is remote.

    ``data.path`` may be an http(s) URL: DVC then tracks it by its ETag (a changed upstream file
    reruns ingest), and it is fetched into ``data.cache_dir``. ``data.url`` (or the URL in the
    environment variable ``data.url_env`` names) is fetched the same way. Secrets come from the
    environment only (``data.auth_env``, or ``user:pass@`` in the URL ``data.url_env`` names,
    sent as HTTP basic auth): the params check refuses them in ``data.path`` and ``data.url``.
    ``data.sha256``, when given, is checked before the file is used, local or not.

    Args:
        params: the ``data`` params section.
    """
    if params.url or params.url_env:
        if params.url:
            log.warning(
                "data.url is fetched once and DVC does not watch it; put the URL in data.path "
                "instead to have `dvc status` notice a changed upstream file"
            )
        url, auth = download_source(params)
        return fetch(url, params.cache_dir, params.sha256, authorization=auth)
    if _is_url(params.path):
        # DVC reruns ingest when the upstream file changed: fetch it anew, never the cached copy.
        url, auth = download_source(params.model_copy(update={"url": params.path}))
        return fetch(url, params.cache_dir, params.sha256, refresh=True, authorization=auth)
    path = Path(params.path or "")
    if not params.path or path.as_posix() == PLACEHOLDER:
        raise NnopsError(
            f"data.source={params.source!r} needs data.path (your file or an http(s) URL); "
            f"received {params.path!r}, the placeholder for embedded sources"
        )
    path = input_file(path, f"a {params.source} file (data.path)")
    actual = file_sha256(path) if params.sha256 else None
    if actual is not None and actual != params.sha256.lower():
        raise NnopsError(
            f"{path}: sha256 is {actual}, expected {params.sha256.lower()} (data.sha256)"
        )
    return path


def _is_url(path: str | None) -> bool:
    return bool(path) and urllib.parse.urlparse(path).scheme in ("http", "https")
