"""Checks of the output against physiology: the enhancement map (sCECT minus NCCT) must obey what iodinated contrast
can do, per tissue class found in the NCCT alone, and stay within what the model's training targets showed.

Needs no reference CECT and no second model. Bounds and how they were chosen are in docs/trust.md and the model card.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, stats

from .anatomy import body_mask
from .ood import Finding
from ..io.orientation import AxialLayout
from ..io.volume import Volume

FORMAT = "synthetic-contrast-enhancement-statistics/1"

#: NCCT HU classes (inside the body unless said). Cancellous bone is what cortical bone encloses; the rest by HU.
CLASSES = ("air", "lung", "fat", "soft_tissue", "cancellous_bone", "cortical_bone")
LABELS = {"air": "air", "lung": "lung", "fat": "fat", "soft_tissue": "soft tissue and blood",
          "cancellous_bone": "cancellous bone", "cortical_bone": "cortical bone"}
AIR_HU, LUNG_HU, FAT_HU, SOFT_HU, CORTEX_HU = -900.0, (-900.0, -500.0), (-190.0, -30.0), (-30.0, 150.0), 600.0

# Physics bounds. Contrast raises attenuation and never lowers it; it stays in blood and the interstitium, so air, fat
# and cortical bone do not enhance, lung parenchyma by tens of HU, blood by hundreds.
PHYSICS = {
    # Largest median enhancement (HU) a class may show; absent: no physics bound (blood and perfused tissue).
    "median_ceiling_hu": {"air": 25.0, "lung": 40.0, "fat": 10.0, "cortical_bone": 25.0},
    # How much a class may enhance beyond noise before a region of it counts (HU): 0 where contrast does not reach,
    # lung parenchyma's tens of HU; absent (blood, perfused tissue): no region bound.
    "region_allowance_hu": {"air": 0.0, "fat": 0.0, "cortical_bone": 0.0, "lung": 60.0},
    # Contrast never darkens tissue: a class median below this is not noise.
    "median_floor_hu": -10.0,
    # A connected region bigger than this (mL), enhanced or darkened beyond noise where physics forbids it, is a
    # finding: about a 10 mm sphere, far above what noise forms and below a lymph node or a vessel segment.
    "region_ml": 0.5,
    # Beyond noise: this many robust SDs of the NCCT in fat (on the reduced grid), and never under the floor (HU).
    "noise_sds": 4.0,
    "noise_floor_hu": 20.0,
    # No blood reaches this much enhancement (HU); undiluted contrast inflow in the SVC stays below it.
    "ceiling_hu": 1200.0,
    # Soft tissue within this depth of the skin (mm) is the body wall's muscle, which enhances by tens of HU; its
    # vessels are millimetres wide. A connected region of it enhanced beyond the HU below and larger than this (mL)
    # is contrast painted into muscle (the mediastinum's blood pool lies deeper).
    "body_wall_mm": 40.0,
    "body_wall_enhanced_hu": 100.0,
    "body_wall_region_ml": 10.0,
}
#: Training bounds: the class medians' range widened by this, shares by this factor, distances by this margin and
#: never under the floor. 10 HU is about 7 grey levels at the mediastinal window (W350): a class whose targets hardly
#: vary (air, fat) would otherwise get a bound tighter than anything a reader can see.
MEDIAN_TOLERANCE_HU, SHARE_MARGIN, DISTANCE_MARGIN, DISTANCE_FLOOR_HU = 10.0, 1.5, 1.5, 10.0
#: How each family of bounds was chosen, kept in the card beside the values (docs/trust.md has the full table).
HOW_CHOSEN = {
    "physics": "what iodinated contrast can do, independent of any model: it never lowers attenuation (median floor, "
               "darkened regions), does not reach air, fat or cortical bone (their median ceilings and regions, beyond "
               "noise = noise_sds robust SDs of the NCCT in fat, at least noise_floor_hu), raises lung parenchyma by tens "
               "of HU (its ceiling and region allowance), stays below ceiling_hu in any vessel, and enhances the body "
               "wall's muscle by tens of HU only; regions over region_ml (about a 10 mm ball) count, smaller ones are noise",
    "training": "the training targets' own enhancement (CECT minus NCCT per class, over these pairs), widened as the "
                "input check's thresholds are: class means (not medians: a model keeps its input's "
                "noise and a target carries two scans', which moves a mixed class's median and not its mean) by "
                "+-median_tolerance_hu, the share over 100 HU by "
                "share_margin x the largest + 0.5 %, and the Wasserstein distance of block means to the training mean by "
                "distance_margin x the largest training distance, never under distance_floor_hu (about 7 grey levels "
                "at W350); block means because a target carries two scans' noise and a synthetic image does not",
}
#: Enhancement histogram of block means: 5-HU bins over what blood can reach, both signs.
HIST_EDGES = np.arange(-500.0, 1505.0, 5.0)
ENHANCED_HU = 100.0  # a voxel enhanced more than this is vessel or heart, not parenchyma
MIN_CLASS_VOXELS = 500  # on the reduced grid; fewer cannot give a stable median
MIN_BLOCKS = 20  # blocks of a class for its enhancement histogram; fewer, and the distance is not checked
AIR_MARGIN_VOXELS = 7  # reduced-grid voxels around the body (about 10 mm at 0.7 mm pixels) where air counts

#: Labels of the violation map.
MAP_LABELS = {1: "enhanced where contrast cannot reach", 2: "darker than the NCCT", 3: "above the enhancement ceiling"}


@dataclass
class PlausibilityFinding(Finding):
    """A way the output's enhancement breaks physics or the training targets, with its figure and its bound."""

    def line(self) -> str:
        return f"implausible enhancement: {self.message}"


