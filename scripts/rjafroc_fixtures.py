"""Write the RJafroc reference fixtures of tests/data/rjafroc/ from an RJafroc source checkout: the ratings of its
example data sets (data/*.RData) and the results its own tests keep (tests/testthat/goodValues361/*.rds).

    python scripts/rjafroc_fixtures.py /path/to/RJafroc [--commit SHA]

Needs the PyPI package rdata; nothing here runs in CI, which reads only the JSON this writes.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "rjafroc"
DATASETS = ("dataset01", "dataset02", "dataset03", "dataset04", "dataset05")
RESULTS = {  # fixture name: (goodValues361 file, what RJafroc computed, per its test file)
    "dataset01_wAFROC_OR_RRRC": ("SigTest/OR/dataset01.rds", "St(dataset01, FOM='wAFROC', method='OR', analysisOption='RRRC'); test-St-XModality.R"),
    "dataset02_Wilcoxon_OR_varcomp": ("UtilVarComponents/JackknifeDataset02.rds", "UtilORVarComp(dataset02, FOM='Wilcoxon'); test-UtilVarComponents.R"),
    "dataset04_ROC_OR_varcomp": ("UtilVarComponents/JackknifeDataset04.rds",
                                 "UtilORVarComp(DfFroc2Roc(dataset04), FOM='Wilcoxon', covEstMethod='jackknife'); test-UtilVarComponents.R"),
    "dataset02_Wilcoxon_OR_meansquares": ("MeanSquares/dataset02Wilcoxon-OR.rds", "UtilMeanSquares(dataset02, FOM='Wilcoxon', method='OR'); test-UtilMeanSquares.R"),
    "dataset05_wAFROC_OR_meansquares": ("MeanSquares/dataset05wAFROC-OR.rds", "UtilMeanSquares(dataset05, FOM='wAFROC', method='OR'); test-UtilMeanSquares.R"),
    "Froc_xlsx_HrAuc_OR_varcomp": ("SigTest/JAFROC/FrocDataHrAucOR.rds",
                                   "Windows JAFROC 1.3.1 on inst/extdata/Froc.xlsx, inferred ROC (6 significant digits); test-St-Compare2JAFROC.R"),
    "dataset03_size_RRRC": ("SsPower/dataset03-RRRC.rds",
                            "SsSampleSizeKGivenJ(dataset03, FOM = 'Wilcoxon', effectSize = 0.05, J = 6, method = 'OR'); test-SsSampleSizeRoc.R"),
    "dataset02_power_RRRC": ("SsPower/dataset02-RRRC.rds",
                             "SsPowerGivenJK(dataset02, FOM = 'Wilcoxon', method = 'OR', effectSize = -0.043800322, J = 10, K = 165); "
                             "test-SsSampleSizeRoc.R"),
    "dataset02_power_FRRC": ("SsPower/dataset02-FRRC.rds",
                             "SsPowerGivenJK(dataset02, FOM = 'Wilcoxon', method = 'OR', effectSize = -0.043800322, J = 10, K = 131, "
                             "analysisOption = 'FRRC'); test-SsSampleSizeRoc.R"),
    "dataset02_power_RRFC": ("SsPower/dataset02-FRFC.rds",
                             "SsPowerGivenJK(dataset02, FOM = 'Wilcoxon', method = 'OR', effectSize = -0.043800322, J = 10, K = 53, "
                             "analysisOption = 'RRFC'); test-SsSampleSizeRoc.R"),
    "frocLocatClass_wAFROC1": ("FOM/UtilFigureOfMeritFROC-wAFROC1a.rds",
                               "UtilFigureOfMerit(DfReadDataFile(frocLocatClass.xlsx, newExcelFileFormat = TRUE), FOM = 'wAFROC1'); "
                               "test-UtilFigureOfMerit.R"),
}
#: Workbooks as RJafroc's DfReadDataFile read them (test-DfReadDataFile.R keeps the result).
AS_READ = {"rocCr_as_read": "DfReadDataFile/rocCr.rds"}
#: RJafroc's example workbooks, copied as they are: its JAFROC-format example, a study with no non-diseased case,
#: and an ROC study in the new format.
WORKBOOKS = ("inst/extdata/Froc.xlsx", "inst/extdata/toyFiles/FROC/frocLocatClass.xlsx", "inst/extdata/toyFiles/ROC/rocCr.xlsx")


def _finite(x):
    return None if isinstance(x, float) and (math.isinf(x) or math.isnan(x)) else x


def _plain(value):
    """R objects as JSON: arrays as nested lists (-inf and NA as null), data frames as {row: {column: value}}."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "columns") and hasattr(value, "to_dict"):  # a data frame
        return {str(r): {str(c): _finite(float(v)) if isinstance(v, (int, float, np.floating)) else str(v) for c, v in row.items()}
                for r, row in value.to_dict(orient="index").items()}
    array = np.asarray(getattr(value, "values", value))
    if array.dtype.kind not in "fiu":
        return [str(v) for v in array.ravel()]
    nested = array.astype(float).tolist()

    def clean(x):
        return [clean(v) for v in x] if isinstance(x, list) else _finite(x)

    return clean(nested)


def main() -> None:
    import rdata

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rjafroc", type=Path)
    parser.add_argument("--commit", default="44b0e39e", help="the RJafroc commit the checkout is at (recorded in each fixture)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    def dataset(ds, source: str) -> dict:
        return {
            "source": source, "type": str(ds["descriptions"]["type"][0]),
            "modality_ids": [str(v) for v in ds["descriptions"]["modalityID"]], "reader_ids": [str(v) for v in ds["descriptions"]["readerID"]],
            "nl": _plain(ds["ratings"]["NL"]), "ll": _plain(ds["ratings"]["LL"]),
            "lesions_per_case": [int(v) for v in np.asarray(ds["lesions"]["perCase"])], "weights": _plain(ds["lesions"]["weights"]),
        }

    for name in DATASETS:
        ds = rdata.conversion.convert(rdata.parser.parse_file(args.rjafroc / "data" / f"{name}.RData"))[name]
        (OUT / f"{name}.json").write_text(json.dumps(dataset(ds, f"RJafroc {args.commit}: data/{name}.RData")) + "\n")
    for name, path in AS_READ.items():
        ds = rdata.conversion.convert(rdata.parser.parse_file(args.rjafroc / "tests" / "testthat" / "goodValues361" / path))
        (OUT / f"{name}.json").write_text(json.dumps(dataset(ds, f"RJafroc {args.commit}: tests/testthat/goodValues361/{path}")) + "\n")
    for workbook in WORKBOOKS:
        shutil.copy2(args.rjafroc / workbook, OUT / Path(workbook).name)
    for name, (path, how) in RESULTS.items():
        result = rdata.conversion.convert(rdata.parser.parse_file(args.rjafroc / "tests" / "testthat" / "goodValues361" / path))
        (OUT / f"{name}.json").write_text(json.dumps({"source": f"RJafroc {args.commit}: tests/testthat/goodValues361/{path}",
                                                      "computed_by": how, "result": _plain(result)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
