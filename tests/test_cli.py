"""The synthesize command: success, provenance in the output, and each error path with its exit code."""

import hashlib
import json
import subprocess
import sys

import pytest

from conftest import chest_like, write_dicom_series
from SyntheticContrastLib.cli import main
from SyntheticContrastLib.io.reading import read_volume, write_volume
from SyntheticContrastLib.io.volume import Volume


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def ncct(tmp_path):
    return write_volume(Volume(chest_like((20, 32, 32)), (0.7, 0.7, 2.5), (1.0, 2.0, 3.0)), tmp_path / "case1.nii.gz")


def test_synthesize_writes_a_synthetic_volume_and_leaves_the_input_alone(tmp_path, ncct, tiny_model_card, capsys):
    before = digest(ncct)
    out = tmp_path / "out"
    out.mkdir()
    code = main(["synthesize", str(ncct), str(out), "--model", str(tiny_model_card), "--device", "cpu", "--no-progress", "--stride", "2"])
    assert code == 0
    written = out / "case1_sCECT_synthetic.nii.gz"
    result = read_volume(written, check_hu=False)
    assert result.array.shape == (20, 32, 32) and result.origin == pytest.approx((1.0, 2.0, 3.0))
    assert digest(ncct) == before
    assert "SYNTHETIC" in capsys.readouterr().out
    import SimpleITK as sitk

    header = sitk.ReadImage(str(written))
    assert header.GetMetaData("descrip").startswith("SYNTHETIC")
    assert not list(out.glob(".*partial*"))


def test_output_name_must_say_synthetic(tmp_path, ncct, tiny_model_card, capsys):
    code = main(["synthesize", str(ncct), str(tmp_path / "case1_cect.nii.gz"), "--model", str(tiny_model_card)])
    assert code == 2
    assert "must contain 'synthetic'" in capsys.readouterr().err
    assert not (tmp_path / "case1_cect.nii.gz").exists()


@pytest.mark.parametrize(
    "make,message,code",
    [
        (lambda p: p / "missing.nii.gz", "does not exist", 1),
        (lambda p: write_dicom_series(p / "mr", chest_like((8, 16, 16)), modality="MR")[0].parent, "not CT", 1),
    ],
)
def test_input_errors_exit_1_and_name_the_file(tmp_path, tiny_model_card, capsys, make, message, code):
    src = make(tmp_path)
    rc = main(["synthesize", str(src), str(tmp_path / "x_synthetic.nii.gz"), "--model", str(tiny_model_card)])
    err = capsys.readouterr().err
    assert rc == code and message in err and str(src) in err


