"""SyntheticContrast engine: synthetic contrast-enhanced CT from non-contrast CT with a 3D pix2pix GAN.

Plain Python (torch, numpy, SimpleITK, pydicom); only ``mrml`` may import slicer/vtk.
"""

__version__ = "0.1.0"

SYNTHETIC_LABEL = "SYNTHETIC"
