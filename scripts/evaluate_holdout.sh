#!/usr/bin/env bash
# Table-2 metrics and lymph-node CNR of the bundled demo model on held-out phantom seeds (never in training).
#   bash scripts/evaluate_holdout.sh OUT_DIR [SEEDS]      e.g. bash scripts/evaluate_holdout.sh holdout 9001-9005
set -euo pipefail
out=${1:-holdout}
seeds=${2:-9001-9005}
synthetic-contrast phantom "$out/cases" --seeds "$seeds"
echo "case,pred,input,reference" > "$out/cases.csv"
for ncct in "$out"/cases/*_ncct.nii.gz; do
  case=$(basename "$ncct" _ncct.nii.gz)
  synthetic-contrast synthesize "$ncct" "$out/cases/${case}_sCECT_synthetic.nii.gz" --no-progress
  echo "$case,cases/${case}_sCECT_synthetic.nii.gz,cases/${case}_ncct.nii.gz,cases/${case}_cect.nii.gz" >> "$out/cases.csv"
done
synthetic-contrast evaluate --cases "$out/cases.csv" --output "$out/evaluation"
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
from SyntheticContrastLib.measurement.cnr import measure_cnr, summarize_cnr
from SyntheticContrastLib.cli.training import cnr_report
from SyntheticContrastLib.measurement.rois import read_rois
from SyntheticContrastLib.io.reading import read_volume
out = Path(sys.argv[1])
rows = []
for rois in sorted((out / "cases").glob("*_rois.json")):
    case = rois.name[: -len("_rois.json")]
    vols = {name: read_volume(out / "cases" / f"{case}_{suffix}.nii.gz", check_hu=False)
            for name, suffix in (("NCCT", "ncct"), ("sCECT", "sCECT_synthetic"), ("CECT", "cect"))}
    for row in measure_cnr(vols, read_rois(rois)):
        row["lesion"] = f"{case}:{row['lesion']}"
        rows.append(row)
summary = summarize_cnr(rows)
(out / "evaluation" / "cnr.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=2, default=float))
print(cnr_report(rows, summary))
PY
