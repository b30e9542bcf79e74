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

from conftest import chest_like, variant, write_dicom_series
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


def _int16_nifti(root, name):
    path = root / name
    sitk.WriteImage(sitk.GetImageFromArray(np.round(chest_like((8, 24, 24))).astype(np.int16)), str(path))
    return path


def truncated_nifti(root):
    path = _int16_nifti(root, "cut.nii")
    path.write_bytes(path.read_bytes()[: 352 + 8 * 24 * 24])  # half of the voxels: ITK filled them with 0 HU
    return path


def truncated_nifti_gz(root):
    import gzip

    data = gzip.compress(_int16_nifti(root, "whole.nii").read_bytes())
    (root / "whole.nii").unlink()
    path = root / "cut.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


def nan_nifti(root):
    a = chest_like((8, 24, 24))
    a[3, 4, 4], a[4, 5, 5] = np.nan, -np.inf
    return vol_file(root, "nan.nii.gz", a)  # ITK read both as 0 HU


def _patched_nifti(root, name, offset, fmt, value, keep=None):
    import struct

    path = _int16_nifti(root, name)
    data = bytearray(path.read_bytes())
    struct.pack_into("<" + fmt, data, offset, *value)
    path.write_bytes(bytes(data[:keep]) if keep else bytes(data))
    return path


def _rewritten_slices(folder, **changes):
    import pydicom

    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        for key, value in changes.items():
            setattr(ds, key, value)
        ds.save_as(f)
    return folder


def _text_pixel_spacing(folder, text: bytes):
    """PixelSpacing bytes as a broken writer left them (pydicom itself refuses to write them): the element's value
    replaced in place, explicit VR little endian."""
    import struct

    for f in sorted(folder.glob("*.dcm")):
        data = bytearray(f.read_bytes())
        at = data.index(b"\x28\x00\x30\x00DS")
        (length,) = struct.unpack_from("<H", data, at + 6)
        value = text.ljust(length)[:length]
        data[at + 8:at + 8 + length] = value
        f.write_bytes(bytes(data))
    return folder


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
    "truncated NIfTI": (truncated_nifti, "is truncated: its header declares 9216 bytes of image data, the file holds 4608"),
    "truncated NIfTI (gzip)": (truncated_nifti_gz, "is truncated or corrupt: the compressed data ends after"),
    "NaN in a NIfTI": (nan_nifti, "has 2 NaN or infinite voxels"),
    "zero spacing in a NIfTI": (lambda r: _patched_nifti(r, "flat.nii", 80, "f", (0.0,)), "has voxel spacing 0.0 along x"),
    "416-byte NIfTI claiming gigabytes": (lambda r: _patched_nifti(r, "bomb.nii", 40, "4h", (3, 2000, 2000, 256), keep=416),
                                          "declares 2048000000 bytes of image data, the file holds 64"),
    "zero PixelSpacing": (lambda r: _rewritten_slices(_dicom(r, "zero_spacing"), PixelSpacing=[0, 1]),
                          "PixelSpacing is [0.0, 1.0]: a CT needs two positive values"),
    "unparseable PixelSpacing": (lambda r: _text_pixel_spacing(_dicom(r, "text_spacing"), b"a\\b"),
                                 "not two numbers in mm, so the voxel size is unknown"),
    "DICOM claiming 6000 x 6000 pixels": (lambda r: _rewritten_slices(_dicom(r, "bomb_dicom"), Rows=6000, Columns=6000),
                                          "declares 6000 x 6000 pixels per slice; the reader's limit is 4096 x 4096"),
    "path that does not exist": (lambda r: r / "no_such_case.nii.gz", "does not exist"),
}


#: The reader's rules (io/rules.py) that these bad inputs are the test of.
RULE_OF = {
    "truncated NIfTI": variant("truncated NIfTI, or a header claiming more voxels than the file holds"),
    "NaN in a NIfTI": variant("NaN or infinite voxels"),
    "unparseable PixelSpacing": variant("zero, negative or unparseable voxel spacing"),
    "DICOM claiming 6000 x 6000 pixels": variant("a declared size beyond the reader's bounds"),
}