def test_tampered_model_exits_1(tmp_path, ncct, tiny_model_card, capsys):
    card = json.loads(tiny_model_card.read_text())
    card["sha256"] = "0" * 64
    tiny_model_card.write_text(json.dumps(card))
    assert main(["synthesize", str(ncct), str(tmp_path / "x_synthetic.nii.gz"), "--model", str(tiny_model_card)]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err


def test_options_the_cpu_cannot_honour_exit_2(tmp_path, ncct, tiny_model_card, capsys):
    rc = main(["synthesize", str(ncct), str(tmp_path / "x_synthetic.nii.gz"), "--model", str(tiny_model_card), "--device", "cpu", "--precision", "fp16"])
    assert rc == 2 and "fp16" in capsys.readouterr().err


def test_unwritable_output_exits_1(tmp_path, ncct, tiny_model_card, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the output folder should be")
    target = blocker / "x_synthetic.nii.gz"
    rc = main(["synthesize", str(ncct), str(target), "--model", str(tiny_model_card), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "cannot write here" in err and str(blocker) in err


def test_every_verb_has_help():
    for verb in ("synthesize", "train", "phantom"):
        res = subprocess.run([sys.executable, "-m", "SyntheticContrastLib.cli", verb, "--help"], capture_output=True, text=True)
        assert res.returncode == 0 and "usage:" in res.stdout
    res = subprocess.run([sys.executable, "-m", "SyntheticContrastLib.cli", "synthesize"], capture_output=True, text=True)
    assert res.returncode == 2 and "required" in res.stderr


def test_help_of_every_verb_imports_no_torch():
    """--help waited 2-28 s for the torch import (2.0 s measured here at low load, 0.3 s without it): the parser
    must not import it; only a verb's work does."""
    code = ("import sys\nfrom SyntheticContrastLib.cli import build_parser, main\n"
            "verbs = [a for a in build_parser()._actions if a.dest == 'verb'][0].choices\n"
            "for verb in verbs:\n"
            "    try:\n        main([verb, '--help'])\n    except SystemExit:\n        pass\n"
            "print(len(verbs), 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    count, imported = res.stdout.split()[-2:]
    assert int(count) >= 10 and imported == "False"


def test_progress_json_prints_one_event_per_line_for_a_calling_program(tmp_path, ncct, tiny_model_card, capsys):
    out = tmp_path / "case1_synthetic.nrrd"
    code = main(["synthesize", str(ncct), str(out), "--model", str(tiny_model_card), "--device", "cpu", "--stride", "2", "--progress-json"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    events = [json.loads(line) for line in lines]  # every stdout line is JSON: a human "wrote ..." went to stderr
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "done" and kinds.count("progress") >= 2
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["windows_done"] for e in progress] == list(range(1, progress[-1]["windows_total"] + 1))
    assert progress[-1]["fraction"] == 1.0 and progress[-1]["device"] == "cpu" and progress[-1]["eta_s"] == 0.0
    assert events[-1]["output"] == str(out) and events[-1]["windows"] == progress[-1]["windows_total"]
    assert read_volume(out, check_hu=False).metadata["SyntheticContrast.model_id"] == "tiny-test"  # provenance read back
    (plan,) = [e for e in events if e["event"] == "plan"]
    assert kinds.index("plan") < kinds.index("progress")  # said before the first window
    assert plan["windows"] == progress[-1]["windows_total"] and plan["batch_size"] == 1 and plan["device"] == "cpu"
    assert plan["seconds"] > 0 and plan["host_peak_bytes"] > plan["accumulator_bytes"] > 0 and plan["fits"] is True


def test_progress_json_reports_errors_as_an_event_too(tmp_path, tiny_model_card, capsys):
    missing = tmp_path / "missing.nii.gz"
    code = main(["synthesize", str(missing), str(tmp_path / "x_synthetic.nii.gz"), "--model", str(tiny_model_card), "--progress-json"])
    captured = capsys.readouterr()
    assert code == 1 and "does not exist" in captured.err
    (event,) = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    assert event["event"] == "error" and str(missing) in event["message"]


def test_a_missing_device_is_refused_before_the_input_is_read(tmp_path, tiny_model_card, capsys, monkeypatch):
    import SyntheticContrastLib.io.reading as reading

    monkeypatch.setattr(reading, "read_volume", lambda *a, **k: pytest.fail("the input was read before the device was checked"))
    code = main(["synthesize", str(tmp_path / "any.nii.gz"), str(tmp_path / "x_synthetic.nii.gz"), "--device", "cuda:7"])
    assert code == 2 and "device 'cuda:7' was asked for but no CUDA GPU is available" in capsys.readouterr().err


def test_version_says_which_release_runs(capsys):
    from SyntheticContrastLib import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"synthetic-contrast {__version__}"


def test_auto_and_cuda_mean_this_ranks_gpu_under_torchrun(monkeypatch):
    """Every rank on GPU 0 would be the silent result of a bare 'cuda' under torchrun."""
    import torch

    from SyntheticContrastLib.engine.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("auto") == torch.device("cuda", 2) and resolve_device("cuda") == torch.device("cuda", 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(ValueError, match="device 'cuda:9' was asked for but only 4 CUDA GPU"):
        resolve_device("cuda:9")


def test_the_samples_warning_comes_before_the_n_fold_run_and_once(tmp_path, ncct, tiny_model_card, capsys):
    """--samples 4 with a model without dropout said so only after the 4x-long run."""
    out = tmp_path / "o_synthetic.nii.gz"
    code = main(["synthesize", str(ncct), str(out), "--model", str(tiny_model_card), "--device", "cpu", "--samples", "2",
                 "--progress-json"])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    kinds = [e["event"] for e in events]
    warning = [i for i, e in enumerate(events) if e["event"] == "warning" and "no dropout" in e["message"]]
    assert len(warning) == 1 and warning[0] < kinds.index("progress")


def test_windows_mean_the_same_in_the_bar_the_summary_the_header_and_the_done_event(tmp_path, tiny_model_card, capsys):
    """'5 windows' followed a bar that counted 1125: the summary counted z-positions, the bar z-positions x tiles."""
    from SyntheticContrastLib.io.reading import write_volume

    src = write_volume(Volume(chest_like((20, 64, 64)), (0.7, 0.7, 2.5), (0.0, 0.0, 0.0)), tmp_path / "wide.nrrd")
    out = tmp_path / "wide_synthetic.nrrd"
    assert main(["synthesize", str(src), str(out), "--model", str(tiny_model_card), "--device", "cpu", "--stride", "4",
                 "--progress-json"]) == 0  # the card's window is 32 x 32 in-plane: 64 x 64 slices are tiled
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    total = [e for e in events if e["event"] == "progress"][-1]["windows_total"]
    done = events[-1]
    header = read_volume(out, check_hu=False).metadata["SyntheticContrast.windows"]
    assert done["windows"] == total == int(header) and total > 4
    assert f"{total} windows (" in captured.err and "z-positions x" in captured.err and "in-plane tiles)" in captured.err
