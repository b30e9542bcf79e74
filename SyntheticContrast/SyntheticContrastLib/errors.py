"""Exceptions the engine raises, each carrying what a user needs to act: the file and the problem."""

from __future__ import annotations

from pathlib import Path


class SyntheticContrastError(Exception):
    """Base class of every error the engine raises on purpose."""


class PathProblem(SyntheticContrastError):
    """An error about one file or folder (or none): the message starts with the path, then says what is wrong."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class InputError(PathProblem):
    """An input file or folder cannot be used; the message names the path and the problem."""


class SeriesSelectionError(InputError):
    """A DICOM folder holds several series and the caller did not say which one to use."""

    def __init__(self, path, series: list[dict]):
        self.series = series
        listing = "\n".join(
            f"  {s['series_uid']}  {s['slices']:4d} images  {s['description'] or '(no SeriesDescription)'}  [{s.get('kind', '?')}]"
            for s in series
        )
        super().__init__(path, f"holds {len(series)} DICOM series; choose one with --series UID:\n{listing}")


class ModelError(PathProblem):
    """A model card or weights file is invalid, tampered with, or of an unknown architecture."""


class OutputError(PathProblem):
    """An output cannot be written (read-only folder, disk full, name that hides it is synthetic)."""


class MemoryBudgetError(PathProblem):
    """The plan says the run would need more memory than it may use; nothing was synthesised."""


class SynthesisCancelled(SyntheticContrastError):
    """The caller's cancel callable asked to stop; nothing partial was returned or written."""


class OutOfDistributionError(InputError):
    """With --strict: the input lies outside the model's training data, so no synthetic image is made."""

    what = "out of the model's training distribution"

    def __init__(self, path, findings: list):
        self.findings = findings
        super().__init__(path, f"{self.what} (--strict, nothing written): " + "; ".join(f.message for f in findings))


class ImplausibleOutputError(OutOfDistributionError):
    """With --strict: the synthetic image's enhancement breaks a physics or training bound, so it is not written."""

    what = "the synthetic image's enhancement is implausible"