@pytest.mark.parametrize("label", [pytest.param(label, marks=RULE_OF.get(label, ())) for label in BAD_INPUTS])
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
    assert len(failed) == len(rows) - 1 == len(BAD_INPUTS) - 3
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


BOMBS = ("416-byte NIfTI claiming gigabytes", "DICOM claiming 6000 x 6000 pixels")
#: Peak RSS from /proc's VmHWM: it belongs to this process's own memory, whereas ru_maxrss keeps the high-water mark
#: of the parent it was forked from (pytest's, about 330 MiB) across exec.
MEASURE = """
import re, sys, time
{imports}
def peak_mib():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
before = peak_mib()
start = time.perf_counter()
try:
    {call}(sys.argv[1])
except {error} as exc:
    print("refused:", exc)
print("seconds", time.perf_counter() - start)
print("grew_mib", peak_mib() - before)
print("peak_mib", peak_mib())
"""


def measured(path, imports: str, call: str, error: str) -> tuple[str, dict]:
    """(stdout, figures) of a child process that only imports ``imports`` and runs ``call(path)``: its own peak RSS
    and time, so nothing of pytest's memory is counted."""
    code = MEASURE.format(imports=imports, call=call, error=error)
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    figures = dict(line.split(" ", 1) for line in out.stdout.splitlines() if not line.startswith("refused"))
    return out.stdout + out.stderr, figures


@pytest.mark.parametrize("label", BOMBS)
def test_a_few_bytes_that_claim_gigabytes_are_refused_in_under_a_second_and_200_mib(tmp_path, label):
    """Peak RSS of a child process that only reads the bomb (imports included: numpy, SimpleITK, pydicom)."""
    maker, message = BAD_INPUTS[label]
    bad = maker(tmp_path)
    text, figures = measured(bad, "from SyntheticContrastLib.errors import InputError\nfrom SyntheticContrastLib.io.reading import read_volume",
                             "read_volume", "InputError")
    assert message in text, text
    assert float(figures["seconds"]) < 1.0
    assert float(figures["peak_mib"]) < 200, figures
    # What the read adds: lazy imports (pydicom, about 20 MiB) and GDCM's scan, never the 1.1 GiB (DICOM) or 7.6 GiB
    # (NIfTI, as float32) the headers declare.
    assert float(figures["grew_mib"]) < 50, figures


# --- wrongly shaped JSON and CSV: one line naming the file, never a traceback (issue 31) --------------------------

CARD_FIELDS = {"format": "synthetic-contrast-model-card/1", "model_id": "x", "input_encoding": {"windows": [{"width": 2000, "level": 0}]},
               "default_stride": 1, "intended_use": "", "training_data": "", "weights_file": "w.safetensors", "sha256": ""}
SHAPES = {
    "ROI file holding a list": ("rois.json", "[1, 2]", ["cnr", "V", "--rois", "F"], "is not an ROI file: it holds a JSON list"),
    "ROI lesions not a list": ("rois.json", json.dumps({"format": "synthetic-contrast-rois/1", "lesions": 5}), ["cnr", "V", "--rois", "F"],
                               "'lesions' must be a list of lesion objects"),
    "ROI lesion not an object": ("rois.json", json.dumps({"format": "synthetic-contrast-rois/1", "lesions": ["LN1"]}),
                                 ["cnr", "V", "--rois", "F"], "lesion 1 must be an object"),
    "model card holding a list": ("card.json", "[]", ["synthesize", "V", "O_synthetic.nii.gz", "--model", "F"],
                                  "is not a model card: it holds a JSON list"),
    "model card architecture a list": ("card.json", json.dumps({**CARD_FIELDS, "architecture": [], "window": {}}),
                                       ["synthesize", "V", "O_synthetic.nii.gz", "--model", "F"], "must be JSON objects"),
    "evaluate CSV without its columns": ("cases.csv", "a,b\n1,2\n", ["evaluate", "--cases", "F", "--output", "E"],
                                         "missing case, pred, input, reference"),
    "study file holding a list": ("study.json", "[1]", ["reader-study", "plan", "F", "S"], "is not a study file: it holds a JSON list"),
    "study cases without ids": ("study.json", json.dumps({"format": "synthetic-contrast-reader-study/1", "readers": ["R1"], "cases": ["c1"]}),
                                ["reader-study", "plan", "F", "S"], "'cases' a list of objects, each with an 'id'"),
}


