"""Write-temp-then-rename: a file either keeps its old content or gets the whole new one
(and :func:`json_safe`, for the JSON written that way).

Every temporary file is ``.NAME.RANDOM.tmp`` in the target's own folder (a rename across
file systems is not atomic), so a process killed mid-write leaves only files that
:func:`remove_stale_temporaries` recognises.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"
# Wall-clock time this process started (approximately: when asr was first imported). A
# temporary file older than this was left by an earlier process, e.g. one killed by kill -9.
PROCESS_START = time.time()


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a file name (torch.jit.save,
    onnx.save, an external tool); on leaving the block it is fsynced and renamed over
    ``path``, on any failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as written:  # the writer may have replaced the file: sync what is there now
            os.fsync(written.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give it normal file permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """``open(path, mode)`` that replaces ``path`` only once the block has finished writing."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else encoding) as out:
        yield out
        out.flush()


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` to build a whole folder in, renamed to ``path`` at
    the end (which must not exist yet); removed on any failure."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as written:
                    os.fsync(written.fileno())
                os.chmod(file, 0o666 & ~_umask())  # some writers (and mkstemp) create 0600
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        # rename() would silently replace an empty folder created meanwhile (and fail on a
        # non-empty one); check again so that neither is ever replaced. A folder created between
        # this check and the rename is the one race left, and rename still refuses it unless empty.
        if path.exists():
            raise FileExistsError(f"{path} already exists")
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float (nested in dicts, lists, tuples) turned into
    None: strict JSON parsers reject NaN and Infinity, so JSON files written here hold null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def stale_temporaries(folder: str | Path, name: str = "*", older_than: float = PROCESS_START) -> list[Path]:
    """Temporary files (or folders) of :func:`atomic_path` in ``folder`` for targets named
    like the glob ``name``, last modified before ``older_than`` (seconds since the epoch):
    leftovers of a killed writer."""
    found = []
    for candidate in Path(folder).glob(f".{name}.*{TEMP_SUFFIX}"):
        try:
            if candidate.stat().st_mtime < older_than:
                found.append(candidate)
        except FileNotFoundError:  # its writer just finished or cleaned up
            continue
    return sorted(found)


def remove_stale_temporaries(folder: str | Path, name: str = "*", older_than: float = PROCESS_START) -> list[Path]:
    """Delete what :func:`stale_temporaries` finds; returns the removed paths."""
    removed = []
    for stale in stale_temporaries(folder, name, older_than):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed
