"""One case from input volume to written outputs, shared by `synthesize`, `batch`, the node and the Slicer child:
out-of-distribution checks of the input, synthesis (with its uncertainty map when samples > 1), plausibility checks
of the output, then atomic writes of every output."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..trust import ood, plausibility
from ..errors import ImplausibleOutputError, OutOfDistributionError
from .inference import SynthesisOptions, synthesize_volume_with_uncertainty
from ..io.reading import suffix_of, write_volume
from ..io.volume import READER_NOTES, Volume

OOD_KEY = "SyntheticContrast.ood"
NOTES_KEY, FINDINGS_KEY = "SyntheticContrast.notes", "SyntheticContrast.ood_findings"
PLAUSIBILITY_KEY, PLAUSIBILITY_FINDINGS_KEY = "SyntheticContrast.plausibility", "SyntheticContrast.plausibility_findings"
ENHANCEMENT_KEY = "SyntheticContrast.enhancement"  # per-class figures, for the sidecar


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
    plausibility: list = field(default_factory=list)
    plausibility_summary: str = "none"
    measurement: object = None  # plausibility.Measurement, for the violation map


def _beside(output: str | Path, tag: str) -> Path:
    """'case_synthetic.nii.gz' -> 'case_synthetic<tag>.nii.gz': a derived map sits beside the image it belongs to."""
    output = Path(output)
    suffix = suffix_of(output)
    return output.with_name(output.name[: len(output.name) - len(suffix)] + tag + suffix)


def uncertainty_path(output: str | Path) -> Path:
    """'case_synthetic.nii.gz' -> 'case_synthetic_sd.nii.gz'."""
    return _beside(output, "_sd")


def plausibility_map_path(output: str | Path) -> Path:
    """'case_synthetic.nii.gz' -> 'case_synthetic_plausibility.nii.gz'."""
    return _beside(output, "_plausibility")


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


def synthesize_case(volume: Volume, model, options: SynthesisOptions, findings: list, progress=None, cancel=None,
                    strict: bool = False, on_plan=None) -> CaseResult:
    """Synthesis whose outputs carry the input's and the output's findings (or 'none') in their metadata, beside the
    provenance. With ``strict``, an output that breaks a plausibility bound is refused before anything is written."""
    result, sd, report = synthesize_volume_with_uncertainty(volume, model, options, progress, cancel, on_plan)
    statistics = model.card.enhancement_statistics
    measurement = plausibility.measure(volume, result, model.card.encoding.output_range_hu, statistics)
    implausible = plausibility.check(measurement, statistics)
    if strict and implausible:
        raise ImplausibleOutputError(volume.source, implausible)
    if not statistics:
        report.notes.append(f"model card {model.card.model_id} has no enhancement statistics: the output was checked against "
                            "physics bounds only")
    report.notes[:0] = volume.metadata.get(READER_NOTES, [])  # what the reader left out or filled comes first
    if not model.card.input_statistics:
        report.notes.append(f"model card {model.card.model_id} has no input statistics: out-of-distribution checks were not run")
    summary = ood_summary(findings, model)
    implausible_summary = plausibility.summary(implausible, statistics)
    for volume_out in (result, sd):
        if volume_out is not None:
            volume_out.metadata[OOD_KEY] = summary
            volume_out.metadata[PLAUSIBILITY_KEY] = implausible_summary
            # Lists and dicts are for the JSON sidecar only; a header keeps text.
            volume_out.metadata[NOTES_KEY] = list(report.notes)
            volume_out.metadata[FINDINGS_KEY] = [f.line() for f in findings]
            volume_out.metadata[PLAUSIBILITY_FINDINGS_KEY] = [f.line() for f in implausible]
            volume_out.metadata[ENHANCEMENT_KEY] = measurement.figures()
    return CaseResult(result, sd, report, findings, summary, implausible, implausible_summary, measurement)


def write_case(case: CaseResult, output: Path, dicom_dir: Path | None = None, source_files=None, model=None,
               plausibility_map: bool = False, incomplete: str = "") -> dict:
    """Write the sCECT (and its SD map, and its violation map when asked), and the DICOM series when asked; returns
    what was written, by role. ``incomplete``: why the input series may lack instances, said in every DICOM slice."""
    written = {"output": write_volume(case.result, output)}
    if case.sd is not None:
        written["sd_output"] = write_volume(case.sd, uncertainty_path(output))
    if plausibility_map:
        written["plausibility_map"] = write_volume(violation_volume(case), plausibility_map_path(output))
    if dicom_dir is not None:
        from ..io.dicom_export import export_dicom_series

        card = model.card
        export_dicom_series(case.result, dicom_dir, source_files, card.model_id, card.sha256, findings=case.ood_summary,
                            plausibility=case.plausibility_summary, incomplete=incomplete)
        written["dicom_output"] = Path(dicom_dir)
        if case.sd is not None:
            sd_dir = uncertainty_dicom_dir(dicom_dir)
            export_dicom_series(case.sd, sd_dir, source_files, card.model_id, card.sha256, series_number_offset=2000,
                                uncertainty=True, findings=case.ood_summary, plausibility=case.plausibility_summary,
                            incomplete=incomplete)
            written["dicom_sd_output"] = sd_dir
    return written


def violation_volume(case: CaseResult) -> Volume:
    """The plausibility violation map as a label volume on the sCECT's grid, marked synthetic like the image."""
    from ..io.volume import PROVENANCE_PREFIX

    labels = plausibility.violation_map(case.measurement, case.result).astype(np.uint8)
    codes = ", ".join(f"{code} {text}" for code, text in plausibility.MAP_LABELS.items())
    metadata = {k: v for k, v in case.result.metadata.items() if k.startswith(PROVENANCE_PREFIX) or k == "ITK_FileNotes"}
    metadata.update({"ITK_FileNotes": "SYNTHETIC plausibility violation map (labels), not an image"[:79],
                     PROVENANCE_PREFIX + "map": "plausibility", PROVENANCE_PREFIX + "map_labels": codes,
                     PROVENANCE_PREFIX + "label": f"SYNTHETIC plausibility violation map of a synthetic image: {codes}"})
    return case.result.with_array(labels, **metadata)
