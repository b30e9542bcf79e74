"""Out-of-distribution checks: each input is compared with the statistics of the CT its model was trained on.

Training stores the statistics in the model card (``input_statistics``); before synthesis the engine measures
the same things on the input and reports every one that falls outside, with its figure and the card's range.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from .anatomy import body_mask, bone_mask, mediastinal_box
from ..io.orientation import AxialLayout
from ..io.volume import Volume

FORMAT = "synthetic-contrast-input-statistics/1"
#: Histogram of body voxels: 10-HU bins over the range a CT can store.
HIST_EDGES = np.arange(-1030.0, 3080.0, 10.0)
SOFT_TISSUE_HU = (0.0, 400.0)  # where an unenhanced or an enhanced blood pool lies
#: Physiology, not training data: unenhanced blood measures about 35-55 HU, an arterial-phase aorta 200+.
ENHANCED_BLOOD_HU = 120.0
STORABLE_HU = (-1024.0, 3071.0)



@dataclass
class Finding:
    """One way the input differs from the training data, with its figure and what the card allows."""

    check: str
    message: str
    value: float
    allowed: str

    def line(self) -> str:
        return f"out-of-distribution: {self.message}"


def brightest_soft_tissue_mode(values: np.ndarray, min_share: float = 0.03) -> float:
    """The highest-HU peak of the body's 0-400 HU histogram that holds at least ``min_share`` of those voxels
    within +-25 HU: the blood pool when it is enhanced, muscle and blood (40-60 HU) when it is not."""
    lo, hi = SOFT_TISSUE_HU
    tissue = values[(values >= lo) & (values <= hi)]
    if tissue.size == 0:
        return float("nan")
    counts, edges = np.histogram(tissue, bins=np.arange(lo, hi + 5.0, 5.0))
    smooth = np.convolve(counts, np.ones(5) / 5.0, mode="same")
    centres = (edges[:-1] + edges[1:]) / 2
    peaks = [i for i in range(1, len(smooth) - 1) if smooth[i] >= smooth[i - 1] and smooth[i] >= smooth[i + 1] and smooth[i] > 0]
    heavy = [i for i in peaks if counts[max(0, i - 5): i + 6].sum() >= min_share * tissue.size]
    return float(centres[max(heavy)]) if heavy else float(centres[int(np.argmax(smooth))])


def measure(volume: Volume) -> dict:
    """The figures the checks compare: spacing, body size and coverage, HU histogram, blood pool, bad voxels.
    Measured in the axial LPS voxel order the network sees, whatever the acquisition plane."""
    layout = AxialLayout.of(volume.direction)
    array = layout.to_axial(volume.array)
    mask = body_mask(array)
    body = array[mask]
    hist, _ = np.histogram(np.clip(body, HIST_EDGES[0], HIST_EDGES[-1] - 1e-3), bins=HIST_EDGES)
    areas = mask.sum(axis=(1, 2))
    widest = int(np.argmax(areas)) if areas.size else 0
    rows, cols = np.nonzero(mask[widest]) if areas.size and areas[widest] else (np.array([0]), np.array([0]))
    sx, sy, sz = layout.spacing(volume.spacing)
    return {
        "inplane_spacing_mm": float(np.sqrt(sx * sy)),
        "slice_spacing_mm": sz,
        "body_width_mm": float((cols.max() - cols.min() + 1) * sx),
        "body_depth_mm": float((rows.max() - rows.min() + 1) * sy),
        "body_fraction_of_fov": float(areas[widest] / (array.shape[1] * array.shape[2])) if areas.size else 0.0,
        "z_coverage_mm": float(array.shape[0] * sz),
        "blood_pool_hu": brightest_soft_tissue_mode(array[mediastinal_box(mask) & ~bone_mask(array, float(np.sqrt(sx * sy)))]),
        "outside_storable_fraction": float(np.mean((array < STORABLE_HU[0]) | (array > STORABLE_HU[1]))),
        "hu_histogram": (hist / max(1, hist.sum())).astype(float).tolist(),
    }


def _wasserstein(hist_a, hist_b) -> float:
    centres = (HIST_EDGES[:-1] + HIST_EDGES[1:]) / 2
    if not np.sum(hist_a) or not np.sum(hist_b):
        return float("inf")
    return float(stats.wasserstein_distance(centres, centres, hist_a, hist_b))


# z coverage is measured but not checked: a sliding window handles any length, and real scans are longer than phantoms.
RANGED = ("inplane_spacing_mm", "slice_spacing_mm", "body_width_mm", "body_depth_mm", "body_fraction_of_fov")


def training_statistics(volumes: list[Volume], tolerance: float = 0.1, distance_margin: float = 1.5) -> dict:
    """What a model card keeps about its training inputs, and the thresholds the checks use.

    Ranged figures may differ by ``tolerance`` (a fraction) beyond the training range. The HU distance threshold is
    the largest distance of any training input to the mean histogram, times ``distance_margin``.
    """
    if not volumes:
        raise ValueError("input statistics need at least one training volume")
    measured = [measure(v) for v in volumes]
    reference = np.mean([m["hu_histogram"] for m in measured], axis=0)
    distances = [_wasserstein(m["hu_histogram"], reference) for m in measured]
    return {
        "format": FORMAT,
        "volumes": len(measured),
        "ranges": {k: [min(m[k] for m in measured), max(m[k] for m in measured)] for k in RANGED},
        "range_tolerance": tolerance,
        "hu_histogram_edges": [float(HIST_EDGES[0]), float(HIST_EDGES[-1]), 10.0],
        "hu_histogram": reference.tolist(),
        "hu_distance_training_max": max(distances),
        "hu_distance_threshold": max(distances) * distance_margin,
        "blood_pool_hu": [min(m["blood_pool_hu"] for m in measured), max(m["blood_pool_hu"] for m in measured)],
        "enhanced_blood_threshold_hu": ENHANCED_BLOOD_HU,
        "outside_storable_threshold": 0.001,
    }


LABELS = {
    "inplane_spacing_mm": ("in-plane pixel spacing", "mm"),
    "slice_spacing_mm": ("slice spacing", "mm"),
    "body_width_mm": ("body width (left-right)", "mm"),
    "body_depth_mm": ("body depth (front-back)", "mm"),
    "body_fraction_of_fov": ("share of the field of view covered by the body", ""),
}


def check(volume: Volume, statistics: dict | None) -> list[Finding]:
    """Every way ``volume`` lies outside the training statistics; empty when it is inside all of them."""
    if not statistics:
        return []
    figures = measure(volume)
    findings = []
    tolerance = float(statistics.get("range_tolerance", 0.0))
    for key, (lo, hi) in statistics["ranges"].items():
        value = figures[key]
        if not lo * (1 - tolerance) <= value <= hi * (1 + tolerance):
            name, unit = LABELS.get(key, (key, ""))
            allowed = f"{lo:.3g}-{hi:.3g}{(' ' + unit) if unit else ''} (+-{tolerance:.0%})"
            findings.append(Finding(key, f"{name} is {value:.3g}{(' ' + unit) if unit else ''}; the model was trained on {allowed}", value, allowed))
    distance = _wasserstein(figures["hu_histogram"], statistics["hu_histogram"])
    threshold = float(statistics["hu_distance_threshold"])
    if distance > threshold:
        findings.append(Finding("hu_distribution", f"HU distribution of the body differs from the training data: Wasserstein distance "
                                f"{distance:.1f} HU, threshold {threshold:.1f} HU (training inputs reach {statistics['hu_distance_training_max']:.1f})",
                                distance, f"<= {threshold:.1f} HU"))
    blood, limit = figures["blood_pool_hu"], float(statistics.get("enhanced_blood_threshold_hu", ENHANCED_BLOOD_HU))
    if blood > limit:
        findings.append(Finding("already_enhanced", f"the input looks contrast-enhanced already: brightest soft-tissue mode {blood:.0f} HU "
                                f"(unenhanced blood is 35-55 HU; threshold {limit:.0f} HU; training inputs {statistics['blood_pool_hu'][0]:.0f}-"
                                f"{statistics['blood_pool_hu'][1]:.0f} HU)", blood, f"<= {limit:.0f} HU"))
    outside, limit = figures["outside_storable_fraction"], float(statistics.get("outside_storable_threshold", 0.001))
    if outside > limit:
        findings.append(Finding("outside_storable_hu", f"{outside:.2%} of voxels lie outside -1024..3071 HU (threshold {limit:.1%})",
                                outside, f"<= {limit:.1%}"))
    return findings


def summary(findings: list[Finding]) -> str:
    """One line for a header, a manifest cell or DICOM ImageComments: 'none' or the findings joined."""
    return "; ".join(f.message for f in findings) if findings else "none"


def as_dicts(findings: list[Finding]) -> list[dict]:
    return [asdict(f) for f in findings]
