"""Resumable, verified downloads and safe archive extraction (standard library only).

A download goes to ``<file>.part`` and continues from its size with an HTTP Range request
after an interruption; the finished file is checked against its size and checksum before it
is renamed into place, so a file without ``.part`` is always complete and verified.
Extraction unpacks into a temporary folder beside the destination and renames it when
complete, then leaves a marker: a stage that finished is skipped when run again.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from asr.errors import AsrError

CHUNK_BYTES = 1 << 20


class DownloadError(AsrError):
    """A download or extraction failed; the message says which file and why."""


@dataclass(frozen=True)
class Resource:
    name: str  # e.g. "dev-clean"
    url: str  # where the file is served
    filename: str  # name of the downloaded file
    checksum: str  # "md5:<hex>" or "sha256:<hex>"; "" = size check only
    size: int = 0  # bytes; 0 = unknown


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, resource: Resource) -> None:
    """Raise :class:`DownloadError` if ``path`` has the wrong size or checksum."""
    size = path.stat().st_size
    if resource.size and size != resource.size:
        raise DownloadError(f"{path}: size {size} bytes, expected {resource.size}")
    if resource.checksum:
        algorithm, expected = resource.checksum.split(":", 1)
        actual = file_digest(path, algorithm)
        if actual != expected.lower():
            raise DownloadError(f"{path}: {algorithm} {actual} does not match the published {expected}")


def _fetch(url: str, part: Path, timeout: float) -> None:
    """Append the rest of ``url`` to ``part``, resuming from its current size."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to fetch: the part file is complete
            return
        raise
    with response:
        if offset and response.status != 206:  # the server ignored Range: start over
            offset = 0
        total = response.headers.get("Content-Length")
        total = int(total) + offset if total is not None else None
        with open(part, "ab" if offset else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=part.name[: -len(".part")],
            leave=False, disable=None, file=sys.stderr,
        ) as progress:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                progress.update(len(chunk))
        if total is not None and part.stat().st_size < total:
            raise DownloadError(f"{url}: connection closed after {part.stat().st_size} of {total} bytes")


def download(resource: Resource, dest_dir: Path, retries: int = 3, timeout: float = 60.0) -> Path:
    """Download ``resource`` into ``dest_dir`` (resuming, verifying); returns the file's path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / resource.filename
    if path.exists():
        return path  # only verified files are ever renamed into place
    part = path.with_name(path.name + ".part")
    for attempt in range(1, retries + 1):
        try:
            _fetch(resource.url, part, timeout)
            break
        except (urllib.error.URLError, OSError, DownloadError) as err:
            if attempt == retries:
                raise DownloadError(f"{resource.url}: download failed after {retries} attempts ({err})") from err
            print(f"[download] {resource.filename}: {err}; resuming (attempt {attempt + 1}/{retries})", file=sys.stderr)
            time.sleep(min(30.0, 2.0**attempt))
    if resource.size and part.stat().st_size < resource.size:
        raise DownloadError(
            f"{part}: {part.stat().st_size} of {resource.size} bytes arrived; run again to resume the download"
        )
    try:
        verify(part, resource)
    except DownloadError as err:
        part.unlink()  # a corrupt file cannot be resumed into a good one
        raise DownloadError(f"{err}; the partial file was deleted, run again to re-download") from err
    part.rename(path)
    return path


def extract(archive: Path, dest_dir: Path, marker_name: str) -> None:
    """Unpack a tar archive into ``dest_dir`` once; a marker file records completion."""
    marker = dest_dir / f".{marker_name}.extracted"
    if marker.exists():
        return
    staging = dest_dir / f".{marker_name}.extracting"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")  # "data" refuses absolute paths and links out
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(
            f"{archive}: corrupt or unreadable archive ({err}); delete it and run again to re-download"
        ) from err
    for entry in staging.iterdir():
        target = dest_dir / entry.name
        if target.exists() and entry.is_dir():
            _merge(entry, target)  # e.g. LibriSpeech/ shared by several subsets
        else:
            entry.rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    marker.touch()


def _merge(source: Path, target: Path) -> None:
    for entry in source.iterdir():
        destination = target / entry.name
        if destination.exists() and entry.is_dir():
            _merge(entry, destination)
        elif destination.exists():
            destination.unlink()
            entry.rename(destination)
        else:
            entry.rename(destination)
