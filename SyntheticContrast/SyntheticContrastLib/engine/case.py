"""One case from input volume to written outputs, shared by `synthesize` and `batch`: out-of-distribution checks
first, then synthesis (with its uncertainty map when samples > 1), then atomic writes of every output."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..trust import ood
from ..errors import OutOfDistributionError
from .inference import SynthesisOptions, synthesize_volume_with_uncertainty
from ..io.reading import suffix_of, write_volume
from ..io.volume import READER_NOTES, Volume

OOD_KEY = "SyntheticContrast.ood"
NOTES_KEY, FINDINGS_KEY = "SyntheticContrast.notes", "SyntheticContrast.ood_findings"


NOT_CHECKED = "not checked (the model card has no input statistics)"


def ood_summary(findings: list, model) -> str:
    """What headers, manifests and DICOM say: the findings, 'none', or that the card allowed no check."""
    return ood.summary(findings) if model.card.input_statistics else NOT_CHECKED


@dataclass
class CaseResult:
    result: Volume
    sd: Volume | None
    report: object
    findings: list = field(default_factory=list)
    ood_summary: str = "none"


def uncertainty_path(output: str | Path) -> Path:
    """'case_synthetic.nii.gz' -> 'case_synthetic_sd.nii.gz': the SD map sits beside the image it belongs to."""
    output = Path(output)
    suffix = suffix_of(output)
    return output.with_name(output.name[: len(output.name) - len(suffix)] + "_sd" + suffix)


def uncertainty_dicom_dir(dicom_dir: str | Path) -> Path:
    """'case_SYNTHETIC' -> 'case_SYNTHETIC_SD': the SD map's own DICOM series sits beside the image's."""
    dicom_dir = Path(dicom_dir)
    return dicom_dir.with_name(dicom_dir.name + "_SD")


def check_input(volume: Volume, model) -> list:
    """The out-of-distribution findings for ``volume`` against its model's training statistics."""
    return ood.check(volume, model.card.input_statistics)


def refuse_if_strict(volume: Volume, findings: list, strict: bool) -> None:
    """With ``strict``, any finding stops the case before anything is synthesised or written."""
    if strict and findings:
        raise OutOfDistributionError(volume.source, findings)


def synthesize_case(volume: Volume, model, options: SynthesisOptions, findings: list, progress=None, cancel=None) -> CaseResult:
    """Synthesis whose outputs carry the findings (or 'none') in their metadata, beside the provenance."""
    result, sd, report = synthesize_volume_with_uncertainty(volume, model, options, progress, cancel)
    report.notes[:0] = volume.metadata.get(READER_NOTES, [])  # what the reader left out or filled comes first
    if not model.card.input_statistics:
        report.notes.append(f"model card {model.card.model_id} has no input statistics: out-of-distribution checks were not run")
    summary = ood_summary(findings, model)
    for volume_out in (result, sd):
        if volume_out is not None:
            volume_out.metadata[OOD_KEY] = summary
            # Lists are for the JSON sidecar only; a header keeps text.
            volume_out.metadata[NOTES_KEY] = list(report.notes)
            volume_out.metadata[FINDINGS_KEY] = [f.line() for f in findings]
    return CaseResult(result, sd, report, findings, summary)


def write_case(case: CaseResult, output: Path, dicom_dir: Path | None = None, source_files=None, model=None) -> dict:
    """Write the sCECT (and its SD map), and the DICOM series when asked; returns what was written, by role."""
    written = {"output": write_volume(case.result, output)}
    if case.sd is not None:
        written["sd_output"] = write_volume(case.sd, uncertainty_path(output))
    if dicom_dir is not None:
        from ..io.dicom_export import export_dicom_series

        card = model.card
        export_dicom_series(case.result, dicom_dir, source_files, card.model_id, card.sha256, findings=case.ood_summary)
        written["dicom_output"] = Path(dicom_dir)
        if case.sd is not None:
            sd_dir = uncertainty_dicom_dir(dicom_dir)
            export_dicom_series(case.sd, sd_dir, source_files, card.model_id, card.sha256, series_number_offset=2000,
                                uncertainty=True, findings=case.ood_summary)
            written["dicom_sd_output"] = sd_dir
    return written
