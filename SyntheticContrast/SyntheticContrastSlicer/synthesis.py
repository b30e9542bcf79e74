"""Synthesis for the panel (the engine CLI in a child process) and for headless scripts (the engine in process).

Both paths end the same way: an output node named from the input as it was when the run started, marked
synthetic, with the model's provenance as node attributes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import slicer

from .process import ProcessRunner, python_slicer

MODULE_DIR = Path(__file__).resolve().parents[1]


def chosen_path(value) -> str:
    """A path parameter as text, '' when unset: Slicer's wrapper gives ``Path('.')`` for an empty field."""
    text = str(value) if value is not None else ""
    return "" if text in ("", ".") else text


@dataclass
class SynthesisJob:
    """What one run was asked to do, captured at start so later edits of the panel cannot change it."""

    input_id: str
    input_name: str
    workdir: Path
    input_path: Path
    output_path: Path

    @property
    def log_path(self) -> Path:
        return self.workdir / "synthesis.log"


def plan_text(p, card) -> str:
    """What the panel says before Apply: the planner's estimate for this volume and model (engine/planner.py), made
    here without torch. The CPU's line is exact to the plan the child will make; for a GPU the free memory is known
    only in the child, whose own plan then replaces this text."""
    from SyntheticContrastLib.engine import host_memory, planner

    i, j, k = p.inputVolume.GetImageData().GetDimensions()
    batch = p.batchSize or None
    host = planner.DeviceFacts(free_bytes=host_memory.available_bytes())
    if p.device == "cpu":
        return "Plan: {line}".format(line=planner.plan_card(card, (k, j, i), host, batch, p.stride or None,
                                                                samples=p.samples, precision=p.precision).line())
    gpu = planner.plan_card(card, (k, j, i), planner.DeviceFacts(device="cuda", name="a GPU"), batch or 1, p.stride or None,
                            samples=p.samples, precision="bf16" if p.precision == "auto" else p.precision)
    on_cpu = planner.plan_card(card, (k, j, i), host, 1, p.stride or None, samples=p.samples)
    return "Plan: on a GPU, about {gpu} of GPU memory at batch {batch}; on the CPU, {cpu}".format(
        gpu=planner.human_bytes(gpu.peak_bytes), batch=gpu.batch_size, cpu=on_cpu.line())


def synthesis_arguments(p) -> list[str]:
    """The CLI options for the panel's settings; no model chosen means the CLI's default (the demo model)."""
    args = ["--blend", p.blend, "--batch", str(p.batchSize) if p.batchSize else "auto", "--precision", p.precision, "--device", p.device,
            "--samples", str(p.samples)]
    if p.stride:
        args += ["--stride", str(p.stride)]
    if p.model:
        args += ["--model", p.model]  # a store name or a card path; the CLI resolves both
    return args


