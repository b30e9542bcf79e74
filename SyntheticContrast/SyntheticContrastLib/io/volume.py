"""The engine's image: a CT volume in HU with its LPS geometry, and the metadata keys every reader and writer
shares (provenance of synthetic images, what a reader did on its own)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

#: Header keys that carry a synthetic volume's provenance; reading keeps them in ``Volume.metadata``.
PROVENANCE_PREFIX = "SyntheticContrast."
#: Metadata key of what the reader did on its own (files ignored, images left out, padding filled): said to the user.
#: Metadata key of what the reader did on its own (files ignored, images left out, padding filled): said to the user.
READER_NOTES = "reader_notes"
AIR_HU = -1000.0
#: The volume file formats read besides DICOM; the batch and the sidecar strip the same suffixes.
READ_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def strip_volume_suffix(name: str) -> str:
    """'patient1.nii.gz' -> 'patient1'; only a known volume suffix is removed, never a UID's dots."""
    lowered = name.lower()
    for suffix in sorted(READ_SUFFIXES, key=len, reverse=True):
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class Volume:
    """A 3D image in HU with its LPS geometry; ``array`` is (z, y, x) float32."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    metadata: dict = field(default_factory=dict)
    source: str = ""

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(tuple(float(s) for s in self.spacing))
        image.SetOrigin(tuple(float(o) for o in self.origin))
        image.SetDirection(tuple(float(d) for d in self.direction))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, source: str = "", metadata: dict | None = None) -> "Volume":
        return cls(
            array=sitk.GetArrayFromImage(image).astype(np.float32, copy=False),
            spacing=tuple(image.GetSpacing()),
            origin=tuple(image.GetOrigin()),
            direction=tuple(image.GetDirection()),
            metadata=dict(metadata or {}),
            source=source,
        )

    def with_array(self, array: np.ndarray, **metadata) -> "Volume":
        """Same geometry, new voxels (e.g. the synthetic result of this volume)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from volume shape {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction, {**metadata}, self.source)

    def index_to_physical(self, ijk) -> np.ndarray:
        """Continuous (i, j, k) = (x, y, z) index -> LPS millimetres."""
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        return np.asarray(self.origin, float) + d @ (np.asarray(ijk, float) * np.asarray(self.spacing, float))

    def physical_to_index(self, point) -> np.ndarray:
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        return np.linalg.solve(d, np.asarray(point, float) - np.asarray(self.origin, float)) / np.asarray(self.spacing, float)
