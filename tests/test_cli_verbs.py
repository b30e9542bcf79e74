"""Every CLI verb the other test files do not run through `main`: phantom, cnr, train (then synthesize with the
model it made) and demo, end to end on small phantoms."""

import json

import pytest

from SyntheticContrastLib.cli import main
from SyntheticContrastLib.measurement.rois import read_rois
from SyntheticContrastLib.io.reading import read_volume


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms")
    assert main(["phantom", str(out), "--seeds", "3-4", "--slices", "16", "--size", "128"]) == 0
    return out


def test_phantom_writes_paired_cases_and_their_rois(phantoms):
    for seed in (3, 4):
        ncct, cect = read_volume(phantoms / f"phantom{seed:04d}_ncct.nii.gz"), read_volume(phantoms / f"phantom{seed:04d}_cect.nii.gz")
        assert ncct.array.shape == cect.array.shape == (16, 128, 128)
        assert read_rois(phantoms / f"phantom{seed:04d}_rois.json")
        assert (cect.array - ncct.array).max() > 150  # the contrast phase enhances the vessels


def test_cnr_verb_on_phantom_volumes(phantoms, tmp_path, capsys):
    case = phantoms / "phantom0003"
    code = main(["cnr", f"{case}_ncct.nii.gz", f"{case}_cect.nii.gz", "--rois", f"{case}_rois.json", "--names", "NCCT,CECT",
                 "--output", str(tmp_path)])
    assert code == 0 and "CNR median" in capsys.readouterr().out
    summary = json.loads((tmp_path / "cnr.json").read_text())["summary"]["volumes"]
    assert summary["CECT"]["cnr"]["median"] > summary["NCCT"]["cnr"]["median"]
    assert (tmp_path / "cnr_per_lesion.csv").read_text().startswith("lesion,volume")


