"""Resumable, verified download of checkpoint files (standard library only; no torch).

Files are written to ``<dest>.part`` and renamed to ``dest`` only after their size (and sha256,
when given) has been checked, so a file under the final name is always complete. An interrupted
transfer resumes from the ``.part`` file with an HTTP ``Range`` request.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .._io import sha256_file
from ..errors import ConfigError, DownloadError

logger = logging.getLogger(__name__)

OFFICIAL_URL = "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"
"""Meta's published location of the ``imagebind_huge`` weights (about 4.8 GB, fp32)."""

# No checksum is pinned: the official file could not be fetched to compute one (offline build).
# Pass ``sha256=`` (or ``edgebind download --sha256``) to verify a download.
OFFICIAL_SHA256: str | None = None

LICENSE_NOTICE = (
    "The ImageBind weights are published by Meta under the CC BY-NC-SA 4.0 licence "
    "(non-commercial use only; derivatives must be shared under the same licence). "
    "edgebind does not grant any rights to them: you are responsible for complying with that licence. "
    "See https://github.com/facebookresearch/ImageBind/blob/main/LICENSE"
)

_USER_AGENT = "edgebind-downloader/1"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE_RE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")
_MAX_BACKOFF_S = 30.0
# HTTP statuses worth retrying: the server may recover (timeouts, rate limits, 5xx).
_RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
# Errors raised while connecting or reading the body that a retry may cure.
_TRANSIENT_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError)


