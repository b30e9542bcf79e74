"""Batch: resume, one bad case, SIGKILL mid-run, and case shards under a 2-rank torchrun."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from conftest import chest_like, free_port, write_dicom_series
from SyntheticContrastLib.engine.batch import discover_cases
from SyntheticContrastLib.cli import main
from SyntheticContrastLib.io.reading import read_volume, write_volume
from SyntheticContrastLib.io.volume import Volume


def make_cases(root: Path, n: int, slices: int = 20, bad: bool = False) -> None:
    for k in range(n):
        sub = root / f"site{k % 2}"
        write_volume(Volume(chest_like((slices, 32, 32), seed=k), (0.7, 0.7, 2.5), (0, 0, 0)), sub / f"case{k}.nii.gz")
    write_dicom_series(root / "dicom_study" / "series1", np.round(chest_like((slices, 32, 32))))
    if bad:
        (root / "broken.nrrd").write_bytes(b"NRRD0004\nthis is not a header\n")


def manifest(out: Path) -> dict:
    with open(out / "manifest.csv", newline="") as fh:
        return {r["case"]: r for r in csv.DictReader(fh)}


def test_discovery_finds_files_and_dicom_folders(tmp_path):
    make_cases(tmp_path / "in", 3)
    names = [c.name for c in discover_cases(tmp_path / "in")]
    assert names == ["dicom_study__series1", "site0__case0", "site0__case2", "site1__case1"]


def test_bad_case_is_reported_and_the_batch_goes_on_then_resumes(tmp_path, tiny_model_card, capsys):
    make_cases(tmp_path / "in", 3, bad=True)
    (tmp_path / "in" / "dicom_study" / "series1" / "README.txt").write_text("exported by PACS")
    args = ["batch", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(tiny_model_card), "--device", "cpu", "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "broken" in err and "cannot be read as an image" in err
    rows = manifest(tmp_path / "out")
    assert rows["broken"]["status"] == "failed" and "broken.nrrd" in rows["broken"]["error"]
    done = [r for r in rows.values() if r["status"] == "done"]
    assert len(done) == 4 and all(r["model_sha256"] == json.loads(tiny_model_card.read_text())["sha256"] for r in done)
    assert rows["dicom_study__series1"]["notes"] == "README.txt: not a DICOM file; ignored"  # the manifest says it too
    mtimes = {r["case"]: os.path.getmtime(r["output"]) for r in done}
    assert main(args) == 1  # the broken case is retried and fails again; done cases are skipped
    assert {c: os.path.getmtime(manifest(tmp_path / "out")[c]["output"]) for c in mtimes} == mtimes
    assert (tmp_path / "out" / "logs" / "site0__case0.log").read_text().count("done:") == 1


def _cli(*args, env=None):
    return [sys.executable, "-m", "SyntheticContrastLib.cli", *args]


def test_sigkill_mid_batch_loses_no_finished_case(tmp_path, tiny_model_card):
    make_cases(tmp_path / "in", 8, slices=60)
    out = tmp_path / "out"
    cmd = _cli("batch", str(tmp_path / "in"), str(out), "--model", str(tiny_model_card), "--device", "cpu", "--stride", "1", "--no-progress")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("status/*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = {p.stem: p.stat().st_mtime for p in (out / "status").glob("*.json")}
    assert 2 <= len(finished_before) < 9, "the kill should land mid-batch"
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = manifest(out)
    assert len(rows) == 9 and all(r["status"] == "done" for r in rows.values())
    for case, mtime in finished_before.items():
        assert (out / "status" / f"{case}.json").stat().st_mtime == mtime  # not redone
    for r in rows.values():
        assert read_volume(r["output"], check_hu=False).array.shape == (60, 32, 32)
    assert not list((out / "outputs").glob(".*partial*"))
    assert sorted(p.name for p in (out / "outputs").iterdir()) == sorted(
        f"{c}_sCECT_synthetic{ext}" for c in rows for ext in (".nii.gz", ".json"))  # each volume with its sidecar


def test_two_rank_torchrun_splits_cases_without_overlap(tmp_path, tiny_model_card):
    make_cases(tmp_path / "in", 5)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "-m",
           "SyntheticContrastLib.cli", "batch", str(tmp_path / "in"), str(out), "--model", str(tiny_model_card),
           "--device", "cpu", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    rows = manifest(out)
    assert len(rows) == 6 and all(r["status"] == "done" for r in rows.values())
    ranks = {c: int(r["rank"]) for c, r in rows.items()}
    names = [c.name for c in discover_cases(tmp_path / "in")]
    assert ranks == {name: i % 2 for i, name in enumerate(names)}
    for log in (out / "logs").iterdir():
        assert log.read_text().count("done:") == 1


def test_an_unexpected_error_in_one_case_does_not_stop_the_batch(tmp_path, tiny_model_card, monkeypatch):
    from SyntheticContrastLib.engine import case as case_module
    from SyntheticContrastLib.engine.batch import BatchRunner
    from SyntheticContrastLib.engine.inference import SynthesisOptions
    from SyntheticContrastLib.engine.models import load_model

    make_cases(tmp_path / "in", 3)
    real = case_module.synthesize_volume_with_uncertainty

    def flaky(volume, *args, **kwargs):
        if "case1" in volume.source:
            raise RuntimeError("simulated ITK failure")
        return real(volume, *args, **kwargs)

    monkeypatch.setattr(case_module, "synthesize_volume_with_uncertainty", flaky)
    runner = BatchRunner(tmp_path / "out", load_model(tiny_model_card), SynthesisOptions(device="cpu"))
    results = {r["case"]: r for r in runner.run(discover_cases(tmp_path / "in"))}
    assert results["site1__case1"]["status"] == "failed"
    assert "RuntimeError: simulated ITK failure" in results["site1__case1"]["error"] and "case1.nii.gz" in results["site1__case1"]["error"]
    assert sum(r["status"] == "done" for r in results.values()) == 3


def test_every_input_gets_its_own_case_and_output_whatever_its_name(tmp_path, tiny_model_card):
    """UID-named folders, a file and a folder of the same stem, and names that fold together when made safe."""
    root = tmp_path / "in"
    vol = lambda seed: Volume(chest_like((16, 32, 32), seed=seed), (0.7, 0.7, 2.5), (0, 0, 0))
    for k, uid in enumerate(("1.2.840.113619.2.1", "1.2.840.113619.2.2", "1.2.840.113619.2.3")):
        write_dicom_series(root / uid, np.round(chest_like((16, 32, 32), seed=k)))
    write_volume(vol(10), root / "patient1.nii.gz")
    write_dicom_series(root / "patient1", np.round(chest_like((16, 32, 32), seed=11)))
    write_volume(vol(12), root / "bed 2.nii.gz")
    write_volume(vol(13), root / "bed_2.nii.gz")
    write_volume(vol(14), root / "ward" / "bed 2.nrrd")
    cases = discover_cases(root)
    assert len(cases) == 8 and len({c.name for c in cases}) == 8 and len({c.input for c in cases}) == 8
    assert discover_cases(root) == cases  # stable: the same tree gives the same names
    assert "bed_2" in [c.name for c in cases]  # a name that needed no change keeps it
    code = main(["batch", str(root), str(tmp_path / "out"), "--model", str(tiny_model_card), "--device", "cpu", "--no-progress"])
    assert code == 0
    rows = manifest(tmp_path / "out")
    assert len(rows) == 8 and len({r["input"] for r in rows.values()}) == 8
    assert len(list((tmp_path / "out" / "outputs").glob("*_synthetic.nii.gz"))) == 8
    assert all(r["status"] == "done" for r in rows.values())
    assert all(r["ood"].startswith("not checked") for r in rows.values())  # the tiny card has no statistics: not "none"


def test_a_changed_output_is_never_overwritten_by_a_rerun(tmp_path, tiny_model_card, capsys):
    make_cases(tmp_path / "in", 2)
    args = ["batch", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(tiny_model_card), "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    output = Path(manifest(tmp_path / "out")["site0__case0"]["output"])
    output.write_bytes(output.read_bytes() + b"edited")
    edited = output.read_bytes()
    assert main(args) == 1
    row = manifest(tmp_path / "out")["site0__case0"]
    assert row["status"] == "failed" and "changed since this batch wrote it" in row["error"]
    assert "changed since this batch wrote it" in capsys.readouterr().err
    assert output.read_bytes() == edited
    assert manifest(tmp_path / "out")["site1__case1"]["status"] == "done"


def test_csv_manifest_with_names_that_collide_is_refused_before_any_work(tmp_path, tiny_model_card, capsys):
    src = write_volume(Volume(chest_like((16, 32, 32)), (0.7, 0.7, 2.5), (0, 0, 0)), tmp_path / "a.nii.gz")
    (tmp_path / "cases.csv").write_text(f"case,input\nbed 2,{src.name}\nbed_2,{src.name}\n")
    code = main(["batch", str(tmp_path / "cases.csv"), str(tmp_path / "out"), "--model", str(tiny_model_card), "--device", "cpu"])
    assert code == 1 and "case names repeat" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_batch_that_cannot_start_says_why_without_a_traceback(tmp_path, tiny_model_card):
    make_cases(tmp_path / "in", 1)
    (tmp_path / "out").write_text("a file where the output folder should go")
    result = subprocess.run([sys.executable, "-m", "SyntheticContrastLib.cli", "batch", str(tmp_path / "in"), str(tmp_path / "out"),
                             "--model", str(tiny_model_card), "--device", "cpu", "--no-progress"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "SyntheticContrast")})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: ") and str(tmp_path / "out") in result.stderr


def test_a_deleted_output_is_redone_and_a_failed_case_with_an_output_is_not_done(tmp_path, tiny_model_card, monkeypatch):
    from SyntheticContrastLib.engine import case as case_module
    from SyntheticContrastLib.engine.batch import BatchRunner
    from SyntheticContrastLib.engine.inference import SynthesisOptions
    from SyntheticContrastLib.engine.models import load_model

    make_cases(tmp_path / "in", 2)
    cases = discover_cases(tmp_path / "in")
    runner = BatchRunner(tmp_path / "out", load_model(tiny_model_card), SynthesisOptions(device="cpu"))
    runner.run(cases)
    first, second = cases[1], cases[2]
    Path(json.loads(runner.status_path(first).read_text())["output"]).unlink()  # someone deleted an output
    assert not runner.is_done(first) and runner.is_done(second)

    real_write = case_module.write_case

    def volume_then_dicom_fails(result, output, *args, **kwargs):
        real_write(result, output)  # the volume reaches its final name ...
        raise OSError(28, "No space left on device")  # ... and the next write fails

    monkeypatch.setattr(case_module, "write_case", volume_then_dicom_fails)
    redone = {r["case"]: r for r in runner.run(cases)}
    assert redone[first.name]["status"] == "failed" and "No space left" in redone[first.name]["error"]
    assert Path(redone[first.name]["input"]).exists() and runner.output_path(first).exists()
    assert not runner.is_done(first), "a failed case whose output file exists must not count as done"
    assert redone[second.name]["status"] == "done"  # untouched, skipped


def test_names_made_from_user_text_are_valid_on_windows_and_bounded():
    from SyntheticContrastLib.fileio import safe_file_name

    assert safe_file_name("1: Chest 2.5mm") == "1__Chest_2.5mm"  # a DICOM-loaded node's name: ':' is not allowed on Windows
    assert safe_file_name("CON") == "_CON" and safe_file_name("aux.nii") == "_aux.nii"
    assert safe_file_name(' <>"|?* ') == "unnamed"
    long_a, long_b = "p" * 300 + "a", "p" * 300 + "b"
    assert len(safe_file_name(long_a).encode()) == 120 and safe_file_name(long_a) != safe_file_name(long_b)


def test_a_case_name_over_255_bytes_is_shortened_and_the_batch_finishes(tmp_path, tiny_model_card):
    """One such name used to abort the whole batch with no manifest."""
    from SyntheticContrastLib.io.reading import write_volume
    from SyntheticContrastLib.io.volume import Volume

    root = tmp_path / "in" / ("deep_" * 30)
    root.mkdir(parents=True)
    write_volume(Volume(chest_like((20, 32, 32)).astype(np.float32), (1, 1, 2), (0, 0, 0)), root / ("case_" * 40 + ".nii.gz"))  # each path part fits; the case name joins them: 352 bytes
    assert main(["batch", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(tiny_model_card), "--device", "cpu"]) == 0
    (row,) = manifest(tmp_path / "out").values()
    assert row["status"] == "done" and len(Path(row["output"]).name.encode()) <= 255


def test_a_corrupt_status_file_is_named_and_its_case_done_again(tmp_path, tiny_model_card, capsys):
    """One such file used to stop every rerun with exit 2, naming no file."""
    make_cases(tmp_path / "in", 2)
    args = ["batch", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(tiny_model_card), "--device", "cpu"]
    assert main(args) == 0
    broken, *kept = sorted((tmp_path / "out" / "status").glob("*.json"))
    broken.write_bytes(b"\x00\x00{not json")
    kept_before = [k.stat().st_mtime_ns for k in kept]
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"status file {broken} is not readable JSON" in err and "the case is done again" in err
    assert json.loads(broken.read_text())["status"] == "done" and [k.stat().st_mtime_ns for k in kept] == kept_before
    assert {r["status"] for r in manifest(tmp_path / "out").values()} == {"done"}


def test_an_output_changed_while_the_batch_still_runs_is_reported_in_its_final_manifest(tmp_path, tiny_model_card):
    """The manifest is rebuilt after every case from cached digests: an output edited between two cases, with its
    size kept, must not keep the digest of what the batch wrote."""
    from SyntheticContrastLib.engine.batch import BatchRunner
    from SyntheticContrastLib.engine.inference import SynthesisOptions
    from SyntheticContrastLib.engine.models import load_model

    make_cases(tmp_path / "in", 2)
    runner = BatchRunner(tmp_path / "out", load_model(tiny_model_card), SynthesisOptions(device="cpu"))
    edited = []

    def after_each(status):
        if not edited:  # after the first case, before the second: same size, new bytes, new mtime
            output = Path(status["output"])
            data = bytearray(output.read_bytes())
            data[-1] ^= 0xFF
            output.write_bytes(bytes(data))
            edited.append(status["case"])

    runner.run(discover_cases(tmp_path / "in"), progress=after_each)
    rows = manifest(tmp_path / "out")
    assert rows[edited[0]]["status"] == "failed" and "changed since this batch wrote it" in rows[edited[0]]["error"]
    assert [r["status"] for name, r in rows.items() if name != edited[0]] == ["done", "done"]


def test_a_rerun_with_another_model_is_refused_by_name_and_overwrite_makes_every_output_with_it(tmp_path, tiny_model_card, capsys):
    """A rerun with another --model skipped every case as 'already done' and left the old model's outputs under a
    manifest the user took for the new one's. Outputs of two models are never mixed in one folder."""
    from conftest import tiny_generator
    from SyntheticContrastLib.engine.models import ModelCard, read_card, save_model

    first = read_card(tiny_model_card)
    other = save_model(tiny_generator(seed=7), ModelCard(**{**first.__dict__, "model_id": "tiny-other", "sha256": ""}),
                       tmp_path / "other" / "tiny-other.json")
    make_cases(tmp_path / "in", 2)
    base = ["batch", str(tmp_path / "in"), str(tmp_path / "out"), "--device", "cpu", "--no-progress"]
    assert main(base + ["--model", str(tiny_model_card)]) == 0
    outputs = {name: Path(r["output"]).read_bytes() for name, r in manifest(tmp_path / "out").items()}
    capsys.readouterr()
    assert main(base + ["--model", str(other)]) == 1
    err = capsys.readouterr().err
    assert "made by model tiny-test" in err and "this run's model is tiny-other" in err and "--overwrite" in err
    assert "already done" not in err
    assert {name: Path(r["output"]).read_bytes() for name, r in manifest(tmp_path / "out").items()} == outputs  # untouched
    assert main(base + ["--model", str(other), "--overwrite"]) == 0
    rows = manifest(tmp_path / "out")
    assert {r["model_id"] for r in rows.values()} == {"tiny-other"} and all(r["status"] == "done" for r in rows.values())
    assert all(Path(r["output"]).read_bytes() != outputs[name] for name, r in rows.items())


