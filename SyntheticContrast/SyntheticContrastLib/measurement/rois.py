"""The ROI JSON format shared by phantom annotations, the CNR command and the Slicer ROI workflow.

Points are physical millimetres in LPS (DICOM/ITK) unless ``coordinate_system`` says RAS. A lesion is a
short-axis line (two end points; the circle is centred at its midpoint) or a centre plus diameter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..fileio import atomic_write_text

ROI_FORMAT = "synthetic-contrast-rois/1"
REFERENCE_NAMES = ("dta", "right_fat", "left_fat")


@dataclass
class LesionROI:
    """One lesion with the reference points measured on its slice, all in LPS mm."""

    lesion_id: str
    center: np.ndarray
    diameter_mm: float
    references: dict[str, np.ndarray]
    short_axis: tuple[np.ndarray, np.ndarray] | None = None
    extra: dict = field(default_factory=dict)


def _lps(point, system: str, where: str) -> np.ndarray:
    p = np.asarray(point, dtype=float)
    if p.shape != (3,) or not np.all(np.isfinite(p)):
        raise ValueError(f"{where}: expected three finite coordinates, got {point!r}")
    return p * np.array([-1.0, -1.0, 1.0]) if system == "RAS" else p


def parse_rois(data: dict, source: str | Path = "<rois>") -> list[LesionROI]:
    """Validate ROI JSON and return lesions in LPS; top-level references are projected to each lesion's slice."""
    if data.get("format") != ROI_FORMAT:
        raise InputError(source, f"not an ROI file (format {data.get('format')!r}, expected {ROI_FORMAT!r})")
    system = str(data.get("coordinate_system", "LPS")).upper()
    if system not in ("LPS", "RAS"):
        raise InputError(source, f"coordinate_system must be LPS or RAS, got {system!r}")
    fraction = float(data.get("roi_diameter_fraction", 0.9))
    shared = data.get("references", {})
    if not isinstance(data.get("lesions", []), list) or not isinstance(shared, dict):
        raise InputError(source, "'lesions' must be a list of lesion objects and 'references' an object of named points")
    lesions = []
    try:
        for n, item in enumerate(data.get("lesions", [])):
            if not isinstance(item, dict) or not isinstance(item.get("references", {}), dict):
                raise ValueError(f"lesion {n + 1} must be an object (id, short_axis or center, references)")
            lid = str(item.get("id", f"lesion{n + 1}"))
            if "short_axis" in item:
                a, b = (_lps(p, system, f"lesion {lid} short_axis") for p in item["short_axis"])
                center, short = (a + b) / 2, (a, b)
                short_mm = float(np.linalg.norm(b - a))
            elif "center" in item and "short_axis_mm" in item:
                center, short = _lps(item["center"], system, f"lesion {lid} center"), None
                short_mm = float(item["short_axis_mm"])
            else:
                raise ValueError(f"lesion {lid} needs 'short_axis' (two points) or 'center' with 'short_axis_mm'")
            refs = {}
            for name in REFERENCE_NAMES:
                point = item.get("references", {}).get(name, shared.get(name))
                if point is None:
                    raise ValueError(f"lesion {lid} has no '{name}' reference point")
                p = _lps(point, system, f"lesion {lid} reference {name}")
                if name not in item.get("references", {}):
                    p[2] = center[2]  # a shared point is used on the lesion's own axial slice
                refs[name] = p
            extra = {"short_axis_mm": short_mm}
            if item.get("weight") is not None:  # a reader study's lesion weight (wAFROC); equal weights when absent
                extra["weight"] = float(item["weight"])
            lesions.append(LesionROI(lid, center, fraction * short_mm, refs, short, extra))
    except ValueError as exc:
        raise InputError(source, str(exc)) from exc
    return lesions


def read_rois(path: str | Path) -> list[LesionROI]:
    from ..fileio import read_json_object

    return parse_rois(read_json_object(path, "an ROI file"), Path(path))


def write_rois(data: dict, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
