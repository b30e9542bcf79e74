"""Coarse anatomy of a CT volume from HU alone: the body, bone, and the box where the heart and great vessels lie.

Used to measure inputs for out-of-distribution checks and to restrict evaluation to the body.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BODY_THRESHOLD_HU = -500.0  # air and lung outside vs. the patient's soft tissue and bone
CORTICAL_BONE_HU = 600.0


def body_mask(array: np.ndarray) -> np.ndarray:
    """The largest connected region above -500 HU, holes filled slice by slice (the patient, not the table's air)."""
    mask = array > BODY_THRESHOLD_HU
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = labels == int(np.argmax(sizes))
    for z in range(mask.shape[0]):
        mask[z] = ndimage.binary_fill_holes(mask[z])
    return mask


def bone_mask(array: np.ndarray, spacing_mm: float, margin_mm: float = 3.0) -> np.ndarray:
    """Bone to leave out of the blood-pool estimate: cortex (> 600 HU), what it encloses (cancellous bone, which
    overlaps enhanced blood in HU) and a margin of ``margin_mm`` around it."""
    radius = max(1, int(round(margin_mm / spacing_mm)))
    structure = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), radius)
    out = np.zeros(array.shape, bool)
    for z in range(array.shape[0]):
        cortex = array[z] > CORTICAL_BONE_HU
        if cortex.any():
            # Closing first: noise and blur break thin cortex rings, and an open ring would not enclose its marrow.
            closed = ndimage.binary_closing(cortex, structure, border_value=0)
            out[z] = ndimage.binary_dilation(ndimage.binary_fill_holes(closed | cortex), structure)
    return out


def mediastinal_box(mask: np.ndarray) -> np.ndarray:
    """Per slice, the box where the heart and great vessels lie: the anterior 10-60 % of the body's depth and its
    central 60 % of width. It leaves out the spine and the posterior ribs, whose cancellous bone overlaps
    enhanced blood in HU. ``mask`` is in axial LPS voxel order (orientation.AxialLayout): rows run anterior to
    posterior."""
    out = np.zeros(mask.shape, bool)
    for z in range(mask.shape[0]):
        rows, cols = np.nonzero(mask[z])
        if rows.size == 0:
            continue
        r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
        depth, width = r1 - r0 + 1, c1 - c0 + 1
        lo, hi = r0 + int(0.1 * depth), r0 + int(0.6 * depth)
        out[z, lo:hi + 1, c0 + int(0.2 * width): c1 - int(0.2 * width) + 1] = True
    return out & mask
