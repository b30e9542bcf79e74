"""Atomic file writing: results appear under their final name complete or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import InputError, OutputError


@contextlib.contextmanager
def atomic_path(final: str | Path):
    """Yield a temporary path beside ``final`` (same suffixes, so writers pick the right format); rename on success."""
    final = Path(final)
    suffix = "".join(final.suffixes) or ".tmp"
    for parent in (final.parent, *final.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(parent, "cannot write here: it is a file, not a folder")
            break
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name.split('.')[0]}.", suffix=f".partial{suffix}", dir=final.parent)
    except OSError as exc:
        raise OutputError(final.parent, f"cannot write here: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp makes private (0600) files; results should get the permissions a plain write would give.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    except OSError as exc:
        raise OutputError(final, f"writing failed: {exc.strerror or exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | Path):
    """Yield a new, empty folder beside ``final``; on success it is renamed to ``final`` (absent, or an empty folder),
    and on any failure it is removed, so ``final`` holds every file or none."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    except OSError as exc:
        raise OutputError(final.parent, f"cannot write here: {exc.strerror or exc}") from exc
    try:
        yield staging
        if final.exists():
            final.rmdir()
        os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_text(final: str | Path, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_csv(final: str | Path, rows: list[dict], fields=None) -> None:
    """A CSV of dict rows; columns are ``fields`` or every key in order of first appearance."""
    import csv

    fields = list(fields) if fields is not None else list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(final) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fields)
            writer.writeheader()
            writer.writerows(rows)


def sha256_of(path: str | Path) -> str:
    """The file's sha256, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: Windows refuses these as a file's name whatever its extension.
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
#: Bytes a name made from user text may take: room is left for suffixes ('_sCECT_synthetic.nii.gz', '.partial')
#: within the 255 bytes most file systems allow.
NAME_BYTES = 120


def safe_file_name(text: str, max_bytes: int = NAME_BYTES) -> str:
    """A file or folder name made from user text (a node's name, a case's path) that is valid on Windows, macOS and
    Linux: letters, digits, '-', '_' and '.', never a reserved device name, and at most ``max_bytes``; a name cut
    short ends with a hash of the whole text, so two long names stay two names."""
    import hashlib

    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._ ") or "unnamed"
    if name.split(".")[0].upper() in WINDOWS_RESERVED:
        name = "_" + name
    if len(name.encode("utf-8")) > max_bytes:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
        cut = name.encode("utf-8")[: max_bytes - 9].decode("utf-8", "ignore")
        name = f"{cut}-{digest}"
    return name


def read_json_object(path: str | Path, what: str) -> dict:
    """A JSON file that must hold an object (ROI file, model card, study, plan, ratings): any other content is a
    one-line error naming the file, never a traceback from the first ``.get`` on a list."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(path, "does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"is not readable {what} JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(path, f"is not {what}: it holds a JSON {type(data).__name__}, where {what} is a JSON object")
    return data

