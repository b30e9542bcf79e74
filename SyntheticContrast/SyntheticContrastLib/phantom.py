"""Procedural paired chest CT phantom: a non-contrast and a contrast-enhanced volume on one grid, plus ROI truth.

Anatomy is drawn slice by slice from analytic shapes whose sizes, positions, node count, noise and
enhancement vary with the seed. HU values follow typical literature figures: unenhanced blood ~40 HU,
enhanced aorta 250-400 HU, fat ~-100 HU, lung ~-850 HU; lymph nodes enhance modestly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .measurement.rois import ROI_FORMAT
from .io.volume import Volume

# Tissue labels of the label map; lymph nodes are NODE_BASE + index.
(AIR, SUBCUT_FAT, MUSCLE, BONE, CORTEX, LUNG, MED_FAT, MYOCARDIUM, LV, RV, AORTA, PULM_TRUNK, SVC,
 PULM_ARTERY, PULM_VEIN, TRACHEA, ESOPHAGUS, CSF) = range(18)
NODE_BASE = 32
LABEL_NAMES = {
    AIR: "air", SUBCUT_FAT: "subcutaneous fat", MUSCLE: "muscle", BONE: "cancellous bone", CORTEX: "cortical bone",
    LUNG: "lung", MED_FAT: "mediastinal fat", MYOCARDIUM: "myocardium", LV: "left heart blood", RV: "right heart blood",
    AORTA: "aorta", PULM_TRUNK: "pulmonary artery", SVC: "superior vena cava", PULM_ARTERY: "pulmonary artery branch",
    PULM_VEIN: "pulmonary vein", TRACHEA: "airway", ESOPHAGUS: "oesophagus", CSF: "spinal canal",
}


@dataclass(frozen=True)
class PhantomSpec:
    """Grid of the phantom. The paper's data: 512 x 512, 2-3 mm slices."""

    size: int = 512
    slices: int = 48
    pixel_mm: float = 0.7
    slice_mm: float = 2.5


@dataclass
class PhantomCase:
    ncct: Volume
    cect: Volume
    labels: np.ndarray
    annotations: dict
    seed: int


