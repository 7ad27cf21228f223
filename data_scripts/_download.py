"""Fetch a dataset archive and unpack it safely: standard library (urllib, zipfile) + tqdm only.

Used by the ``download_*.py`` scripts next to this file. What it does for them:

* ``download``: a progress bar; resume of an interrupted download (the bytes so far are kept in
  ``<name>.part`` and the rest is asked for with an HTTP ``Range`` header; when the server ignores
  it, the download starts again from zero); a checksum check (``"md5:<hex>"`` or
  ``"sha256:<hex>"``) before the file gets its final name. A file that fails the check is moved
  aside to ``<name>.bad``, so the next run fetches it afresh.
* ``extract_zip``: checks every member's CRC, extracts into a temporary folder next to the
  destination and renames that folder into place, so a half-extracted folder never looks finished.
  A small marker file records what was extracted; ``is_extracted`` reads it, which makes a second
  run a no-op.

Every failure the user can act on raises ``DownloadError`` (or a subclass) whose message says what
failed and whose ``hint`` says what to do. The scripts print both, never a traceback.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import ssl
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

MARKER = ".download.json"  # written into an extracted folder once it is complete
HASH_ALGORITHMS = ("md5", "sha256")
USER_AGENT = "course-kit-downloader/1.0 (urllib)"


class DownloadError(Exception):
    """A download or extraction failed; ``str(err)`` says what failed, ``err.hint`` what to do."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


class ChecksumError(DownloadError):
    """The downloaded file is not the expected one (its hash differs)."""


class CorruptArchiveError(DownloadError):
    """The archive cannot be read (not a zip, or a member fails its CRC check)."""


# ----------------------------------------------------------------------------- hashes

def parse_hash(known_hash: str) -> tuple[str, str]:
    """Split ``"md5:<hex>"`` or ``"sha256:<hex>"`` into ``(algorithm, lowercase hex)``."""
    algorithm, _, digest = known_hash.partition(":")
    if algorithm not in HASH_ALGORITHMS or not digest:
        raise ValueError(f"known_hash must look like 'md5:<hex>' or 'sha256:<hex>', "
                         f"got {known_hash!r}")
    return algorithm, digest.strip().lower()


def file_hashes(path: Path, chunk_size: int = 1 << 20) -> dict[str, str]:
    """The MD5 and SHA-256 of a file, in one pass: ``{"md5": hex, "sha256": hex}``."""
    # usedforsecurity=False: MD5 is a checksum here; this keeps it usable on FIPS systems.
    hashers = {"md5": hashlib.md5(usedforsecurity=False), "sha256": hashlib.sha256()}
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def hash_matches(path: Path, known_hash: str | None) -> bool:
    """Whether the file's hash equals ``known_hash`` (always True when that is None)."""
    if known_hash is None:
        return True
    algorithm, digest = parse_hash(known_hash)
    return file_hashes(path)[algorithm] == digest


def move_aside(path: Path) -> Path:
    """Rename ``path`` to ``<path>.bad`` (replacing an older one) and return the new path."""
    bad = path.with_name(path.name + ".bad")
    os.replace(path, bad)
    return bad


# ----------------------------------------------------------------------------- download

Opener = Callable[..., http.client.HTTPResponse]


def _reach_error(url: str, err: BaseException) -> DownloadError:
    """Turn a urllib/socket exception into a DownloadError with a short message and a hint."""
    host = urlsplit(url).hostname or url
    if isinstance(err, urllib.error.HTTPError):
        return DownloadError(
            f"{host} answered HTTP {err.code} ({err.reason}) for {url}",
            "The file may have moved, or the server may be down for a while: try again later.")
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, ssl.SSLCertVerificationError):
        return DownloadError(
            f"could not verify the certificate of {host}: "
            f"{getattr(reason, 'verify_message', None) or reason}",
            "Your Python does not trust this server's certificate (on macOS, run 'Install "
            "Certificates.command' from your Python folder).")
    return DownloadError(f"could not reach {host}: {reason}",
                         "Check your network connection (or proxy), then run this script again.")