class SynthesisController:
    """Starts, follows and cancels one synthesis; on success adds the output node and sets ``p.outputVolume``."""

    def __init__(self, runner: ProcessRunner | None = None):
        self.runner = runner or ProcessRunner()
        self.job: SynthesisJob | None = None
        self._on_finished = None
        self._parameters = None

    @property
    def running(self) -> bool:
        return self.runner.running

    def start(self, p, on_event, on_finished) -> SynthesisJob:
        """Write the input to a private folder and start ``PythonSlicer -m SyntheticContrastLib.cli synthesize``."""
        from SyntheticContrastLib import mrml
        from SyntheticContrastLib.io.reading import write_volume

        if self.running:
            raise RuntimeError("A synthesis is already running; wait for it or cancel it first.")
        if not p.inputVolume:
            raise ValueError("Select a non-contrast CT volume first.")
        workdir = Path(tempfile.mkdtemp(prefix="SyntheticContrast-"))
        job = SynthesisJob(p.inputVolume.GetID(), p.inputVolume.GetName(), workdir, workdir / "input.nrrd",
                           workdir / "output_synthetic.nrrd")
        try:
            write_volume(mrml.volume_from_node(p.inputVolume), job.input_path)
            command = [python_slicer(), "-m", "SyntheticContrastLib.cli", "synthesize", str(job.input_path),
                       str(job.output_path), "--progress-json", "--plausibility-map", *synthesis_arguments(p)]
            pythonpath = os.pathsep.join(filter(None, [str(MODULE_DIR), os.environ.get("PYTHONPATH", "")]))
            self.job, self._on_finished, self._parameters = job, on_finished, p
            from SyntheticContrastLib.cli.watchdog import JOB_DIR_ENV, PARENT_ENV

            # If Slicer dies, the child ends and deletes the private folder with the patient's CT (cli/watchdog.py).
            env = {"PYTHONPATH": pythonpath, PARENT_ENV: str(os.getpid()), JOB_DIR_ENV: str(workdir)}
            self.runner.start(command, job.log_path, on_event, self._finished, env=env)
        except Exception:
            self.job = None
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return job

    def cancel(self):
        """Kill the child; the private folder goes with it, so no partial output is left anywhere."""
        return self.runner.cancel()

    def _finished(self, result) -> None:
        job, callback, p = self.job, self._on_finished, self._parameters
        self.job = self._on_finished = self._parameters = None
        node = None
        if result.state == "done":
            try:
                node, sd_node = self._load_output(job)
                p.outputVolume, p.uncertaintyVolume = node, sd_node
            except Exception as exc:  # the run worked but its result cannot be shown: say why, keep the log
                result.state, result.message = "failed", str(exc)
        if result.state == "failed":
            handle, kept = tempfile.mkstemp(prefix="SyntheticContrast-failed-", suffix=".log")
            os.close(handle)
            kept = Path(kept)
            shutil.copyfile(job.log_path, kept)  # the private folder goes; the log a user may open stays
            result.log_path = kept
        shutil.rmtree(job.workdir, ignore_errors=True)
        if callback:
            callback(result, node)

    @staticmethod
    def _load_output(job: SynthesisJob):
        """(sCECT node, SD map node or None) from the child's output files."""
        from SyntheticContrastLib import mrml
        from SyntheticContrastLib.engine.case import plausibility_map_path, uncertainty_path
        from SyntheticContrastLib.io.reading import read_volume

        source = slicer.mrmlScene.GetNodeByID(job.input_id)
        if source is None:
            raise RuntimeError(f"the input volume {job.input_name!r} was removed from the scene during synthesis")
        volume = read_volume(job.output_path, check_hu=False)
        node = mrml.add_synthetic_volume(slicer.mrmlScene, source, volume, volume.metadata, job.input_name)
        sd_node = None
        if uncertainty_path(job.output_path).exists():
            sd = read_volume(uncertainty_path(job.output_path), check_hu=False)
            sd_node = mrml.add_uncertainty_volume(slicer.mrmlScene, source, sd, sd.metadata, job.input_name)
        violations = plausibility_map_path(job.output_path)
        if violations.exists():
            labels = read_volume(violations, check_hu=False)
            if labels.array.any():  # an empty map would only hide the label layer a user set
                mrml.add_plausibility_overlay(slicer.mrmlScene, source, labels, labels.metadata, job.input_name)
        return node, sd_node

    @staticmethod
    def synthesize_in_process(p, progress=None, cancel=None):
        """For headless scripts and tests: the engine in this process, with the same out-of-distribution checks
        and samples as the CLI; returns (output node, report, findings of the input and of the output)."""
        from SyntheticContrastLib import mrml
        from SyntheticContrastLib.engine.case import check_input, synthesize_case
        from SyntheticContrastLib.engine.inference import SynthesisOptions
        from SyntheticContrastLib.engine.models import DEFAULT_MODEL_CARD, load_model

        source, name = p.inputVolume, p.inputVolume.GetName()
        model = load_model(p.model or DEFAULT_MODEL_CARD, device="cpu")
        options = SynthesisOptions(p.stride or None, p.blend, p.batchSize, p.precision, p.device, samples=p.samples)
        try:
            volume = mrml.volume_from_node(source)
            findings = check_input(volume, model)
            case = synthesize_case(volume, model, options, findings, progress, cancel)
        finally:
            del model
            _release_gpu_memory()
        node = mrml.add_synthetic_volume(slicer.mrmlScene, source, case.result, case.result.metadata, name)
        p.outputVolume = node
        if case.sd is not None:
            p.uncertaintyVolume = mrml.add_uncertainty_volume(slicer.mrmlScene, source, case.sd, case.sd.metadata, name)
        return node, case.report, findings + case.plausibility


def _release_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