def test_train_then_synthesize_with_the_model_it_made(phantoms, tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHETIC_CONTRAST_MODELS", str(tmp_path / "store"))
    out = tmp_path / "model"
    code = main(["train", "--pairs", str(phantoms), "--output", str(out), "--epochs", "1", "--ngf", "2", "--levels", "3",
                 "--ndf", "4", "--crop", "32", "--samples-per-volume", "1", "--device", "cpu", "--model-id", "cli-test", "--seed", "1",
                 "--install", "site-chest-v1"])
    assert code == 0
    card = json.loads((out / "cli-test.json").read_text())
    assert card["input_statistics"]["volumes"] >= 1 and len(card["sha256"]) == 64
    result = tmp_path / "p_synthetic.nrrd"  # NRRD keeps every provenance key
    code = main(["synthesize", str(phantoms / "phantom0003_ncct.nii.gz"), str(result), "--model", "site-chest-v1",
                 "--device", "cpu", "--no-progress"])  # by its store name
    made = read_volume(result, check_hu=False)
    assert code == 0 and made.array.shape == (16, 128, 128) and made.metadata["SyntheticContrast.model_id"] == "cli-test"


def test_train_into_a_folder_that_holds_a_run_is_refused_without_resume_or_overwrite(tmp_path, capsys):
    """It used to start over silently and overwrite checkpoint.pt after epoch 1: days of GPU time lost."""
    from SyntheticContrastLib.cli import main

    run = tmp_path / "run1"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"days of GPU time")
    code = main(["train", "--phantom-seeds", "1", "--output", str(run), "--epochs", "1", "--ngf", "4", "--levels", "4",
                 "--crop", "64", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "already holds files (checkpoint.pt)" in err and "--resume" in err and "--overwrite" in err
    assert (run / "checkpoint.pt").read_bytes() == b"days of GPU time" and sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]


def test_resume_takes_the_runs_own_settings_and_refuses_a_flag_that_differs(tmp_path, capsys):
    """--resume without the original flags used to build the paper-size network and crash with a raw 'size mismatch'
    RuntimeError. The run folder now holds config.json: a bare --resume (and a longer --epochs) continues the run as
    it was made, and a flag that differs is refused with both values."""
    from SyntheticContrastLib.cli import main

    run = tmp_path / "run"
    small = ["--ngf", "4", "--levels", "4", "--crop", "64", "--samples-per-volume", "2", "--device", "cpu"]
    assert main(["train", "--phantom-seeds", "1", "--phantom-slices", "16", "--output", str(run), "--epochs", "1", *small]) == 0
    stored = json.loads((run / "config.json").read_text())
    assert stored["config"]["generator"]["ngf"] == 4 and stored["data"] == {"phantom_seeds": "1", "phantom_slices": 16}
    capsys.readouterr()
    assert main(["train", "--output", str(run), "--resume", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "resumed after epoch 1" in out and "epoch=2 " in out
    card = json.loads((run / "sct-model.json").read_text())
    assert card["architecture"]["parameters"]["ngf"] == 4 and card["training"]["final_epoch"] == 2
    assert main(["train", "--output", str(run), "--resume", "--epochs", "3", "--ngf", "8"]) == 2
    err = capsys.readouterr().err
    assert "--ngf 8 differs from the run's 4" in err and "config.json" in err
    assert main(["train", "--output", str(run), "--resume", "--phantom-seeds", "2", "--phantom-slices", "16"]) == 2
    assert "the training data differ from the run's" in capsys.readouterr().err


def test_train_writes_and_prints_its_patient_split_and_refuses_a_patient_on_both_sides(tmp_path, capsys):
    from SyntheticContrastLib.cli import main

    data = tmp_path / "data"
    assert main(["phantom", str(data), "--seeds", "1-3", "--slices", "16", "--size", "64"]) == 0
    capsys.readouterr()
    small = ["--epochs", "1", "--ngf", "4", "--levels", "4", "--crop", "64", "--samples-per-volume", "1", "--device", "cpu"]
    assert main(["train", "--pairs", str(data), "--output", str(tmp_path / "run"), *small]) == 0
    out = capsys.readouterr().out
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert not list((tmp_path / "run").glob("samples_epoch*.png"))  # every 5 epochs by default
    assert split["validation"]["patients"] and not set(split["train"]["patients"]) & set(split["validation"]["patients"])
    assert f"split: 2 training pairs (2 patients), 1 validation pairs (1 patients), by patient; {tmp_path / 'run' / 'split.json'}" in out
    assert "epoch 1: step 1/2, " in out and "s to go (loss_g_l1 " in out  # an epoch says where it is before it ends
    assert (tmp_path / "run" / "curves.png").stat().st_size > 5000 and (tmp_path / "run" / "best.pt").is_file()
    assert main(["train", "--pairs", str(data), "--val-pairs", str(data), "--output", str(tmp_path / "both"), *small]) == 2
    assert "are in both --pairs and --val-pairs" in capsys.readouterr().err
    # sample_every was fixed at 5 unless set in --config, so a short run showed no sample: now it comes when asked.
    assert main(["train", "--pairs", str(data), "--output", str(tmp_path / "sampled"), "--sample-every", "1", *small]) == 0
    assert (tmp_path / "sampled" / "samples_epoch001.png").stat().st_size > 5000


def test_every_train_flag_has_help_with_the_default_train_really_uses():
    """Ten train flags had no help text and no default shown; the defaults written into the help are TrainConfig's."""
    import argparse
    import re

    from SyntheticContrastLib.cli import build_parser
    from SyntheticContrastLib.engine.training import TrainConfig

    parser = build_parser()
    train = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    config = TrainConfig()
    fields = {"--epochs": config.epochs, "--ngf": config.generator.ngf, "--levels": config.generator.levels,
              "--dropout": config.generator.dropout, "--ndf": config.discriminator_ndf, "--samples-per-volume": config.samples_per_volume,
              "--lr": config.lr, "--lr-decay-epoch": config.lr_decay_epoch, "--precision": config.precision,
              "--device": config.device, "--seed": config.seed, "--model-id": config.model_id,
              "--default-stride": config.default_stride, "--sample-every": config.sample_every,
              "--val-every": config.val_every, "--val-max-cases": config.val_max_cases, "--norm": config.generator.norm,
              "--lowpass-l1": config.lowpass_l1_weight}
    for action in train._actions:
        if action.option_strings and action.option_strings[0] not in ("-h",):
            assert action.help, f"{action.option_strings[0]} has no help text"
    for flag, value in fields.items():
        action = next(a for a in train._actions if flag in a.option_strings)
        shown = re.search(r"\(default ([^,):]+)", action.help).group(1).strip()
        assert shown == str(value), (flag, shown, value)


def test_the_card_records_its_training_data_split_registration_command_device_and_time(tmp_path, capsys):
    """training_data said 'unspecified' and the card recorded nothing about how the model was made."""
    from SyntheticContrastLib.cli import main
    from SyntheticContrastLib.fileio import sha256_of

    data = tmp_path / "data"
    assert main(["phantom", str(data), "--seeds", "1-3", "--slices", "16", "--size", "64"]) == 0
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("input,target,patient_id\n" + "".join(f"data/phantom000{n}_ncct.nii.gz,data/phantom000{n}_cect.nii.gz,P{n}\n"
                                                              for n in (1, 2, 3)))
    capsys.readouterr()
    assert main(["train", "--pairs", str(pairs), "--register", "--output", str(tmp_path / "run"), "--epochs", "1", "--ngf", "4",
                 "--levels", "4", "--crop", "64", "--samples-per-volume", "1", "--device", "cpu"]) == 0
    record = json.loads((tmp_path / "run" / "sct-model.json").read_text())["training"]
    # --register printed no registration quality, and the run kept none.
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("registered ")]
    assert len(lines) == 3 and all("Mattes mutual information (lower is better)" in l and " -> " in l for l in lines)
    kept = json.loads((tmp_path / "run" / "registration.json").read_text())
    assert sorted(r["pair"] for r in kept) == [f"phantom000{n}_ncct.nii.gz" for n in (1, 2, 3)] and record["registration"] == kept
    assert record["data"]["pairs_sha256"] == sha256_of(pairs) and (record["pairs"], record["patients"]) == (3, 3)
    assert sorted(record["split"]["train"]["patients"] + record["split"]["validation"]["patients"]) == ["P1", "P2", "P3"]
    assert record["command"].startswith(f"synthetic-contrast train --pairs {pairs} --register --output ") and record["device"] == "cpu"
    assert record["wall_s"] > 0
    assert record["versions"]["torch"] and record["exported_epoch"] == 1
