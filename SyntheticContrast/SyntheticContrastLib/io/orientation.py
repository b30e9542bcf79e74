"""The axial LPS voxel order that the network was trained in: any acquisition (sagittal, coronal, a NIfTI with
flipped rows) is permuted and flipped into it, without resampling, and the result is put back exactly."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AxialLayout:
    """How a (z, y, x) array maps onto (superior, posterior, left): ``axes[m]`` is the input array axis that becomes
    output axis m, and ``flips[m]`` says whether it runs the other way."""

    axes: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    @classmethod
    def of(cls, direction) -> "AxialLayout":
        """The layout for a volume's direction cosines (columns: the x, y, z index axes in LPS). Oblique axes go to
        the patient axis they are closest to, over all six assignments, so a 45-degree tie still gives a permutation."""
        d = np.asarray(direction, float).reshape(3, 3)
        patient = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[p[a], a]) for a in range(3)))
        axes, flips = [0, 0, 0], [False, False, False]
        for index_axis, patient_axis in enumerate(patient):
            m = 2 - patient_axis  # output array axis: S -> 0, P -> 1, L -> 2
            axes[m] = 2 - index_axis  # array axes run (z, y, x)
            flips[m] = bool(d[patient_axis, index_axis] < 0)
        return cls(tuple(axes), tuple(flips))

    @property
    def is_identity(self) -> bool:
        return self.axes == (0, 1, 2) and not any(self.flips)

    def to_axial(self, array: np.ndarray) -> np.ndarray:
        """The same voxels in axial LPS order (contiguous; the input itself when already so)."""
        if self.is_identity:
            return array
        view = np.transpose(array, self.axes)
        return np.ascontiguousarray(np.flip(view, [m for m in range(3) if self.flips[m]]))

    def back(self, array: np.ndarray) -> np.ndarray:
        """Inverse of ``to_axial``: an axial-order array back on the volume's own voxel grid."""
        if self.is_identity:
            return array
        view = np.flip(array, [m for m in range(3) if self.flips[m]])
        return np.ascontiguousarray(np.transpose(view, np.argsort(self.axes)))

    def spacing(self, spacing) -> tuple[float, float, float]:
        """Voxel spacing (x, y, z) of the axial-order array."""
        by_array_axis = tuple(spacing)[::-1]  # (z, y, x)
        return tuple(float(by_array_axis[self.axes[m]]) for m in range(3))[::-1]

    def describe(self) -> str:
        names = {0: "z", 1: "y", 2: "x"}
        parts = [("-" if self.flips[m] else "") + names[self.axes[m]] for m in range(3)]
        return f"array axes ({', '.join(parts)}) became (S, P, L)"
