"""The engine's Python packages inside Slicer: checked on first use, installed only with the user's consent.

PyTorch comes through the PyTorch extension (a CUDA build that matches the driver) when it is there, as in
SlicerTotalSegmentator; other missing packages come from pip, constrained to the versions of the packages Slicer
already ships, so an install never replaces Slicer's own numpy, SimpleITK, pydicom or scipy.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import tempfile
from pathlib import Path

import slicer

MINIMUM_TORCH = (2, 1)
#: import name -> pip requirement, for the packages the engine CLI needs beyond torch.
ENGINE_REQUIREMENTS = {"safetensors": "safetensors>=0.4", "tqdm": "tqdm>=4.60", "scipy": "scipy>=1.10", "platformdirs": "platformdirs>=3"}
#: Distributions Slicer ships; when present, pip is told to keep exactly these versions.
SLICER_SHIPPED = ("numpy", "SimpleITK", "pydicom", "scipy", "Pillow", "packaging")


def version_tuple(text: str) -> tuple[int, ...]:
    """'2.13.0+cpu' -> (2, 13, 0): the numeric release part, enough to compare against a minimum."""
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


class DependencyChecker:
    """What is missing, what installing it would do, and which device the engine would use."""

    def __init__(self):
        self.declined = False

    @staticmethod
    def torch_version() -> str | None:
        return installed_version("torch") if importlib.util.find_spec("torch") else None

    def missing_packages(self) -> list[str]:
        return [req for module, req in ENGINE_REQUIREMENTS.items() if importlib.util.find_spec(module) is None]

    @staticmethod
    def _pytorch_extension():
        try:
            import PyTorchUtils

            return PyTorchUtils.PyTorchUtilsLogic()
        except ImportError:
            return None

    def install_plan(self) -> list[str]:
        """One line per thing that would be installed; empty when everything is there."""
        plan = []
        version = self.torch_version()
        minimum = ".".join(map(str, MINIMUM_TORCH))
        if version is None or version_tuple(version) < MINIMUM_TORCH:
            how = "through the PyTorch extension (a build matched to your GPU driver)" if self._pytorch_extension() else "with pip"
            what = f"PyTorch >= {minimum}" + (f" (found {version}, too old)" if version else "")
            plan.append(f"{what}, {how}")
        plan += [f"{req} with pip" for req in self.missing_packages()]
        return plan

    def ensure(self, ask: bool = True) -> str:
        """Install what is missing (asking once, showing what), then describe the environment for the panel."""
        plan = self.install_plan()
        if plan:
            # Asked again on each Apply: a user who declined once must not need a restart to change their mind.
            text = "Synthetic contrast needs these Python packages, which are not installed:\n\n- " + "\n- ".join(plan)
            if ask and not slicer.util.confirmOkCancelDisplay(text + "\n\nInstall them now? This can take several minutes."):
                self.declined = True
                raise RuntimeError("Synthetic contrast needs: " + "; ".join(plan) + ". Installation was declined.")
            self._install()
        return self.describe()

    def _install(self) -> None:
        version = self.torch_version()
        minimum = ".".join(map(str, MINIMUM_TORCH))
        if version is None or version_tuple(version) < MINIMUM_TORCH:
            extension = self._pytorch_extension()
            if extension is not None:
                if extension.installTorch(askConfirmation=False, torchVersionRequirement=f">={minimum}") is None:
                    raise RuntimeError("PyTorch could not be installed through the PyTorch extension.")
            else:
                slicer.util.pip_install([f"torch>={minimum}", "-c", str(self._constraints_file())])
        missing = self.missing_packages()
        if missing:
            # A list, not a string: Slicer splits a string as a POSIX shell would, which eats a Windows path's backslashes.
            slicer.util.pip_install([*missing, "-c", str(self._constraints_file())])

    @staticmethod
    def _constraints_file() -> Path:
        pins = [f"{name}=={v}" for name in SLICER_SHIPPED if (v := installed_version(name))]
        path = Path(tempfile.gettempdir()) / "SyntheticContrast-slicer-constraints.txt"
        path.write_text("\n".join(pins) + "\n", encoding="utf-8")
        return path

    def describe(self) -> str:
        """'torch 2.4.1 installed; ...' - what the panel shows under the model. Read from the package metadata, not by
        importing torch: that took seconds and initialised CUDA in Slicer's own process, where no network runs. The
        device is the child's to find, and its progress line names it."""
        version = self.torch_version()
        if version is None:
            return "PyTorch is not installed yet: it is offered on the first Apply."
        if version_tuple(version) < MINIMUM_TORCH:
            return f"PyTorch {version} is older than {'.'.join(map(str, MINIMUM_TORCH))}: update it on the first Apply."
        return f"torch {version}; the synthesis process picks the device (CUDA, else MPS, else CPU) and names it while it runs"
