"""The JSON sidecar beside every synthetic volume file (``<name>.json``, as BIDS does): the full provenance, the
model's full sha256, the out-of-distribution findings, the reader's and engine's notes and the versions, which a
NIfTI header (80 characters of free text) cannot hold. It names the image's own sha256, so it is trusted only
beside the file it was written for."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

from ..fileio import atomic_write_text, sha256_of
from .volume import PROVENANCE_PREFIX, strip_volume_suffix

FORMAT = "synthetic-contrast-sidecar/1"


def sidecar_path(image: Path) -> Path:
    """'x_synthetic.nii.gz' -> 'x_synthetic.json', beside it."""
    image = Path(image)
    return image.with_name(strip_volume_suffix(image.name) + ".json")


def _versions() -> dict:
    import numpy
    import SimpleITK

    from .. import __version__

    versions = {"synthetic-contrast": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
                "SimpleITK": SimpleITK.Version_VersionString()}
    if "torch" in sys.modules:  # only what made the image: no import just to name a version
        versions["torch"] = sys.modules["torch"].__version__
    return versions


def provenance_record(metadata: dict) -> dict | None:
    """The provenance of a synthetic volume (its metadata says so) as one JSON object, or None for any other."""
    if metadata.get(PROVENANCE_PREFIX + "synthetic") != "true":
        return None
    fields = {k[len(PROVENANCE_PREFIX):]: v for k, v in metadata.items() if k.startswith(PROVENANCE_PREFIX)}
    return {"format": FORMAT, **fields, "versions": _versions()}


def write_sidecar(image: Path, metadata: dict) -> Path | None:
    """For a synthetic volume (its metadata says so), the sidecar of the file just written; else nothing."""
    provenance = provenance_record(metadata)
    if provenance is None:
        return None
    record = {"format": FORMAT, "image": Path(image).name, "image_sha256": sha256_of(image), **provenance}
    atomic_write_text(sidecar_path(image), json.dumps(record, indent=2, default=str) + "\n")
    return sidecar_path(image)


def read_sidecar(image: Path) -> dict | None:
    """The sidecar of ``image`` if there is one and it was written for this very file; None otherwise."""
    path = sidecar_path(image)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("image_sha256") != sha256_of(image):
        return None
    return record