def _reduce(array: np.ndarray) -> np.ndarray:
    """2x2 in-plane block means (1.4 mm for 0.7 mm pixels): a quarter of the voxels, half the noise, same anatomy."""
    z, y, x = array.shape
    a = array[:, : y - y % 2, : x - x % 2].astype(np.float32, copy=False)
    if a.shape[1] < 2 or a.shape[2] < 2:
        return array.astype(np.float32)
    # Four strided views summed: an eighth of the time of a reshaped mean (0.02 s against 0.16 s on 48 x 512 x 512).
    out = a[:, 0::2, 0::2] + a[:, 1::2, 0::2]
    out += a[:, 0::2, 1::2]
    out += a[:, 1::2, 1::2]
    return out * np.float32(0.25)


def _expand(mask: np.ndarray, shape: tuple) -> np.ndarray:
    """A reduced-grid mask back on the full grid (the odd last row or column stays 0)."""
    if mask.shape == shape:
        return mask
    full = np.zeros(shape, mask.dtype)
    big = mask.repeat(2, axis=1).repeat(2, axis=2)
    full[:, : big.shape[1], : big.shape[2]] = big
    return full


def classify(ncct: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tissue classes of an axial NCCT (reduced grid), each eroded by one voxel so that partial volume at a border
    (fat beside an enhancing vessel) is not taken for the class."""
    body = body_mask(ncct)
    cortex = body & (ncct > CORTEX_HU)
    enclosed = np.zeros_like(cortex)
    structure = ndimage.generate_binary_structure(2, 1)
    for z in np.nonzero(cortex.any(axis=(1, 2)))[0]:
        closed = ndimage.binary_closing(cortex[z], structure, iterations=2, border_value=0)
        enclosed[z] = ndimage.binary_fill_holes(closed | cortex[z]) & ~cortex[z]
    cancellous = enclosed & (ncct > SOFT_HU[0])
    # Air in and around the patient: a FOV's far corners, where a network's padding shows, are nobody's anatomy.
    near = ndimage.binary_dilation(body, ndimage.generate_binary_structure(3, 1)[1:2], iterations=AIR_MARGIN_VOXELS)
    classes = {
        "air": near & (ncct < AIR_HU),
        "lung": body & (ncct >= LUNG_HU[0]) & (ncct < LUNG_HU[1]),
        "fat": body & (ncct >= FAT_HU[0]) & (ncct <= FAT_HU[1]) & ~enclosed,
        "soft_tissue": body & (ncct > SOFT_HU[0]) & (ncct <= SOFT_HU[1]) & ~enclosed,
        "cancellous_bone": cancellous,
        "cortical_bone": cortex,
    }
    return {name: ndimage.binary_erosion(mask, border_value=1) for name, mask in classes.items()}, body


def skin_depth_mm(body: np.ndarray, step_mm: tuple) -> np.ndarray:
    """Per slice, each body voxel's in-plane distance (mm) to the nearest voxel outside the body."""
    depth = np.zeros(body.shape, np.float32)
    for z in np.nonzero(body.any(axis=(1, 2)))[0]:
        depth[z] = ndimage.distance_transform_edt(body[z], sampling=step_mm)
    return depth


def _largest_region_ml(mask: np.ndarray, voxel_ml: float, region_ml: float = PHYSICS["region_ml"]) -> tuple[float, np.ndarray]:
    """Volume of the largest connected region of ``mask`` and a mask of every region above ``region_ml``."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return 0.0, np.zeros(mask.shape, bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    big = sizes * voxel_ml > region_ml
    return float(sizes.max() * voxel_ml), big[labels]


BLOCK = (2, 4, 4)  # reduced-grid voxels (about 5 x 5.6 x 5.6 mm at 2.5 x 0.7 x 0.7 mm): the distance's scale


def block_means(enhancement: np.ndarray, mask: np.ndarray, min_share: float = 0.75) -> np.ndarray:
    """Mean enhancement of each block that lies mostly in the class: a training target's enhancement carries the
    noise of two scans and a synthetic one much less, so a per-voxel histogram would measure noise, not contrast."""
    bz, by, bx = BLOCK
    z, y, x = (d - d % b for d, b in zip(mask.shape, BLOCK))
    if min(z, y, x) == 0:
        return np.zeros(0, np.float32)
    m = mask[:z, :y, :x].reshape(z // bz, bz, y // by, by, x // bx, bx)
    e = np.where(mask, enhancement, 0.0)[:z, :y, :x].reshape(m.shape)
    count = m.sum(axis=(1, 3, 5))
    total = e.sum(axis=(1, 3, 5))
    keep = count >= min_share * bz * by * bx
    return (total[keep] / count[keep]).astype(np.float32)


def _histogram(values: np.ndarray) -> list[float]:
    counts, _ = np.histogram(np.clip(values, HIST_EDGES[0], HIST_EDGES[-1] - 1e-3), bins=HIST_EDGES)
    return (counts / max(1, counts.sum())).astype(float).tolist()


def _wasserstein(a, b) -> float:
    centres = (HIST_EDGES[:-1] + HIST_EDGES[1:]) / 2
    if not np.sum(a) or not np.sum(b):
        return float("inf")
    return float(stats.wasserstein_distance(centres, centres, a, b))


@dataclass
class Measurement:
    """Per-class enhancement figures, the noise level they were judged against, and where the violations lie."""

    classes: dict
    noise_hu: float
    threshold_hu: float
    voxel_ml: float
    violations: np.ndarray  # reduced grid, MAP_LABELS codes
    max_enhancement_hu: float

    def figures(self) -> dict:
        """What the sidecar and the report keep: no histograms, rounded."""
        return {"noise_hu": round(self.noise_hu, 2), "threshold_hu": round(self.threshold_hu, 2),
                "max_enhancement_hu": round(self.max_enhancement_hu, 1),
                "classes": {name: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in c.items() if k != "histogram"}
                            for name, c in self.classes.items()}}


def measure_arrays(ncct: np.ndarray, scect: np.ndarray, spacing_xyz: tuple, output_range_hu: tuple | None = None,
                   physics: dict = PHYSICS) -> Measurement:
    """Enhancement per NCCT class of two axial arrays on one grid; ``spacing_xyz`` in mm of the full grid.

    With ``output_range_hu`` (the model's), the NCCT is clipped to it first: air below -1000 HU or bone above
    +1000 HU that the model cannot write is not taken for enhancement or its loss."""
    n, s = _reduce(ncct), _reduce(scect)
    classes, body = classify(n)
    enhancement = (s - n) if output_range_hu is None else (np.clip(s, *output_range_hu) - np.clip(n, *output_range_hu))
    sx, sy, sz = spacing_xyz
    factor = 2 if n.shape != ncct.shape else 1  # _reduce keeps a grid too small to halve as it is
    step = (sy * factor, sx * factor)  # reduced-grid pixel (row, column) in mm
    voxel_ml = step[0] * step[1] * sz / 1000.0
    # The noise of the acquired image, not of the output: a model that denoises leaves that noise, negated, in the map.
    reference = classes["fat"] if classes["fat"].sum() >= MIN_CLASS_VOXELS else classes["soft_tissue"]
    values = n[reference]
    noise = float(1.4826 * np.median(np.abs(values - np.median(values)))) if values.size else 0.0
    threshold = max(physics["noise_sds"] * noise, physics["noise_floor_hu"])
    allowance = physics["region_allowance_hu"]
    raised = np.zeros(n.shape, bool)
    for name, extra in allowance.items():
        raised |= classes[name] & (enhancement > threshold + extra)
    any_class = np.zeros(n.shape, bool)
    for mask in classes.values():
        any_class |= mask
    lowered = any_class & body & (enhancement < -threshold)
    _, raised_regions = _largest_region_ml(raised, voxel_ml, physics["region_ml"])
    _, lowered_regions = _largest_region_ml(lowered, voxel_ml, physics["region_ml"])
    above = body & (enhancement > physics["ceiling_hu"])
    wall = classes["soft_tissue"] & (skin_depth_mm(body, step) < physics["body_wall_mm"])
    wall_ml, wall_regions = _largest_region_ml(wall & (enhancement > physics["body_wall_enhanced_hu"]), voxel_ml,
                                               physics["body_wall_region_ml"])
    figures = {}
    for name, mask in classes.items():
        e = enhancement[mask]
        if e.size < MIN_CLASS_VOXELS:
            figures[name] = {"voxels": int(e.size)}
            continue
        p1, p5, p50, p95, p99 = (float(v) for v in np.percentile(e, [1, 5, 50, 95, 99]))
        up, _ = _largest_region_ml(mask & (enhancement > threshold + allowance.get(name, 0.0)), voxel_ml)
        down, _ = _largest_region_ml(mask & (enhancement < -threshold), voxel_ml)
        figures[name] = {"voxels": int(e.size), "median": p50, "p1": p1, "p5": p5, "p95": p95, "p99": p99,
                         "share_above_threshold": float(np.mean(e > threshold)),
                         "share_below_threshold": float(np.mean(e < -threshold)),
                         "share_above_100": float(np.mean(e > ENHANCED_HU)),
                         "largest_enhanced_region_ml": up, "largest_darkened_region_ml": down}
        figures[name]["mean"] = float(e.mean())
        blocks = block_means(enhancement, mask)
        if blocks.size >= MIN_BLOCKS:
            figures[name]["histogram"] = _histogram(blocks)
    violations = np.zeros(n.shape, np.uint8)
    violations[raised_regions | wall_regions] = 1
    violations[lowered_regions] = 2
    violations[above] = 3
    if "median" in figures["soft_tissue"]:
        figures["soft_tissue"]["largest_body_wall_enhanced_region_ml"] = wall_ml
    max_e = float(enhancement[body].max()) if body.any() else 0.0
    return Measurement(figures, noise, threshold, voxel_ml, violations, max_e)


def measure(ncct: Volume, scect: Volume, output_range_hu: tuple | None = None, statistics: dict | None = None) -> Measurement:
    """measure_arrays on two volumes on one grid, in the axial voxel order the network saw, with the physics bounds
    of ``statistics`` (a card's) where it has them."""
    layout = AxialLayout.of(ncct.direction)
    return measure_arrays(layout.to_axial(ncct.array), layout.to_axial(scect.array), layout.spacing(ncct.spacing), output_range_hu,
                          physics_of(statistics))


def physics_of(statistics: dict | None) -> dict:
    """The card's physics bounds (as they were when it was trained), else this version's."""
    return {**PHYSICS, **((statistics or {}).get("physics") or {})}


def violation_map(measurement: Measurement, ncct: Volume) -> np.ndarray:
    """The violation codes on the NCCT's own grid and voxel order (uint8; 0 where nothing is wrong)."""
    layout = AxialLayout.of(ncct.direction)
    shape = layout.to_axial(ncct.array).shape
    return layout.back(_expand(measurement.violations, shape))


def training_statistics(pairs: list[tuple[np.ndarray, np.ndarray, tuple]], output_range_hu: tuple | None = None) -> dict:
    """What a model card keeps about its training targets' enhancement (CECT minus NCCT, axial arrays) per class,
    and the thresholds the checks use, chosen as the input checks' are (ood.training_statistics)."""
    if not pairs:
        raise ValueError("enhancement statistics need at least one training pair")
    measured = [measure_arrays(ncct, cect, spacing, output_range_hu).classes for ncct, cect, spacing in pairs]
    out = {"format": FORMAT, "pairs": len(measured), "physics": dict(PHYSICS), "median_tolerance_hu": MEDIAN_TOLERANCE_HU,
           "share_margin": SHARE_MARGIN, "distance_margin": DISTANCE_MARGIN, "distance_floor_hu": DISTANCE_FLOOR_HU,
           "histogram_edges": [float(HIST_EDGES[0]), float(HIST_EDGES[-1]), 5.0],
           "how_chosen": dict(HOW_CHOSEN),
           "histogram_of": f"means of {'x'.join(map(str, BLOCK))} blocks (z, y, x) on the 2x2 in-plane reduced grid", "classes": {}}
    for name in CLASSES:
        rows = [m[name] for m in measured if "median" in m[name]]
        if not rows:
            continue
        out["classes"][name] = {
            "pairs": len(rows),
            "median": [min(r["median"] for r in rows), max(r["median"] for r in rows)],
            "mean": [min(r["mean"] for r in rows), max(r["mean"] for r in rows)],
            "p99": [min(r["p99"] for r in rows), max(r["p99"] for r in rows)],
            "share_above_100": [min(r["share_above_100"] for r in rows), max(r["share_above_100"] for r in rows)],
        }
        histograms = [r["histogram"] for r in rows if "histogram" in r]
        if histograms:
            reference = np.mean(histograms, axis=0)
            distances = [_wasserstein(h, reference) for h in histograms]
            out["classes"][name].update({"histogram": [round(float(v), 6) for v in reference], "distance_training_max": max(distances),
                                         "distance_threshold": max(max(distances) * DISTANCE_MARGIN, DISTANCE_FLOOR_HU)})
    return out


def _physics_findings(m: Measurement, physics: dict) -> list[PlausibilityFinding]:
    found = []
    region_ml, floor, sds = physics["region_ml"], physics["median_floor_hu"], physics["noise_sds"]
    for name, c in m.classes.items():
        if "median" not in c:
            continue
        label, ceiling = LABELS[name], physics["median_ceiling_hu"].get(name)
        if ceiling is not None and c["median"] > ceiling:
            found.append(PlausibilityFinding(f"{name}_enhanced", f"{label} is enhanced by a median {c['median']:+.0f} HU; contrast "
                                             f"raises {label} by at most {ceiling:.0f} HU (physics)", c["median"], f"<= {ceiling:.0f} HU"))
        extra = physics["region_allowance_hu"].get(name)
        if extra is not None and c["largest_enhanced_region_ml"] > region_ml:
            reach = f"contrast does not reach {label}" if not extra else f"contrast raises {label} by tens of HU, not {extra:.0f} beyond noise"
            found.append(PlausibilityFinding(f"{name}_region", f"a {c['largest_enhanced_region_ml']:.1f} mL region of {label} is enhanced "
                                             f"by more than {m.threshold_hu + extra:.0f} HU (noise x{sds:g}" + (f" + {extra:.0f}" if extra else "")
                                             + f"); {reach} (physics)", c["largest_enhanced_region_ml"], f"<= {region_ml} mL"))
        if c["median"] < floor:
            found.append(PlausibilityFinding(f"{name}_darkened", f"{label} is darker than in the NCCT by a median {c['median']:.0f} HU; "
                                             f"contrast never lowers attenuation (physics)", c["median"], f">= {floor:.0f} HU"))
        if c["largest_darkened_region_ml"] > region_ml:
            found.append(PlausibilityFinding(f"{name}_darkened_region", f"a {c['largest_darkened_region_ml']:.1f} mL region of {label} is "
                                             f"darker than in the NCCT by more than {m.threshold_hu:.0f} HU; contrast never lowers "
                                             "attenuation (physics)", c["largest_darkened_region_ml"], f"<= {region_ml} mL"))
    wall = m.classes.get("soft_tissue", {}).get("largest_body_wall_enhanced_region_ml", 0.0)
    if wall > physics["body_wall_region_ml"]:
        found.append(PlausibilityFinding("body_wall_region", f"a {wall:.0f} mL region of soft tissue within {physics['body_wall_mm']:.0f} mm "
                                         f"of the skin is enhanced by more than {physics['body_wall_enhanced_hu']:.0f} HU; the body wall's "
                                         "muscle enhances by tens of HU and its vessels are millimetres wide (physics)", wall,
                                         f"<= {physics['body_wall_region_ml']:g} mL"))
    ceiling = physics["ceiling_hu"]
    if m.max_enhancement_hu > ceiling:
        found.append(PlausibilityFinding("ceiling", f"a voxel is enhanced by {m.max_enhancement_hu:.0f} HU; no blood reaches "
                                         f"{ceiling:.0f} HU of enhancement (physics)", m.max_enhancement_hu, f"<= {ceiling:.0f} HU"))
    return found


def _training_findings(m: Measurement, statistics: dict) -> list[PlausibilityFinding]:
    found = []
    tolerance = float(statistics.get("median_tolerance_hu", MEDIAN_TOLERANCE_HU))
    margin = float(statistics.get("share_margin", SHARE_MARGIN))
    for name, bounds in statistics.get("classes", {}).items():
        c = m.classes.get(name, {})
        if "median" not in c:
            continue
        label = LABELS.get(name, name)
        # The class mean where the card has it, else (older cards) the median. A residual model keeps its input's
        # noise, so its enhancement map is nearly noise-free (muscle: SD 7 HU on phantom 9001) while a target's
        # carries two scans' noise (33 HU). In a class that mixes muscle with blood, that noise moves the median
        # (+27 to +59 HU for the targets, +13 to +15 HU for the model, with the same muscle and the same share of
        # blood); zero-mean noise leaves the mean where the contrast puts it.
        key = "mean" if "mean" in bounds and "mean" in c else "median"
        lo, hi = bounds[key]
        if not lo - tolerance <= c[key] <= hi + tolerance:
            found.append(PlausibilityFinding(f"{name}_{key}_vs_training", f"{label} is enhanced by a {key} {c[key]:+.0f} HU; the "
                                             f"training targets show {lo:+.0f} to {hi:+.0f} HU (+-{tolerance:.0f})", c[key],
                                             f"{lo - tolerance:+.0f} to {hi + tolerance:+.0f} HU"))
        share_hi = bounds["share_above_100"][1] * margin + 0.005
        if c["share_above_100"] > share_hi:
            found.append(PlausibilityFinding(f"{name}_enhanced_share_vs_training", f"{c['share_above_100']:.1%} of {label} is enhanced "
                                             f"by more than {ENHANCED_HU:.0f} HU; the training targets reach {bounds['share_above_100'][1]:.1%} "
                                             f"(limit {share_hi:.1%})", c["share_above_100"], f"<= {share_hi:.1%}"))
        if "histogram" not in c or "histogram" not in bounds:
            continue
        distance = _wasserstein(c["histogram"], bounds["histogram"])
        if distance > bounds["distance_threshold"]:
            found.append(PlausibilityFinding(f"{name}_distribution_vs_training", f"the enhancement of {label} differs from the training "
                                             f"targets: Wasserstein distance {distance:.1f} HU, threshold {bounds['distance_threshold']:.1f} HU "
                                             f"(training targets reach {bounds['distance_training_max']:.1f})", distance,
                                             f"<= {bounds['distance_threshold']:.1f} HU"))
    return found


def check(m: Measurement, statistics: dict | None) -> list[PlausibilityFinding]:
    """Every bound the enhancement breaks: physics always, the training targets when the card has them."""
    return _physics_findings(m, physics_of(statistics)) + (_training_findings(m, statistics) if statistics else [])


PHYSICS_ONLY = "physics bounds only (the model card has no enhancement statistics)"


def summary(findings: list, statistics: dict | None) -> str:
    """One line for a header, a manifest cell or DICOM ImageComments."""
    text = "; ".join(f.message for f in findings) if findings else "none"
    return text if statistics else f"{text} ({PHYSICS_ONLY})"


def describe(statistics: dict | None) -> list[str]:
    """The bounds as `models show` prints them: physics first, then what the training targets allow."""
    physics = physics_of(statistics)
    lines = [f"plausibility    physics: class medians at most {', '.join(f'{k} {v:+g}' for k, v in physics['median_ceiling_hu'].items())} HU, "
             f"none below {physics['median_floor_hu']:+g} HU; no region over {physics['region_ml']} mL enhanced beyond noise "
             f"(x{physics['noise_sds']:g}, at least {physics['noise_floor_hu']:g} HU) in "
             + ", ".join(f"{k}" + (f" (+{v:g} HU)" if v else "") for k, v in physics["region_allowance_hu"].items())
             + f", or darkened anywhere; no voxel enhanced over {physics['ceiling_hu']:g} HU"]
    how = (statistics or {}).get("how_chosen", HOW_CHOSEN)
    lines.append(f"                how chosen: {how['physics']}")
    if not statistics or not statistics.get("classes"):
        lines.append("                training targets: none recorded (the output is checked against physics only)")
        return lines
    lines.append(f"                how chosen: {how['training']}")
    key = "mean" if all("mean" in b for b in statistics["classes"].values()) else "median"
    lines.append(f"                training targets ({statistics.get('pairs', '?')} pairs), {key} enhancement +-"
                 f"{statistics.get('median_tolerance_hu', MEDIAN_TOLERANCE_HU):g} HU:")
    for name, b in statistics["classes"].items():
        distance = f", distance threshold {b['distance_threshold']:.1f} HU" if "distance_threshold" in b else ""
        lines.append(f"                  {LABELS.get(name, name):22s} {b[key][0]:+6.1f} to {b[key][1]:+6.1f} HU, "
                     f"share > {ENHANCED_HU:g} HU up to {b['share_above_100'][1]:.2%}{distance}")
    return lines
