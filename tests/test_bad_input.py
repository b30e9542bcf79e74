"""Bad input through the CLI and the batch: a clear error naming the file and the problem, a non-zero
exit, and every input file byte-for-byte unchanged. Plus a bounded fuzz test of the readers."""

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import chest_like, write_dicom_series
from SyntheticContrastLib.cli import main
from SyntheticContrastLib.errors import InputError
from SyntheticContrastLib.io.reading import read_volume, write_volume
from SyntheticContrastLib.io.volume import Volume


def snapshot(root: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _dicom(root, name, **kw):
    return write_dicom_series(root / name, np.round(chest_like((8, 24, 24))), spacing=(1, 1, 2), **kw)[0].parent


def corrupt(root):
    folder = _dicom(root, "corrupt")
    (folder / "slice003.dcm").write_bytes(b"\x00" * 200 + b"not dicom")
    return folder


def truncated(root):
    folder = _dicom(root, "truncated")
    f = folder / "slice004.dcm"
    f.write_bytes(f.read_bytes()[:-600])
    return folder


def mixed(root):
    folder = _dicom(root, "mixed", series_uid="1.2.826.0.1.1", description="NC")
    other = _dicom(root, "other", series_uid="1.2.826.0.1.2", description="CE")
    for f in other.iterdir():
        f.rename(folder / f"b_{f.name}")
    other.rmdir()
    return folder


def vol_file(root, name, array, spacing=(1, 1, 2)):
    return write_volume(Volume(array.astype(np.float32), spacing, (0, 0, 0)), root / name)


def flat_2d(root):
    path = root / "flat2d.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(chest_like((1, 24, 24))[0]), str(path))
    return path


def with_nan(root):
    a = chest_like((8, 24, 24))
    a[2, 5, 5] = np.inf
    return vol_file(root, "nan.nrrd", a)


# (maker, text the message must contain)
BAD_INPUTS = {
    "corrupt DICOM file": (corrupt, "not a readable DICOM file"),
    "truncated DICOM file": (truncated, "is truncated: pixel data has"),
    "folder mixing two series": (mixed, "holds 2 DICOM series"),
    "missing slice": (lambda r: _dicom(r, "gap", positions=[0, 2, 4, 6, 10, 12, 14, 16]), "slice(s) missing"),
    "uneven spacing": (lambda r: _dicom(r, "uneven", positions=[0, 2, 4, 6, 7.5, 9, 11, 13]), "uneven slice spacing"),
    "non-CT modality (MR)": (lambda r: _dicom(r, "mr", modality="MR"), "modality is MR, not CT"),
    "2D image": (flat_2d, "2D image"),
    "NaN or inf voxels": (with_nan, "NaN or infinite voxels"),
    "intensities not HU": (lambda r: vol_file(r, "scaled.nii.gz", chest_like((8, 24, 24)) / 4000 + 0.5), "do not look like Hounsfield units"),
    "empty folder": (lambda r: (r / "empty").mkdir() or r / "empty", "empty folder"),
    "path that does not exist": (lambda r: r / "no_such_case.nii.gz", "does not exist"),
}


@pytest.mark.parametrize("label", list(BAD_INPUTS))
def test_synthesize_rejects_bad_input(tmp_path, tiny_model_card, capsys, label):
    maker, message = BAD_INPUTS[label]
    (tmp_path / "in").mkdir()
    bad = maker(tmp_path / "in")
    before = snapshot(tmp_path / "in")
    rc = main(["synthesize", str(bad), str(tmp_path / "x_synthetic.nii.gz"), "--model", str(tiny_model_card), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert message in err and bad.name in err
    assert snapshot(tmp_path / "in") == before
    assert not (tmp_path / "x_synthetic.nii.gz").exists()


def test_batch_reports_every_bad_input_and_finishes_the_good_one(tmp_path, tiny_model_card, capsys):
    root = tmp_path / "in"
    root.mkdir()
    for label, (maker, _) in BAD_INPUTS.items():
        if label not in ("path that does not exist", "empty folder", "folder mixing two series"):
            maker(root)
    vol_file(root, "good.nii.gz", chest_like((20, 32, 32)))
    before = snapshot(root)
    rc = main(["batch", str(root), str(tmp_path / "out"), "--model", str(tiny_model_card), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    import csv

    with open(tmp_path / "out" / "manifest.csv", newline="") as fh:
        rows = {r["case"]: r for r in csv.DictReader(fh)}
    assert rows["good"]["status"] == "done"
    failed = {c: r["error"] for c, r in rows.items() if r["status"] == "failed"}
    assert len(failed) == len(rows) - 1 == 8
    for label, (maker, message) in BAD_INPUTS.items():
        if label in ("path that does not exist", "empty folder", "folder mixing two series"):
            continue
        assert any(message in e for e in failed.values()), label
    assert all(c in err for c in failed)
    assert snapshot(root) == before


def test_mixed_series_in_a_batch_tree_is_one_failed_case_listing_both(tmp_path, tiny_model_card, capsys):
    (tmp_path / "in").mkdir()
    mixed(tmp_path / "in")
    assert main(["batch", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(tiny_model_card), "--no-progress"]) == 1
    assert "holds 2 DICOM series" in capsys.readouterr().err


def test_fewer_slices_than_the_window_are_padded_with_a_note(tmp_path, tiny_model_card, capsys):
    src = vol_file(tmp_path, "short.nii.gz", chest_like((5, 32, 32)))
    rc = main(["synthesize", str(src), str(tmp_path / "short_synthetic.nii.gz"), "--model", str(tiny_model_card), "--device", "cpu", "--no-progress"])
    assert rc == 0
    assert "5 slices, fewer than the 16-slice window" in capsys.readouterr().err


def test_unreadable_path(tiny_model_card):
    """Root reads every file, so as root the check runs with the effective user 'nobody' to meet a locked file."""
    import shutil
    import tempfile

    from SyntheticContrastLib.io.reading import read_volume

    folder = Path(tempfile.mkdtemp(prefix="sc-permissions-"))
    try:
        folder.chmod(0o755)  # pytest's temp folders are private to root; 'nobody' must be able to reach the file
        src = vol_file(folder, "locked.nii.gz", chest_like((16, 32, 32)))
        src.chmod(0)
        as_root = os.geteuid() == 0
        if as_root:
            import pwd

            os.seteuid(pwd.getpwnam("nobody").pw_uid)
        try:
            with pytest.raises(InputError, match=r"locked.nii.gz: cannot be read \(permission denied\)"):
                read_volume(src)
        finally:
            if as_root:
                os.seteuid(0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_unreadable_path_through_a_broken_link(tmp_path, tiny_model_card, capsys):
    link = tmp_path / "case.nii.gz"
    link.symlink_to(tmp_path / "moved_away.nii.gz")
    rc = main(["synthesize", str(link), str(tmp_path / "x_synthetic.nii.gz"), "--model", str(tiny_model_card)])
    assert rc == 1 and "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("damage,message", [
    ("truncate", "sha256 mismatch"),
    ("tamper", "sha256 mismatch"),
    ("architecture", "unknown architecture"),
])
def test_bad_models_are_refused(tmp_path, tiny_model_card, capsys, damage, message):
    src = vol_file(tmp_path, "case.nii.gz", chest_like((16, 32, 32)))
    weights = tiny_model_card.with_suffix(".safetensors")
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-1000])
    elif damage == "tamper":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 1
        weights.write_bytes(bytes(data))
    else:
        card = json.loads(tiny_model_card.read_text())
        card["architecture"]["name"] = "unet2d-unknown"
        tiny_model_card.write_text(json.dumps(card))
    before = snapshot(tmp_path)
    rc = main(["synthesize", str(src), str(tmp_path / "x_synthetic.nii.gz"), "--model", str(tiny_model_card)])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and str(tiny_model_card.parent) in err
    assert snapshot(tmp_path) == before


def test_read_only_output_location(tmp_path, tiny_model_card, capsys):
    src = vol_file(tmp_path, "case.nii.gz", chest_like((16, 32, 32)))
    (tmp_path / "ro").write_text("a file, so nothing can be created under it")
    rc = main(["synthesize", str(src), str(tmp_path / "ro" / "x_synthetic.nii.gz"), "--model", str(tiny_model_card), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "cannot write here" in err and str(tmp_path / "ro") in err


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # report EFBIG instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_disk_full_leaves_no_partial_output(tmp_path, tiny_model_card):
    src = vol_file(tmp_path, "case.nii.gz", chest_like((16, 64, 64)))
    out = tmp_path / "out"
    out.mkdir()
    res = subprocess.run([sys.executable, "-m", "SyntheticContrastLib.cli", "synthesize", str(src), str(out / "x_synthetic.nrrd"),
                          "--model", str(tiny_model_card), "--device", "cpu", "--no-progress"],
                         capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=120)
    assert res.returncode == 1, res.stderr
    assert "x_synthetic.nrrd" in res.stderr and ("File too large" in res.stderr or "writing failed" in res.stderr)
    assert list(out.iterdir()) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=2048), kind=st.sampled_from([".nii.gz", ".nrrd", ".mha", "dicom"]))
def test_fuzz_readers_raise_only_input_errors(tmp_path_factory, data, kind):
    root = tmp_path_factory.mktemp("fuzz")
    if kind == "dicom":
        folder = root / "series"
        files = write_dicom_series(folder, np.round(chest_like((4, 8, 8))))
        victim = files[1].read_bytes()
        cut = len(data) % max(1, len(victim))
        files[1].write_bytes(victim[:cut] + data)  # a real header damaged by arbitrary bytes
        target = folder
    else:
        target = root / f"fuzz{kind}"
        target.write_bytes(data)
    try:
        volume = read_volume(target)
    except InputError as exc:
        assert str(exc)
    else:
        assert volume.array.ndim == 3 and np.isfinite(volume.array).all()


def test_spacing_uneven_by_a_few_percent_is_refused(tmp_path):
    """One step of 2.05 mm among 2 mm steps: within the gap rule, but 2.5 % off, beyond the 1 % tolerance."""
    from SyntheticContrastLib.io.reading import read_volume

    folder = _dicom(tmp_path, "slightly", positions=[0, 2, 4, 6.05, 8.05, 10.05, 12.05, 14.05])
    with pytest.raises(InputError, match=r"uneven slice spacing \(2\.000 to 2\.050 mm\)"):
        read_volume(folder)
    assert read_volume(_dicom(tmp_path, "even", positions=[0, 2, 4, 6.01, 8.01, 10.01, 12.01, 14.01])).array.shape[0] == 8
