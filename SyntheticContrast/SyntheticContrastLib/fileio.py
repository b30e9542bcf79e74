"""Atomic file writing: results appear under their final name complete or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import OutputError


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
