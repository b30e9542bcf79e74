#!/usr/bin/env bash
# Calibration of the uncertainty map on held-out phantoms: synthesize with N samples, then Spearman(SD, |error|),
# AUSE and the sparsification plot against the phantom's CECT.
#   bash scripts/evaluate_uncertainty.sh OUT_DIR MODEL_CARD [SEEDS] [SAMPLES] [SLICES]
#   e.g. bash scripts/evaluate_uncertainty.sh uncertainty model/phantom_dropout_small.json 9001-9003 8 24
set -euo pipefail
out=${1:?output folder}
model=${2:?model card (trained with dropout for MC dropout)}
seeds=${3:-9001-9003}
samples=${4:-8}
slices=${5:-24}
synthetic-contrast phantom "$out/cases" --seeds "$seeds" --slices "$slices"
echo "case,pred,input,reference,sd" > "$out/cases.csv"
for ncct in "$out"/cases/*_ncct.nii.gz; do
  case=$(basename "$ncct" _ncct.nii.gz)
  synthetic-contrast synthesize "$ncct" "$out/cases/${case}_sCECT_synthetic.nii.gz" --model "$model" --samples "$samples" --no-progress
  echo "$case,cases/${case}_sCECT_synthetic.nii.gz,cases/${case}_ncct.nii.gz,cases/${case}_cect.nii.gz,cases/${case}_sCECT_synthetic_sd.nii.gz" >> "$out/cases.csv"
done
synthetic-contrast evaluate --cases "$out/cases.csv" --output "$out/evaluation" --body-mask auto