def cache_dir() -> Path:
    """Folder for downloaded weights: ``$EDGEBIND_CACHE``, else ``$XDG_CACHE_HOME/edgebind``, else ``~/.cache/edgebind``.

    The environment is read on every call (not at import), so tests and callers can change it.
    """
    explicit = os.environ.get("EDGEBIND_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "edgebind"
    return Path.home() / ".cache" / "edgebind"


def default_checkpoint_path(name: str = "imagebind_huge") -> Path:
    """Where ``fetch_checkpoint(name)`` stores the checkpoint: ``cache_dir()/checkpoints/<name>.pth``."""
    if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or ".." in name:
        raise ConfigError(f"checkpoint name {name!r} is invalid; expected letters, digits, '_', '-' or '.', e.g. 'imagebind_huge'")
    return cache_dir() / "checkpoints" / f"{name}.pth"


def is_official_url(url: str) -> bool:
    """True for Meta's ImageBind weight host, whose files carry the non-commercial licence."""
    return url.split("?", 1)[0].startswith("https://dl.fbaipublicfiles.com/imagebind/")


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60,
    chunk: int = 1 << 20,
    retries: int = 3,
    force: bool = False,
    backoff: float = 1.0,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest`` as a ``Path``.

    Resumes a ``<dest>.part`` left by an earlier attempt and retries transient network errors up
    to ``retries`` times in a row (exponential ``backoff`` seconds; a retry resumes where the
    transfer stopped, an attempt that made progress restarts the count, 0 disables retrying).
    Checks the size against ``Content-Length``/``expected_size`` and the digest against
    ``sha256`` before the atomic rename. An existing ``dest`` that passes the same checks
    is returned without any request unless ``force``. Raises ``DownloadError`` naming the URL,
    what was expected and what was received.
    """
    dest = Path(dest).expanduser()
    sha256 = _check_args(url, dest, expected_size, sha256, timeout, chunk, retries)
    part = dest.with_name(dest.name + ".part")

    if force:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    elif dest.exists():
        if _existing_is_complete(dest, url, expected_size, sha256):
            logger.info("%s already exists; not downloading %s again (use force=True to re-download)", dest, url)
            return dest
        logger.warning("%s does not match the expected size/sha256; downloading %s again", dest, url)

    if is_official_url(url):
        logger.warning(LICENSE_NOTICE)
    dest.parent.mkdir(parents=True, exist_ok=True)
    total = _fetch_with_retries(url, part, expected_size, progress, timeout, chunk, retries, backoff)
    _verify(part, url, total, expected_size, sha256)
    os.replace(part, dest)
    logger.info("downloaded %s to %s (%d bytes)", url, dest, dest.stat().st_size)
    return dest


def fetch_checkpoint(
    name: str = "imagebind_huge",
    dest: str | os.PathLike[str] | None = None,
    url: str = OFFICIAL_URL,
    *,
    sha256: str | None = None,
    **kwargs: Any,
) -> Path:
    """Download checkpoint ``name`` (by default the official ``imagebind_huge``) into the cache.

    ``dest`` defaults to ``default_checkpoint_path(name)``; ``sha256`` defaults to the pinned digest
    of the official file when one is known. Other keyword arguments go to ``download``.
    """
    target = Path(dest).expanduser() if dest is not None else default_checkpoint_path(name)
    if sha256 is None and url == OFFICIAL_URL:
        sha256 = OFFICIAL_SHA256
    if sha256 is None:
        logger.info("no sha256 given for %s; only the size reported by the server will be checked", url)
    return download(url, target, sha256=sha256, **kwargs)


def _check_args(
    url: str, dest: Path, expected_size: int | None, sha256: str | None, timeout: float, chunk: int, retries: int
) -> str | None:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"url: expected an http:// or https:// URL, got {url!r}")
    if dest.is_dir():
        raise DownloadError(f"destination {dest} is a directory; expected a file path such as {dest / 'imagebind_huge.pth'}")
    if expected_size is not None and (isinstance(expected_size, bool) or not isinstance(expected_size, int) or expected_size < 0):
        raise ConfigError(f"expected_size: expected a non-negative integer number of bytes, got {expected_size!r}")
    if timeout is None or timeout <= 0:
        raise ConfigError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    if not isinstance(chunk, int) or chunk <= 0:
        raise ConfigError(f"chunk: expected a positive integer number of bytes, got {chunk!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"retries: expected a non-negative integer, got {retries!r}")
    if sha256 is None:
        return None
    digest = str(sha256).strip().lower()
    if not _SHA256_RE.match(digest):
        raise ConfigError(f"sha256: expected 64 hexadecimal characters, got {sha256!r}")
    return digest


def _existing_is_complete(dest: Path, url: str, expected_size: int | None, sha256: str | None) -> bool:
    size = dest.stat().st_size
    if expected_size is not None and size != expected_size:
        logger.info("%s has %d bytes, expected %d", dest, size, expected_size)
        return False
    if sha256 is not None:
        logger.info("verifying the sha256 of the existing %s", dest)
        found = sha256_file(dest)
        if found != sha256:
            logger.info("%s has sha256 %s, expected %s", dest, found, sha256)
            return False
    # Without a size or digest to check, a file under the final name is trusted: download() only
    # ever creates it by renaming a verified .part file.
    return True


def _fetch_with_retries(
    url: str, part: Path, expected_size: int | None, progress: bool, timeout: float, chunk: int, retries: int, backoff: float
) -> int | None:
    """Fill ``part`` with the whole remote file; return the total size the server announced (None if unknown)."""
    failures = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        try:
            return _fetch_once(url, part, offset, expected_size, progress, timeout, chunk)
        except _Retry as exc:
            if not exc.counts:
                continue
            made_progress = (part.stat().st_size if part.exists() else 0) > offset
            # A failed attempt that moved the transfer forward restarts the count, so a long download
            # over a flaky link finishes; ``retries`` limits the failures in a row without progress.
            failures = 1 if made_progress else failures + 1
            if failures > retries:
                raise DownloadError(
                    f"downloading {url} failed after {retries} retries: {exc} "
                    f"({part.stat().st_size if part.exists() else 0} bytes kept in {part}; run again to resume)"
                ) from None
            delay = min(_MAX_BACKOFF_S, backoff * 2 ** (failures - 1))
            logger.warning("downloading %s: %s; retrying in %.1f s", url, exc, delay)
            time.sleep(delay)


class _Retry(Exception):
    """A transient failure: the caller waits and resumes from the .part file.

    ``counts=False`` marks a deliberate restart (the .part file was discarded), which is retried
    at once and not counted against ``retries``.
    """

    def __init__(self, message: str, *, counts: bool = True):
        super().__init__(message)
        self.counts = counts


def _fetch_once(
    url: str, part: Path, offset: int, expected_size: int | None, progress: bool, timeout: float, chunk: int
) -> int | None:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        try:
            return _handle_http_error(exc, url, part, offset, expected_size)
        finally:
            exc.close()
    except _TRANSIENT_ERRORS as exc:
        raise _Retry(f"cannot connect ({_reason(exc)})") from None

    with response:
        status = getattr(response, "status", 200)
        total, start = _announced_size(response, status, url, offset)
        if start == 0 and offset:
            logger.info("%s: server ignored the Range request (HTTP %d); restarting from byte 0", url, status)
        if total is not None and expected_size is not None and total != expected_size:
            _discard(part)
            raise DownloadError(f"{url}: server announces {total} bytes, expected {expected_size} bytes")
        if start and total is not None and start >= total:
            return total
        _copy_body(response, url, part, start, total, progress, chunk)
    return total


def _handle_http_error(
    exc: urllib.error.HTTPError, url: str, part: Path, offset: int, expected_size: int | None
) -> int | None:
    if exc.code == 416 and offset:
        # Range not satisfiable: the .part file already reaches (or passes) the end of the file.
        total = _total_from_content_range((exc.headers or {}).get("Content-Range")) or expected_size
        if total is not None and offset == total:
            logger.info("%s: %s is already complete (%d bytes)", url, part, offset)
            return total
        logger.info("%s: HTTP 416 for a resume at byte %d (remote size %s); restarting from byte 0",
                    url, offset, total if total is not None else "unknown")
        _discard(part)
        raise _Retry("restart", counts=False)
    if exc.code in _RETRYABLE_STATUS:
        raise _Retry(f"HTTP {exc.code} {exc.reason}")
    raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason} (expected 200 OK or 206 Partial Content)") from None


def _announced_size(response: Any, status: int, url: str, offset: int) -> tuple[int | None, int]:
    """Return (total size, first byte the body holds) from the response headers."""
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if status == 206:
        match = _CONTENT_RANGE_RE.match((response.headers.get("Content-Range") or "").strip())
        if not match:
            raise _Retry(f"HTTP 206 without a valid Content-Range header ({response.headers.get('Content-Range')!r})")
        start = int(match.group(1))
        if start != offset:
            raise DownloadError(f"{url}: asked for bytes from {offset}, server sent bytes from {start}")
        total = None if match.group(3) == "*" else int(match.group(3))
        return total, start
    if status != 200:
        raise DownloadError(f"{url}: unexpected HTTP status {status} (expected 200 OK or 206 Partial Content)")
    return length, 0


def _total_from_content_range(value: str | None) -> int | None:
    match = re.match(r"^bytes\s+(?:\*|\d+-\d+)/(\d+)$", (value or "").strip())
    return int(match.group(1)) if match else None


def _copy_body(response: Any, url: str, part: Path, start: int, total: int | None, progress: bool, chunk: int) -> None:
    from tqdm.auto import tqdm  # core dependency; imported here so `import edgebind.models.download` stays light

    show = progress and sys.stderr.isatty()
    written = start
    try:
        fh = open(part, "ab" if start else "wb")
    except OSError as exc:
        raise DownloadError(f"cannot write {part} while downloading {url}: {exc}") from None
    with fh, tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name[:-5], disable=not show) as bar:
        while True:
            try:
                block = response.read(chunk)
            except _TRANSIENT_ERRORS + (OSError,) as exc:
                raise _Retry(f"connection lost after {written} bytes ({_reason(exc)})") from None
            if not block:
                break
            try:
                fh.write(block)
            except OSError as exc:  # disk full, permissions: retrying would not help
                raise DownloadError(f"cannot write {part} while downloading {url}: {exc}") from None
            written += len(block)
            bar.update(len(block))
        fh.flush()
        os.fsync(fh.fileno())
    if total is not None and written < total:
        # http.client returns an empty read when the peer closes early instead of raising.
        raise _Retry(f"connection closed after {written} of {total} bytes")
    if total is not None and written > total:
        _discard(part)
        raise DownloadError(f"{url}: received {written} bytes, more than the announced {total} bytes")


def _verify(part: Path, url: str, total: int | None, expected_size: int | None, sha256: str | None) -> None:
    size = part.stat().st_size
    for what, want in (("Content-Length", total), ("expected_size", expected_size)):
        if want is not None and size != want:
            _discard(part)
            raise DownloadError(f"{url}: received {size} bytes, expected {want} bytes ({what}); the partial file was removed")
    if sha256 is not None:
        found = sha256_file(part)
        if found != sha256:
            _discard(part)
            raise DownloadError(f"{url}: sha256 mismatch: expected {sha256}, received {found}; the file was removed")


def _discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason if reason is not None else exc}"
