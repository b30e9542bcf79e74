"""Mutation check: put one realistic bug at a time into a copy of the engine and require that a named test fails.

    python scripts/mutation_check.py            # every mutation (a few minutes)
    python scripts/mutation_check.py --quick    # the ones CI runs
    python scripts/mutation_check.py --list
    python scripts/mutation_check.py --from 30  # entries 30 and after (the list is in the order written)

Each mutation replaces one exact snippet of a source file (the script refuses a snippet that no longer matches,
so the list cannot silently go stale) in a temporary copy of the repository, then runs the tests that must catch
it. A mutation that the tests survive is a hole in the suite; the exit code is 1 if any survived.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = "SyntheticContrast/SyntheticContrastLib"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    original: str
    mutated: str
    tests: tuple[str, ...]  # pytest node ids or -k expressions ("file::test" or "file -k expr")
    quick: bool = False


MUTATIONS = (
    Mutation("Gaussian sigma halved", f"{LIB}/engine/geometry.py", "(window - 1) / 2.0, sigma_scale * window", "(window - 1) / 2.0, 0.5 * sigma_scale * window",
             ("tests/test_inference.py",), quick=True),
    Mutation("blend weights dropped from the accumulation", f"{LIB}/engine/inference.py", ".addcmul_(window_pred, weight)",
             ".add_(window_pred)", ("tests/test_inference.py",)),
    Mutation("accumulator placed on the GPU without room for the network", f"{LIB}/engine/planner.py",
             "accum_bytes + network(1) <= usable", "accum_bytes <= usable", ("tests/test_planner.py",)),
    Mutation("auto batch forgets the accumulator beside it", f"{LIB}/engine/planner.py", "on_device + network(b) <= usable",
             "network(b) <= usable", ("tests/test_planner.py",)),
    Mutation("planner frees the skips before their decoder", f"{LIB}/engine/planner.py", "live += concatenated - x - skip",
             "live += concatenated - x", ("tests/test_planner.py",), quick=True),
    Mutation("decode ignores output_channel", f"{LIB}/engine/encoding.py", "lo, hi = self.output_range_hu", "lo, hi = window_bounds(*self.windows[0])",
             ("tests/test_encoding_networks.py",)),
    Mutation("abs() dropped from CNR", f"{LIB}/measurement/cnr.py", 'abs(dta["mean"] - lesion["mean"]) / noise', '(dta["mean"] - lesion["mean"]) / noise',
             ("tests/test_evaluation_cnr.py",), quick=True),
    # The "CNR plane from the rows of the direction" was an equivalent mutant: with orthonormal axes the
    # in-plane distance does not depend on them, and circle_roi no longer uses them. The direction enters here:
    Mutation("physical point to index with the transposed direction", f"{LIB}/io/volume.py",
             "return np.linalg.solve(d, np.asarray(point, float)", "return np.linalg.solve(d.T, np.asarray(point, float)",
             ("tests/test_evaluation_cnr.py",)),
    Mutation("AFROC false positive = first NL mark, not highest", f"{LIB}/readerstudy/foms.py",
             "highest_nl = nl.max(axis=1) if nl.shape[1] else", "highest_nl = nl[:, 0] if nl.shape[1] else", ("tests/test_reader_study.py",)),
    Mutation("NaN filter on one side only", f"{LIB}/measurement/stats.py", "keep = np.isfinite(a) & np.isfinite(b)", "keep = np.isfinite(a)",
             ("tests/test_evaluation_cnr.py",)),
    Mutation("PatientName and PatientID not copied", f"{LIB}/io/dicom_export.py", '"SpecificCharacterSet", "PatientName", "PatientID", ',
             '"SpecificCharacterSet", ', ("tests/test_dicom_export.py",), quick=True),
    Mutation("ImageOrientationPatient from the transposed direction", f"{LIB}/io/dicom_export.py",
             "(*direction[:, 0], *direction[:, 1])", "(*direction[0, :], *direction[1, :])", ("tests/test_dicom_export.py",)),
    Mutation("uneven-spacing tolerance 10x looser", f"{LIB}/io/rules.py", "UNEVEN_RELATIVE, UNEVEN_MM = 0.01, 0.01",
             "UNEVEN_RELATIVE, UNEVEN_MM = 0.1, 0.1",
             ("tests/test_bad_input.py",)),
    Mutation("batch is_done ignores a deleted output", f"{LIB}/engine/batch.py", 'if status.get("status") != "done" or not output.is_file():',
             'if status.get("status") != "done":', ("tests/test_batch.py",)),
    Mutation("failed cases counted as done", f"{LIB}/engine/batch.py", 'if status.get("status") != "done" or not output.is_file():',
             "if not output.is_file():", ("tests/test_batch.py",)),
    Mutation("MS-SSIM scale weights reversed", f"{LIB}/measurement/metrics.py", "MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)",
             "MS_SSIM_WEIGHTS = (0.1333, 0.2363, 0.3001, 0.2856, 0.0448)", ("tests/test_evaluation_cnr.py",)),
    Mutation("air_hu not kept in the card", f"{LIB}/engine/encoding.py", '"air_hu": self.air_hu,', "", ("tests/test_encoding_networks.py",)),
    Mutation("Welford update uses the old mean twice", f"{LIB}/engine/inference.py", "m2[z] += delta * (sample[z] - mean[z])",
             "m2[z] += delta * delta", ("tests/test_uncertainty.py",), quick=True),
    Mutation("out-of-distribution range ignores the tolerance", f"{LIB}/trust/ood.py", "if not lo * (1 - tolerance) <= value <= hi * (1 + tolerance):",
             "if not lo <= value <= hi:", ("tests/test_uncertainty.py",)),
    Mutation("placement keeps the fiducial class", f"{LIB}/mrml.py",
             "selection.SetReferenceActivePlaceNodeClassName(markups_node.GetClassName())",
             'selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")', ("tests/test_slicer_clicks.py",), quick=True),
    Mutation("OR random-reader error term adds Cov3 instead of subtracting it", f"{LIB}/readerstudy/significance.py",
             'error = ms["msTR"] + j_count * max(cov2 - cov3, 0.0)', 'error = ms["msTR"] + j_count * max(cov2 + cov3, 0.0)',
             ("tests/test_significance.py",)),
    Mutation("axial voxel order ignores flipped axes", f"{LIB}/io/orientation.py", "flips[m] = bool(d[patient_axis, index_axis] < 0)",
             "flips[m] = False", ("tests/test_input_variants.py",)),
    Mutation("node acknowledges an instance it could not spool", f"{LIB}/node/receiver.py",
             "            return STATUS_REFUSED_OUT_OF_RESOURCES\n        with self._lock:",
             "            return STATUS_OK\n        with self._lock:", ("tests/test_dicom_node.py",)),
    Mutation("instances that arrive during synthesis do not reopen the series", f"{LIB}/node/queue.py",
             "reopen = CASE WHEN state IN ('working', 'uploading') THEN 'receiving' ELSE reopen END,", "",
             ("tests/test_node_queue.py",), quick=True),
    Mutation("attempts counted at the failure, not when the work starts", f"{LIB}/node/queue.py",
             "SET state=?, attempts=attempts+1, reopen=''", "SET state=?, reopen=''", ("tests/test_node_queue.py",)),
    Mutation("the worker dies on an error outside four types", f"{LIB}/node/worker.py",
             "        except Exception as exc:  # MemoryError", "        except (OSError, RuntimeError, ValueError) as exc:  # MemoryError",
             ("tests/test_node_queue.py",)),
    Mutation("an aborted association is sent short at its quiet time", f"{LIB}/node/queue.py",
             "                if row[\"incomplete\"] and not send_incomplete:", "                if False:", ("tests/test_node_queue.py",)),
    Mutation("a result is sent without checking it holds every acknowledged instance", f"{LIB}/node/worker.py",
             "        missing = acknowledged - made_from", "        missing = set()", ("tests/test_node_queue.py",)),
    Mutation("a truncated NIfTI is read with zeros", f"{LIB}/io/nifti.py", "        if held < declared:", "        if False:",
             ("tests/test_bad_input.py -k NIfTI",)),
    Mutation("a string accepted where a list of AE titles belongs", f"{LIB}/node/config.py",
             "        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):",
             "        if False:", ("tests/test_dicom_node.py -k typed",)),
    Mutation("a sidecar trusted beside another image", f"{LIB}/io/sidecar.py",
             ' or record.get("image_sha256") != sha256_of(image):', ":", ("tests/test_verb_defaults.py",)),
    Mutation("a flipped synthetic grid is not flipped back", f"{LIB}/io/dicom_export.py",
             "return source.with_array(np.ascontiguousarray(array), **synthetic.metadata)",
             "return source.with_array(np.ascontiguousarray(synthetic.array), **synthetic.metadata)", ("tests/test_real_archives.py",)),
    # The node's spool, the store, CLI pass-through, export tags, tolerances at their limits, and the output checks.
    Mutation("the spool's folder is not fsynced after the rename", f"{LIB}/node/spool.py", "    os.replace(partial, path)\n    _fsync_dir(folder)",
             "    os.replace(partial, path)", ("tests/test_node_queue.py -k fsynced",), quick=True),
    Mutation("the instance's own file is not fsynced", f"{LIB}/node/spool.py", "        fh.flush()\n        os.fsync(fh.fileno())",
             "        fh.flush()", ("tests/test_node_queue.py -k fsynced",)),
    Mutation("every stochastic pass draws the same dropout masks", f"{LIB}/engine/inference.py", "torch.manual_seed(options.seed + k)",
             "torch.manual_seed(options.seed)", ("tests/test_pass_through.py",)),
    Mutation("--tile-overlap does not reach the engine", f"{LIB}/cli/common.py", "device or args.device, tile_overlap=args.tile_overlap,",
             "device or args.device,", ("tests/test_pass_through.py",)),
    # load_state_dict(strict=True) stays as a second guard, but the header comparison before building catches every
    # mismatch first, so relaxing strict alone is an equivalent mutant: the comparison is what is mutated.
    Mutation("the card's tensors are not compared with the weights header before building", f"{LIB}/engine/models.py",
             "    if missing or unexpected or reshaped:\n", "    if False:\n",
             ("tests/test_bad_input.py -k tensor_by_tensor",)),
    Mutation("parameter counts not compared before the meta device is used", f"{LIB}/engine/models.py",
             "    if claimed > 2 * count(held) + 1_000_000:", "    if False:", ("tests/test_bad_input.py -k huge_network",)),
    Mutation("leaving the module keeps its GUI bound (Slicer 5.6/5.8 do not detach it)", "SyntheticContrast/SyntheticContrast.py",
             "    def exit(self):\n        self._releaseParameterNode()", "    def exit(self):\n        pass",
             ("tests/test_slicer_panel_qt.py -k leaving",)),
    Mutation("no parameter ceiling for a card's architecture", f"{LIB}/engine/models.py",
             "    if claimed > MAX_GENERATOR_PARAMETERS:\n", "    if False:\n", ("tests/test_bad_input.py -k ceiling",)),
    Mutation("a half-finished install is listed as a model", f"{LIB}/engine/store.py", "if p.is_dir() and not p.name.startswith(\".\")",
             "if p.is_dir()", ("tests/test_model_store.py -k half_finished",)),
    Mutation("padding found without the rescale slope", f"{LIB}/io/dicom_series.py",
             "float(ds.PixelPaddingValue) * float(ds.get(\"RescaleSlope\", 1) or 1) +", "float(ds.PixelPaddingValue) +",
             ("tests/test_real_archives.py -k padding",)),
    Mutation("a gap is a step over twice the median", f"{LIB}/io/rules.py", "GAP_FACTOR = 1.5", "GAP_FACTOR = 2.0",
             ("tests/test_tolerances.py",)),
    Mutation("the export grid's origin tolerance 0.1 mm", f"{LIB}/io/dicom_export.py", '"origin_mm": 0.05,', '"origin_mm": 0.1,',
             ("tests/test_tolerances.py",)),
    Mutation("PatientAge not copied", f"{LIB}/io/dicom_export.py", '"PatientSex", "PatientAge", "StudyInstanceUID",',
             '"PatientSex", "StudyInstanceUID",', ("tests/test_dicom_export.py -k identity",)),
    Mutation("training never draws the last window position", f"{LIB}/engine/training.py", "max(1, z - cfg.window_z + 1)",
             "max(1, z - cfg.window_z)", ("tests/test_phantom_training.py -k every_z",)),
    Mutation("batch digests cached by path only", f"{LIB}/engine/batch.py", "key = (str(path), stat.st_mtime_ns, stat.st_size)",
             "key = (str(path), stat.st_size)", ("tests/test_batch.py -k while_the_batch",)),
    Mutation("measured circles drawn with the diameter as radius", f"{LIB}/mrml.py", "    r = lesion.diameter_mm / 2\n",
             "    r = lesion.diameter_mm\n", ("tests/test_mrml_bridge.py",)),
    Mutation("calibration over the whole volume, air included", f"{LIB}/measurement/evaluation.py",
             "region = mask if mask is not None else body_mask(source.array[sel])", "region = mask",
             ("tests/test_uncertainty.py -k whatever_the",)),
    Mutation("RJafroc IDs not trimmed", f"{LIB}/readerstudy/rjafroc.py", "    return str(value).strip()", "    return str(value)",
             ("tests/test_significance.py -k stray",)),
    Mutation("contrast allowed into fat", f"{LIB}/trust/plausibility.py", '"region_allowance_hu": {"air": 0.0, "fat": 0.0,',
             '"region_allowance_hu": {"air": 0.0, "fat": 500.0,', ("tests/test_plausibility.py -k fat",), quick=True),
    Mutation("darkening never checked", f"{LIB}/trust/plausibility.py", "lowered = any_class & body & (enhancement < -threshold)",
             "lowered = any_class & body & (enhancement < -10 * threshold)", ("tests/test_plausibility.py -k aorta",)),
    Mutation("noise judged on the output, not the NCCT", f"{LIB}/trust/plausibility.py", "    values = n[reference]\n",
             "    values = enhancement[reference]\n", ("tests/test_plausibility.py -k beyond_noise",)),
    # The physics bounds' values are recorded in each card (the bundled one included) and read from it, so the
    # mutation is of the check, not of a constant.
    Mutation("the body wall's muscle may take hundreds of HU", f"{LIB}/trust/plausibility.py", '    if wall > physics["body_wall_region_ml"]:',
             "    if False:", ("tests/test_plausibility.py -k real_ct_gets",)),
    Mutation("the training targets' share of enhanced soft tissue not checked", f"{LIB}/trust/plausibility.py",
             "        if c[\"share_above_100\"] > share_hi:", "        if False:", ("tests/test_plausibility.py -k blob",)),
    Mutation("the training bound judges the noise-sensitive class median again", f"{LIB}/trust/plausibility.py",
             'key = "mean" if "mean" in bounds and "mean" in c else "median"', 'key = "median"',
             ("tests/test_plausibility.py -k keeps_its_inputs_noise",)),
    Mutation("norm 'none' still builds InstanceNorm into the decoder", f"{LIB}/engine/networks.py",
             "dropout, config.norm == \"instance\"))", "dropout, True))",
             ("tests/test_encoding_networks.py -k receptive_field",)),
    Mutation("the block-mean L1 computed but never added to the generator's loss", f"{LIB}/engine/training.py",
             "loss_g = loss_g + self.cfg.lowpass_l1_weight * loss_lowpass", "loss_g = loss_g + 0.0 * loss_lowpass",
             ("tests/test_phantom_training.py -k lowpass_loss_is_trained",)),
)


def check_snippets(mutations) -> None:
    """Every snippet must match exactly once, or the list has gone stale: stop before running anything."""
    for m in mutations:
        if (ROOT / m.path).read_text(encoding="utf-8").count(m.original) != 1:
            raise SystemExit(f"{m.name}: the snippet to mutate is not found exactly once in {m.path}; update the list")


def run(mutation: Mutation, python: str) -> tuple[bool, str]:
    """(killed, detail): apply ``mutation`` in a copy of the repository and run its tests there."""
    text = (ROOT / mutation.path).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", ".pytest_cache", "demo_output"))
        (copy / mutation.path).write_text(text.replace(mutation.original, mutation.mutated), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(copy / "SyntheticContrast"), "QT_QPA_PLATFORM": "offscreen"}
        targets = [part for spec in mutation.tests for part in shlex.split(spec)]  # "file -k expr" is three arguments
        result = subprocess.run([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *targets], cwd=copy,
                                env=env, capture_output=True, text=True)
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    # Killed means tests failed (1) or the mutant broke their collection (2); a usage error (4) or no test run (5) is
    # a broken entry of this list, never a kill.
    return result.returncode in (1, 2), (failed[0] if failed else result.stdout.strip().splitlines()[-1] if result.stdout else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the mutations CI runs")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests, run nothing")
    parser.add_argument("--from", dest="start", type=int, default=0, help="start at this entry of the list (0-based)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="mutants run at once, each in its own copy (default: one per CPU)")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if m.quick or not args.quick][args.start:]
    if args.list:
        for m in chosen:
            print(f"{m.name:55s} {m.path:45s} {' '.join(m.tests)}")
        return 0
    check_snippets(chosen)
    from concurrent.futures import ThreadPoolExecutor

    survivors = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:  # each mutant is a process of its own
        for m, (killed, detail) in zip(chosen, pool.map(lambda m: run(m, sys.executable), chosen)):
            print(f"{'killed  ' if killed else 'SURVIVED'} {m.name}: {detail}", flush=True)
            if not killed:
                survivors.append(m.name)
    print(f"{len(chosen) - len(survivors)} of {len(chosen)} mutations killed" + (f"; survived: {', '.join(survivors)}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
