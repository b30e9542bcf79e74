"""Lesion contrast-to-noise ratio exactly as the paper measures it, from physical-space circular ROIs.

Per lesion: circles of ``fraction`` x short-axis diameter in the lesion, the descending thoracic aorta
(DTA) and right/left subcutaneous fat, all on the lesion's axial slice; noise = sqrt((SD_r^2 + SD_l^2)/2);
CNR = |mean_DTA - mean_lesion| / noise. SD is the sample SD (ddof=1). The same physical circles apply to
every volume, so NCCT, sCECT and CECT on different grids are measured at the same place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .rois import LesionROI
from ..io.volume import Volume

MIN_VOXELS = 5
ROI_NAMES = ("lesion", "dta", "right_fat", "left_fat")


class ROIError(ValueError):
    """An ROI cannot be measured on a volume (off the image, too few voxels, zero noise)."""


@dataclass
class CircleROI:
    slice_index: int
    mask: np.ndarray  # (y, x) bool on that slice
    area_mm2: float

    @property
    def voxels(self) -> int:
        return int(self.mask.sum())


def circle_roi(volume: Volume, center_lps, diameter_mm: float, name: str = "ROI") -> CircleROI:
    """Voxels of the slice nearest ``center`` whose centres lie within diameter/2 of it, in the slice plane."""
    shape_zyx = volume.array.shape
    idx = volume.physical_to_index(center_lps)  # continuous (i, j, k)
    k = int(round(idx[2]))
    if not (0 <= k < shape_zyx[0]) or abs(idx[2] - k) > 0.5 + 1e-6:
        raise ROIError(f"{name} ROI centre (z index {idx[2]:.2f}) lies outside the volume's {shape_zyx[0]} slices")
    radius = diameter_mm / 2.0
    sx, sy = volume.spacing[0], volume.spacing[1]
    ri, rj = radius / sx, radius / sy
    if idx[0] - ri < -0.5 or idx[0] + ri > shape_zyx[2] - 0.5 or idx[1] - rj < -0.5 or idx[1] + rj > shape_zyx[1] - 0.5:
        raise ROIError(f"{name} ROI of {diameter_mm:.1f} mm at index ({idx[0]:.1f}, {idx[1]:.1f}) runs off the image")
    jj, ii = np.mgrid[0 : shape_zyx[1], 0 : shape_zyx[2]]
    # The slice's row and column axes are orthonormal, so a voxel's distance from the centre in the slice plane is
    # the hypotenuse of its offsets along them, whatever the volume's direction; the direction enters through idx.
    mask = np.hypot((ii - idx[0]) * sx, (jj - idx[1]) * sy) <= radius + 1e-9
    roi = CircleROI(k, mask, float(mask.sum() * sx * sy))
    if roi.voxels < MIN_VOXELS:
        raise ROIError(f"{name} ROI of {diameter_mm:.2f} mm covers {roi.voxels} voxels, fewer than {MIN_VOXELS}")
    return roi


def roi_stats(volume: Volume, roi: CircleROI) -> dict:
    values = volume.array[roi.slice_index][roi.mask].astype(np.float64)
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)), "voxels": roi.voxels, "area_mm2": roi.area_mm2}


def cnr_from_stats(lesion: dict, dta: dict, right_fat: dict, left_fat: dict) -> tuple[float, float]:
    """(noise, CNR) from ROI means and SDs, the paper's formula."""
    noise = math.sqrt((right_fat["sd"] ** 2 + left_fat["sd"] ** 2) / 2.0)
    if noise == 0:
        raise ROIError("background noise is zero (both fat ROIs are uniform): CNR undefined")
    return noise, abs(dta["mean"] - lesion["mean"]) / noise


def measure_lesion(volume: Volume, lesion: LesionROI) -> dict:
    """All four ROIs of one lesion on one volume, with noise and CNR; raises ROIError if unmeasurable."""
    points = {"lesion": lesion.center, **lesion.references}
    stats = {name: roi_stats(volume, circle_roi(volume, points[name], lesion.diameter_mm, name)) for name in ROI_NAMES}
    noise, cnr = cnr_from_stats(stats["lesion"], stats["dta"], stats["right_fat"], stats["left_fat"])
    return {"stats": stats, "noise": noise, "cnr": cnr}


def cnr_uncertainty(sd_map: Volume, lesion: LesionROI, noise: float) -> dict:
    """The CNR's uncertainty from a synthetic image's SD map: the mean SD in the lesion and DTA circles, combined
    in quadrature and divided by the noise. Taking the mean voxel SD as the SD of the ROI mean assumes the
    samples' errors are fully correlated inside a circle, so it is an upper bound."""
    points = {"lesion": lesion.center, "dta": lesion.references["dta"]}
    means = {}
    for name, point in points.items():
        roi = circle_roi(sd_map, point, lesion.diameter_mm, name)
        means[name] = float(sd_map.array[roi.slice_index][roi.mask].mean())
    return {"lesion_sd_map_mean": means["lesion"], "dta_sd_map_mean": means["dta"],
            "cnr_uncertainty": math.hypot(means["lesion"], means["dta"]) / noise}


def measure_cnr(volumes: dict[str, Volume], lesions: list[LesionROI], sd_maps: dict[str, Volume] | None = None) -> list[dict]:
    """One row per (lesion, volume); an unmeasurable lesion gets its error and the others are still measured.
    Volumes with an SD map in ``sd_maps`` (same name) also get the CNR's uncertainty (``cnr_uncertainty``)."""
    sd_maps = sd_maps or {}
    rows = []
    for lesion in lesions:
        for vol_name, volume in volumes.items():
            row = {"lesion": lesion.lesion_id, "volume": vol_name, "roi_diameter_mm": lesion.diameter_mm, "error": ""}
            try:
                m = measure_lesion(volume, lesion)
                for roi, s in m["stats"].items():
                    for key, value in s.items():
                        row[f"{roi}_{key}"] = value
                row.update(noise=m["noise"], cnr=m["cnr"])
                if vol_name in sd_maps:
                    row.update(cnr_uncertainty(sd_maps[vol_name], lesion, m["noise"]))
            except ROIError as exc:
                row.update(noise=float("nan"), cnr=float("nan"), error=str(exc))
            rows.append(row)
    return rows


def summarize_cnr(rows: list[dict]) -> dict:
    """Median (IQR) of CNR and noise per volume and paired tests between every pair of volumes."""
    from itertools import combinations

    from .stats import median_iqr, paired_comparison

    names = list(dict.fromkeys(r["volume"] for r in rows))
    by = {n: {r["lesion"]: r for r in rows if r["volume"] == n} for n in names}
    lesions = list(dict.fromkeys(r["lesion"] for r in rows))
    summary = {"volumes": {}, "comparisons": []}
    for n in names:
        summary["volumes"][n] = {k: median_iqr([by[n][l][k] for l in lesions]) for k in ("cnr", "noise")}
    for a, b in combinations(names, 2):
        for key in ("cnr", "noise"):
            cmp = paired_comparison([by[a][l][key] for l in lesions], [by[b][l][key] for l in lesions])
            summary["comparisons"].append({"a": a, "b": b, "measure": key, **cmp})
    return summary