def _ellipse(X, Y, cx, cy, a, b, angle=0.0):
    c, s = math.cos(angle), math.sin(angle)
    u, v = (X - cx) * c + (Y - cy) * s, -(X - cx) * s + (Y - cy) * c
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _capsule(X, Y, p, q, r):
    """Points within r of segment pq (an oblique tube's section, e.g. the aortic arch)."""
    px, py = p
    dx, dy = q[0] - px, q[1] - py
    t = np.clip(((X - px) * dx + (Y - py) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
    return (X - px - t * dx) ** 2 + (Y - py - t * dy) ** 2 <= r * r


class _Anatomy:
    """Seeded sizes and positions (mm, LPS: +x patient left, +y posterior, centre of the slice at 0)."""

    def __init__(self, rng: np.random.Generator, spec: PhantomSpec):
        u = rng.uniform
        self.spec = spec
        self.a, self.b = u(150, 172), u(102, 122)
        self.fat_lat, self.fat_ap = u(26, 34), u(12, 18)
        self.spine_y = self.b - self.fat_ap - u(38, 44)
        self.dta = (u(20, 26), self.spine_y - u(16, 20))
        self.dta_r = u(11.5, 13.5)
        self.asc = (u(-22, -12), u(-34, -24))
        self.asc_r = u(13, 17)
        self.svc = (self.asc[0] - self.asc_r - u(8, 11), self.asc[1] + u(2, 8))
        self.pa = (u(14, 22), u(-32, -24))
        self.heart = (u(8, 22), u(-28, -16))
        self.heart_ab = (u(55, 68), u(42, 52))
        self.arch_t, self.heart_t, self.pa_t = u(0.84, 0.9), u(0.4, 0.5), (u(0.5, 0.56), u(0.64, 0.7))
        self.ribs = [(ang, u(0, 2 * math.pi)) for ang in np.linspace(0.25, math.pi - 0.25, 7)]
        self.rib_period = u(28, 36)
        self.vessels = [self._vessel(rng) for _ in range(int(rng.integers(26, 40)))]
        self.hu = {
            "aorta": u(250, 400), "pa": u(200, 330), "svc": u(250, 450), "muscle_gain": u(5, 15),
            "myo_gain": u(60, 100), "noise": u(10, 25),
        }

    def _vessel(self, rng):
        side = rng.choice([-1, 1])
        x0 = side * rng.uniform(45, 110)
        return {
            "p": (x0, rng.uniform(-50, 50)), "slope": rng.uniform(-0.6, 0.6, size=2), "r": rng.uniform(1.2, 3.5),
            "t": sorted(rng.uniform(0, 1, size=2)), "kind": PULM_ARTERY if rng.random() < 0.5 else PULM_VEIN,
        }

    def slice_labels(self, X, Y, t, z_mm):
        lab = np.full(X.shape, AIR, np.uint8)
        taper = 1.0 - 0.06 * t
        a, b = self.a * taper, self.b
        body = _ellipse(X, Y, 0, 0, a, b)
        lab[body] = SUBCUT_FAT
        ai, bi = a - self.fat_lat, b - self.fat_ap
        lab[_ellipse(X, Y, 0, 0, ai, bi)] = MUSCLE
        ac, bc = ai - 9, bi - 9
        for ang, phase in self.ribs:
            for side in (-1, 1):
                if math.sin(2 * math.pi * z_mm / self.rib_period + phase) > 0.2:
                    rx, ry = side * (ac + 4) * math.sin(ang), -(bc + 4) * math.cos(ang)
                    lab[_ellipse(X, Y, rx, ry, 6, 3.5, angle=side * ang)] = CORTEX
        cavity = _ellipse(X, Y, 0, 0, ac, bc)
        lab[cavity] = MED_FAT
        lung_x, lung_a = ac * 0.52, ac * 0.44
        for side in (-1, 1):
            lab[_ellipse(X, Y, side * lung_x, 6, lung_a, bc * 0.86) & cavity] = LUNG
        for v in self.vessels:
            if v["t"][0] <= t <= v["t"][1]:
                cx, cy = v["p"][0] + v["slope"][0] * (z_mm - 60), v["p"][1] + v["slope"][1] * (z_mm - 60)
                disk = _ellipse(X, Y, cx, cy, v["r"], v["r"]) & (lab == LUNG)
                lab[disk] = v["kind"]
        sy = self.spine_y
        lab[_ellipse(X, Y, 0, sy, 19, 17)] = CORTEX
        lab[_ellipse(X, Y, 0, sy, 17, 15)] = BONE
        lab[_ellipse(X, Y, 0, sy + 25, 8, 7)] = CSF
        lab[_ellipse(X, Y, -4, sy - 24, 7, 5)] = ESOPHAGUS
        lab[_ellipse(X, Y, *self.dta, self.dta_r, self.dta_r)] = AORTA
        if t < self.heart_t:
            grow = math.sin(math.pi * (0.25 + 0.75 * t / self.heart_t))
            ha, hb = self.heart_ab[0] * grow, self.heart_ab[1] * grow
            hx, hy = self.heart
            lab[_ellipse(X, Y, hx, hy, ha, hb, 0.5)] = MYOCARDIUM
            lab[_ellipse(X, Y, hx + 0.3 * ha, hy + 0.2 * hb, 0.42 * ha, 0.5 * hb, 0.5)] = LV
            lab[_ellipse(X, Y, hx - 0.35 * ha, hy - 0.25 * hb, 0.45 * ha, 0.45 * hb, 0.5)] = RV
        if self.heart_t * 0.8 < t < self.arch_t:
            lab[_ellipse(X, Y, *self.asc, self.asc_r, self.asc_r)] = AORTA
        if t >= self.arch_t:
            lab[_capsule(X, Y, self.asc, self.dta, self.dta_r)] = AORTA
        if self.pa_t[0] < t < self.pa_t[1]:
            lab[_ellipse(X, Y, *self.pa, 13, 13)] = PULM_TRUNK
            for side in (-1, 1):
                lab[_capsule(X, Y, self.pa, (side * lung_x * 0.9, 10), 7) & (lab != AORTA)] = PULM_TRUNK
        if t > self.heart_t * 0.9:
            lab[_ellipse(X, Y, *self.svc, 9, 9)] = SVC
        if t > self.pa_t[0]:
            lab[_ellipse(X, Y, 0, 2, 9, 8)] = TRACHEA
        lab[~body] = AIR
        return lab


def _hu_tables(anat: _Anatomy, n_nodes: int, rng) -> tuple[np.ndarray, np.ndarray]:
    ncct, cect = np.zeros(256, np.float32), np.zeros(256, np.float32)
    base = {AIR: -1000, SUBCUT_FAT: -100, MUSCLE: 50, BONE: 300, CORTEX: 800, LUNG: -850, MED_FAT: -95,
            MYOCARDIUM: 45, LV: 40, RV: 40, AORTA: 40, PULM_TRUNK: 40, SVC: 40, PULM_ARTERY: 40, PULM_VEIN: 40,
            TRACHEA: -1000, ESOPHAGUS: 35, CSF: 15}
    h = anat.hu
    enhanced = {MUSCLE: 50 + h["muscle_gain"], MYOCARDIUM: 45 + h["myo_gain"], LV: h["aorta"], AORTA: h["aorta"],
                RV: h["pa"], PULM_TRUNK: h["pa"], PULM_ARTERY: h["pa"] * 0.85, PULM_VEIN: h["aorta"] * 0.85,
                SVC: h["svc"], ESOPHAGUS: 45}
    for label, value in base.items():
        ncct[label] = value
        cect[label] = enhanced.get(label, value)
    for k in range(n_nodes):
        ncct[NODE_BASE + k] = rng.uniform(32, 45)
        cect[NODE_BASE + k] = ncct[NODE_BASE + k] + rng.uniform(15, 45)
    return ncct, cect


def _place_nodes(anat, labels, X, Y, spec, rng, n_nodes, z_lo, z_hi):
    """Rejection-sample nodes whose whole ellipsoid lies in mediastinal fat; returns node geometry."""
    nodes, tries = [], 0
    while len(nodes) < n_nodes and tries < 400:
        tries += 1
        k = int(rng.integers(z_lo, z_hi))
        d = float(rng.uniform(5, 20))
        long_ = d * rng.uniform(1.0, 1.6)
        ang = rng.uniform(0, math.pi)
        cx, cy = rng.uniform(-45, 45), rng.uniform(-55, anat.spine_y - 15)
        half_z = max(1, int(round(0.6 * d / spec.slice_mm)))
        ks = range(max(0, k - half_z), min(spec.slices, k + half_z + 1))
        ok = True
        for kk in ks:
            grow = math.sqrt(max(0.0, 1 - ((kk - k) * spec.slice_mm / (0.6 * d + 1e-9)) ** 2))
            region = _ellipse(X, Y, cx, cy, long_ / 2 * grow + 3, d / 2 * grow + 3, ang)
            if not np.all(labels[kk][region] == MED_FAT):
                ok = False
                break
        if not ok:
            continue
        for kk in ks:
            grow = math.sqrt(max(0.0, 1 - ((kk - k) * spec.slice_mm / (0.6 * d + 1e-9)) ** 2))
            if grow > 0:
                labels[kk][_ellipse(X, Y, cx, cy, long_ / 2 * grow, d / 2 * grow, ang)] = NODE_BASE + len(nodes)
        # Short axis is the ellipse's minor axis: perpendicular to the long axis at angle ``ang``.
        minor = (-math.sin(ang), math.cos(ang))
        nodes.append({"k": k, "center": (cx, cy), "d": d, "long": long_, "minor": minor})
    return nodes


def make_phantom(seed: int, spec: PhantomSpec = PhantomSpec()) -> PhantomCase:
    """Generate one paired NCCT/CECT case and its ROI annotations (engine ROI JSON format, LPS mm)."""
    rng = np.random.default_rng(seed)
    anat = _Anatomy(rng, spec)
    n = spec.size
    coords = (np.arange(n) - (n - 1) / 2.0) * spec.pixel_mm
    X, Y = np.meshgrid(coords, coords)  # X varies along columns (i), Y along rows (j)
    z_mm = np.arange(spec.slices) * spec.slice_mm
    t = z_mm / max(z_mm[-1], 1e-9)
    labels = np.stack([anat.slice_labels(X, Y, float(t[k]), float(z_mm[k])) for k in range(spec.slices)])
    n_nodes = int(rng.integers(3, 9))
    lo, hi = int(spec.slices * 0.3), max(int(spec.slices * 0.3) + 1, int(spec.slices * 0.85))
    nodes = _place_nodes(anat, labels, X, Y, spec, rng, n_nodes, lo, hi)
    ncct_hu, cect_hu = _hu_tables(anat, len(nodes), rng)

    def render(table, noise_seed):
        img = table[labels]
        img = ndimage.gaussian_filter(img, sigma=(0.3, 0.8, 0.8))
        noise_rng = np.random.default_rng(noise_seed)
        noise = ndimage.gaussian_filter(noise_rng.standard_normal(img.shape).astype(np.float32), sigma=(0.5, 1.0, 1.0))
        noise *= anat.hu["noise"] / noise.std()
        img += noise
        img[labels == AIR] = np.maximum(img[labels == AIR], -1024)
        return img.astype(np.float32)

    origin = (float(coords[0]), float(coords[0]), 0.0)
    spacing = (spec.pixel_mm, spec.pixel_mm, spec.slice_mm)
    ncct = Volume(render(ncct_hu, seed * 2 + 1), spacing, origin, metadata={"phantom_seed": str(seed)})
    cect = Volume(render(cect_hu, seed * 2 + 2), spacing, origin, metadata={"phantom_seed": str(seed)})
    return PhantomCase(ncct, cect, labels, _annotations(anat, nodes, spec, z_mm, seed, ncct_hu, cect_hu), seed)


def _annotations(anat, nodes, spec, z_mm, seed, ncct_hu, cect_hu) -> dict:
    lesions = []
    for idx, node in enumerate(nodes):
        z = float(z_mm[node["k"]])
        cx, cy = node["center"]
        half = node["d"] / 2
        mx, my = node["minor"]
        taper = 1.0 - 0.06 * z / z_mm[-1]
        fat_x = anat.a * taper - anat.fat_lat / 2
        lesions.append({
            "id": f"LN{idx + 1}",
            "center": [cx, cy, z],
            "short_axis": [[cx - mx * half, cy - my * half, z], [cx + mx * half, cy + my * half, z]],
            "short_axis_mm": node["d"],
            "long_axis_mm": node["long"],
            "references": {
                "dta": [anat.dta[0], anat.dta[1], z],
                "right_fat": [-fat_x, 0.0, z],
                "left_fat": [fat_x, 0.0, z],
            },
            "truth_hu": {"ncct": float(ncct_hu[NODE_BASE + idx]), "cect": float(cect_hu[NODE_BASE + idx])},
        })
    arch_top = float(z_mm[-1])
    heart_bottom = float(z_mm[0])
    return {
        "format": ROI_FORMAT,
        "coordinate_system": "LPS",
        "units": "mm",
        "source": f"SyntheticContrast phantom seed {seed}",
        "roi_diameter_fraction": 0.9,
        "lesions": lesions,
        "evaluation_range_mm": [heart_bottom, arch_top],
        "truth_hu": {"aorta_ncct": float(ncct_hu[AORTA]), "aorta_cect": float(cect_hu[AORTA]), "noise_sd": anat.hu["noise"]},
    }
