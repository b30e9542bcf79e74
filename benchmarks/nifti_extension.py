"""What the provenance extension costs a synthetic NIfTI output, against the alternative of a library: before it,
SimpleITK's own .nii.gz and the sidecar; now, SimpleITK writes .nii, io/nifti.add_comment_extension inserts the
extension and compresses, and the sidecar; and nibabel adding the same extension to SimpleITK's file (load, add,
save; nibabel is not a dependency, so this row needs it installed).

    python benchmarks/nifti_extension.py --slices 300 --json benchmarks/results_nifti_extension_cpu_2core.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SyntheticContrast"))

from SyntheticContrastLib.io.reading import write_volume  # noqa: E402
from SyntheticContrastLib.io.volume import Volume  # noqa: E402
from SyntheticContrastLib.io.sidecar import provenance_record, write_sidecar  # noqa: E402

METADATA = {"ITK_FileNotes": "SYNTHETIC sCECT, benchmark", "SyntheticContrast.synthetic": "true",
            "SyntheticContrast.label": "SYNTHETIC contrast-enhanced CT - not acquired, not for diagnosis",
            "SyntheticContrast.model_id": "benchmark", "SyntheticContrast.model_sha256": "0" * 64,
            "SyntheticContrast.ood_findings": "none " * 40}


def _best(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    array = np.round(rng.normal(40, 30, (args.slices, args.size, args.size))).astype(np.float32)  # CT-like noise
    volume = Volume(array, (0.7, 0.7, 1.0), (0.0, 0.0, 0.0))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        image = volume.to_sitk()

        def before():
            sitk.WriteImage(image, str(tmp / "a.nii.gz"), True)
            write_sidecar(tmp / "a.nii.gz", METADATA)

        rows["simpleitk_nii_gz_and_sidecar_s"] = _best(before, args.runs)
        rows["ours_with_extension_s"] = _best(lambda: write_volume(volume, tmp / "b_synthetic.nii.gz", METADATA), args.runs)
        try:
            import nibabel as nib
        except ImportError:
            rows["nibabel_add_extension_s"] = None
        else:
            text = json.dumps(provenance_record(METADATA)).encode()

            def with_nibabel():
                nifti = nib.load(str(tmp / "a.nii.gz"))
                nifti.header.extensions.append(nib.nifti1.Nifti1Extension(6, text))
                nib.save(nifti, str(tmp / "c.nii.gz"))

            rows["nibabel_add_extension_s"] = _best(with_nibabel, args.runs)
            rows["nibabel_add_extension_s"] += rows["simpleitk_nii_gz_and_sidecar_s"]  # it needs SimpleITK's file first
        sizes = {name: (tmp / name).stat().st_size for name in ("a.nii.gz", "b_synthetic.nii.gz", "c.nii.gz") if (tmp / name).exists()}
    result = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "python": platform.python_version(),
              "shape": list(array.shape), "runs": args.runs, "best_of_runs": rows, "bytes": sizes,
              "extension_overhead": rows["ours_with_extension_s"] / rows["simpleitk_nii_gz_and_sidecar_s"] - 1}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