def _open(url: str, offset: int, opener: Opener, timeout: float):
    """Send the GET request (with ``Range: bytes=offset-`` when resuming); return the response.

    Returns None when the server answers 416 (range not satisfiable): the partial file already
    holds at least the whole file, and the checksum decides whether it is good.
    """
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return opener(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:
            return None
        raise _reach_error(url, err) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _reach_error(url, err) from None


def _resume_offset(response, offset: int) -> int:
    """Where the body of ``response`` starts in the file.

    ``offset`` if the server honoured the Range header (206 with a matching Content-Range), else 0
    (a plain 200 sends the whole file: start again).
    """
    if not offset or response.status != 206:
        return 0
    content_range = response.headers.get("Content-Range", "")  # "bytes 1000-4999/5000"
    return offset if content_range.startswith(f"bytes {offset}-") else 0


def _total_size(response, start: int) -> int | None:
    """The size of the whole file, from Content-Range or Content-Length, if the server says."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return start + int(length) if length and length.isdigit() else None


def download(url: str, path: str | Path, known_hash: str | None = None, *,
             opener: Opener | None = None, progress: bool = True, timeout: float = 30.0,
             chunk_size: int = 1 << 16) -> Path:
    """Download ``url`` to ``path``, resuming a partial download, and check its hash.

    Nothing is fetched when ``path`` already exists with the right hash (so a file downloaded by
    hand and saved there is used as it is).

    Args:
        url: http(s) address of the file.
        path: where the file goes; the bytes so far are kept in ``<path>.part``.
        known_hash: ``"md5:<hex>"`` or ``"sha256:<hex>"``; None accepts any content.
        opener: called as ``opener(request, timeout=...)`` and returns a response (default
            ``urllib.request.urlopen``); tests pass their own.
        progress: show a tqdm progress bar (on stderr).
        timeout: seconds to wait for the server to connect or send more bytes.
        chunk_size: bytes read at a time.

    Returns:
        ``path``, complete and checked.

    Raises:
        DownloadError: the server could not be reached, answered an error, or the transfer
            stopped early (the partial file is kept: a rerun resumes it).
        ChecksumError: the file's hash is wrong (the file is moved to ``<path>.bad``).
    """
    path = Path(path)
    opener = opener or urllib.request.urlopen
    algorithm, expected = parse_hash(known_hash) if known_hash else (None, None)
    if path.exists():
        if hash_matches(path, known_hash):
            return path
        bad = move_aside(path)  # an old or broken copy: keep it aside, fetch a fresh one
        print(f"note: {path} has the wrong checksum; moved it to {bad}", file=sys.stderr)
    part = path.with_name(path.name + ".part")
    offset = part.stat().st_size if part.exists() else 0

    response = _open(url, offset, opener, timeout)
    if response is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with response:
            start = _resume_offset(response, offset)  # 0 when the server ignored Range
            total = _total_size(response, start)
            done = start
            bar = tqdm(total=total, initial=start, unit="B", unit_scale=True,
                       unit_divisor=1024, desc=path.name, disable=not progress)
            try:
                with bar, open(part, "ab" if start else "wb") as f:
                    while chunk := response.read(chunk_size):
                        f.write(chunk)
                        done += len(chunk)
                        bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as err:
                raise DownloadError(
                    f"the download of {url} stopped after {done / 2**20:.1f} MiB: "
                    f"{err or type(err).__name__}",
                    "Run this script again: it resumes where it stopped.") from None
        if total is not None and done < total:
            raise DownloadError(
                f"the download of {url} stopped after {done / 2**20:.1f} of "
                f"{total / 2**20:.1f} MiB (the server closed the connection)",
                "Run this script again: it resumes where it stopped.")

    if known_hash is not None:
        actual = file_hashes(part)[algorithm]
        if actual != expected:
            bad = path.with_name(path.name + ".bad")
            os.replace(part, bad)
            raise ChecksumError(
                f"{path.name} has the wrong {algorithm} checksum: expected {expected}, "
                f"got {actual}",
                f"The file was moved to {bad}. Run this script again to download it afresh. If "
                "the checksum is wrong again, the file on the server has changed (or a proxy "
                "alters it): --no-verify accepts it unchecked, at your own risk.")
    os.replace(part, path)
    return path


# ----------------------------------------------------------------------------- extraction

def _count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and p.name != MARKER)


def read_marker(folder: Path) -> dict | None:
    """The marker an earlier ``extract_zip`` left in ``folder``, or None if there is none."""
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_extracted(folder: Path, known_hash: str | None = None) -> bool:
    """Whether ``folder`` holds a complete extraction (of an archive with ``known_hash``).

    Complete means: the marker is there, it names the same archive hash (when one is given) and
    the folder still holds as many files as were extracted.
    """
    marker = read_marker(folder)
    if marker is None:
        return False
    if known_hash is not None:
        algorithm, digest = parse_hash(known_hash)
        if marker.get(algorithm) != digest:
            return False
    return marker.get("files") == _count_files(folder)


def check_zip(archive: Path) -> zipfile.ZipFile:
    """Open ``archive`` and check every member's CRC; raise CorruptArchiveError if it fails."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise CorruptArchiveError(f"{archive} is not a valid zip file ({err})") from None
    try:
        bad_member = zf.testzip()  # reads every member and compares its CRC-32
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:  # e.g. bad zlib data
        zf.close()
        raise CorruptArchiveError(f"{archive} is corrupted ({err})") from None
    if bad_member is not None:
        zf.close()
        raise CorruptArchiveError(f"{archive} is corrupted: {bad_member} fails its CRC check")
    return zf


def extract_zip(archive: str | Path, dest: str | Path, top_level: str,
                info: dict | None = None) -> Path:
    """Extract the folder ``top_level`` of a zip archive to ``dest``, all or nothing.

    The archive is checked first, then extracted into a temporary folder beside ``dest``, a marker
    (``.download.json``: the archive's hashes, the file count and ``info``) is written, and the
    folder is renamed to ``dest``. An older ``dest`` is replaced only when everything in it also
    exists in the archive (a leftover of an earlier extraction); anything else is left alone.

    Args:
        archive: the zip file.
        dest: the folder to create, e.g. ``data/PennFudanPed``.
        top_level: the archive's top folder whose contents become ``dest`` (``"PennFudanPed"``).
        info: extra entries for the marker (e.g. the source URL).

    Returns:
        ``dest``.

    Raises:
        CorruptArchiveError: the archive is not a zip, fails a CRC check or lacks ``top_level``.
        DownloadError: ``dest`` exists and holds files that did not come from the archive.
    """
    archive, dest = Path(archive), Path(dest)
    with check_zip(archive) as zf:
        prefix = top_level.rstrip("/") + "/"
        names = zf.namelist()
        if not any(name.startswith(prefix) for name in names):
            raise CorruptArchiveError(f"{archive} has no {prefix} folder: not the expected archive")
        archive_entries = {name[len(prefix):].split("/")[0] for name in names
                           if name.startswith(prefix)}
        if dest.exists():
            foreign = sorted(p.name for p in dest.iterdir()
                             if p.name not in archive_entries and p.name != MARKER)
            if foreign:
                raise DownloadError(
                    f"{dest} already exists and holds files that are not from {archive.name} "
                    f"(e.g. {foreign[0]!r})",
                    "Move that folder away or choose another destination, then run this "
                    "script again.")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-extract-", dir=dest.parent))
        try:
            # extractall drops absolute paths and '..' from member names: no writes outside tmp.
            zf.extractall(tmp, members=[n for n in names if n.startswith(prefix)])
            extracted = tmp / top_level
            marker = {"archive": archive.name, **file_hashes(archive),
                      "files": _count_files(extracted), **(info or {})}
            (extracted / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            if dest.exists():
                shutil.rmtree(dest)  # an incomplete earlier extraction (checked above)
            os.replace(extracted, dest)  # same filesystem: an atomic rename
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