def test_a_phantom_folder_gives_its_ncct_cases_only_and_globs_choose_otherwise(tmp_path):
    """batch on a `phantom` folder took every volume as a case, the CECT references included: 6 cases, not 3."""
    assert main(["phantom", str(tmp_path / "ph"), "--seeds", "1-3", "--slices", "4", "--size", "32"]) == 0
    write_volume(Volume(chest_like((4, 32, 32)), (0.7, 0.7, 2.5), (0, 0, 0)), tmp_path / "ph" / "phantom0001_sCECT_synthetic.nii.gz")
    assert [c.name for c in discover_cases(tmp_path / "ph")] == ["phantom0001_ncct", "phantom0002_ncct", "phantom0003_ncct"]
    assert [c.name for c in discover_cases(tmp_path / "ph", include=["*_cect.nii.gz"])] == [
        "phantom0001_cect", "phantom0002_cect", "phantom0003_cect"]
    assert [c.name for c in discover_cases(tmp_path / "ph", exclude=["phantom0002*"])] == ["phantom0001_ncct", "phantom0003_ncct"]
    # A lone CECT (no NCCT beside it) is somebody's input, and is kept.
    (tmp_path / "ph" / "phantom0003_ncct.nii.gz").unlink()
    assert "phantom0003_cect" in [c.name for c in discover_cases(tmp_path / "ph")]


def test_two_slurm_array_shards_run_one_after_the_other_do_each_case_exactly_once(tmp_path, tiny_model_card, monkeypatch, capsys):
    make_cases(tmp_path / "in", 5)
    args = ["batch", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(tiny_model_card), "--device", "cpu", "--no-progress"]
    for task, done in (("4", 3), ("3", 6)):  # sbatch --array=3-4: task ids 3 and 4, in either order
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "3")
        monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
        assert main(args) == 0
        statuses = [r["status"] for r in manifest(tmp_path / "out").values()]
        assert statuses.count("done") == done and statuses.count("pending") == 6 - done  # each task its half
    rows = manifest(tmp_path / "out")
    assert len(rows) == 6 and all(r["status"] == "done" for r in rows.values())  # 5 files and a DICOM series
    for name in rows:
        log = (tmp_path / "out" / "logs" / f"{name}.log").read_text()
        assert log.count("done: ") == 1, name  # synthesised once, by one shard
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    capsys.readouterr()
    assert main(args + ["--shard", "3/2"]) == 1 and "K must be 1 to N" in capsys.readouterr().err