@pytest.mark.parametrize("label", sorted(SHAPES))
def test_wrongly_shaped_json_and_csv_are_one_line_naming_the_file(tmp_path, label):
    name, text, argv, message = SHAPES[label]
    path = tmp_path / name
    path.write_text(text)
    write_volume(Volume(chest_like((8, 16, 16)), (0.7, 0.7, 2.5), (0.0, 0.0, 0.0)), tmp_path / "v.nii.gz")
    swap = {"F": str(path), "V": str(tmp_path / "v.nii.gz"), "E": str(tmp_path / "eval"), "S": str(tmp_path / "study"),
            "O_synthetic.nii.gz": str(tmp_path / "o_synthetic.nii.gz")}
    res = subprocess.run([sys.executable, "-m", "SyntheticContrastLib.cli", *[swap.get(a, a) for a in argv]], capture_output=True, text=True)
    lines = res.stderr.strip().splitlines()
    assert res.returncode in (1, 2) and "Traceback" not in res.stderr, res.stderr
    assert len(lines) == 1 and str(path) in lines[0] and message in lines[0], res.stderr


def test_a_card_claiming_a_huge_network_beside_small_weights_is_refused_before_any_allocation(tmp_path, tiny_model_card):
    """A card whose architecture says ngf 1024 beside a tiny, correctly signed weights file allocated gigabytes (5.6 GB
    measured for the issue) before load_state_dict saw the mismatch."""
    card = json.loads(tiny_model_card.read_text())
    card["architecture"]["parameters"]["ngf"] = 1024
    tiny_model_card.write_text(json.dumps(card))
    text, figures = measured(tiny_model_card, "import torch\nfrom SyntheticContrastLib.errors import ModelError\n"
                             "from SyntheticContrastLib.engine.models import load_model", "load_model", "ModelError")
    assert "weights do not fit the architecture in the card" in text and "parameters, the file" in text, text
    # Refused on the parameter counts in 0.02 s, growing under 1 MiB. Without that check the meta device's first use
    # alone took 1.96 s and 74 MiB here (it imports torch.distributed and sympy). The network the card describes
    # would take 3.5 GB as float32.
    assert float(figures["seconds"]) < 1.0 and float(figures["grew_mib"]) < 50, figures


def test_a_card_claiming_billions_of_parameters_is_refused_by_the_ceiling(tmp_path, tiny_model_card):
    from SyntheticContrastLib.engine.models import load_model
    from SyntheticContrastLib.errors import ModelError

    card = json.loads(tiny_model_card.read_text())
    card["architecture"]["parameters"].update(ngf=65536, levels=9)
    tiny_model_card.write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"would have \d+ parameters, more than the 2000000000 any model card may describe"):
        load_model(tiny_model_card)


def test_same_parameter_count_in_other_tensors_is_still_refused_tensor_by_tensor(tmp_path, tiny_model_card):
    """The counts agree, the layout does not: a weights file whose tensors were renamed."""
    from safetensors.torch import load_file, save_file

    from SyntheticContrastLib.engine.models import load_model
    from SyntheticContrastLib.errors import ModelError
    from SyntheticContrastLib.fileio import sha256_of

    card = json.loads(tiny_model_card.read_text())
    weights = tiny_model_card.parent / card["weights_file"]
    state = load_file(str(weights))
    name = sorted(state)[0]
    state["renamed." + name] = state.pop(name)
    save_file(state, str(weights))
    card["sha256"] = sha256_of(weights)
    tiny_model_card.write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"Missing key\(s\): .*unexpected key\(s\): renamed\."):
        load_model(tiny_model_card)
