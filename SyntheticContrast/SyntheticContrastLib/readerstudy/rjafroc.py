"""RJafroc's JAFROC Excel format in and out: sheets TRUTH (CaseID, LesionID, Weight, ReaderID, ModalityID, Paradigm),
FP or NL (ReaderID, ModalityID, CaseID, FP_Rating) and TP or LL (ReaderID, ModalityID, CaseID, LesionID, TP_Rating).
A study read elsewhere comes in; a study of ours goes out, so a group can check us in RJafroc. The rules are RJafroc's
DfReadDataFile (new format): the Paradigm column holds the type (ROC or FROC) in its first filled cell and the study
design (FCTRL) in its second; CaseID and LesionID are integers; a diseased case's weights sum to 1, or are all 0 for
equal weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..fileio import atomic_path, atomic_write_text
from .ratings import Ratings

SHEETS = {"truth": ("TRUTH",), "nl": ("FP", "NL"), "ll": ("TP", "LL")}
COLUMNS = {"truth": ("CaseID", "LesionID", "Weight"), "nl": ("ReaderID", "ModalityID", "CaseID", "FP_Rating"),
           "ll": ("ReaderID", "ModalityID", "CaseID", "LesionID", "TP_Rating")}
RATINGS_FILE = "ratings.json"
#: Beside an exported workbook: our case ids for the integer CaseIDs RJafroc needs.
CASE_MAP_SUFFIX = "_case_ids.csv"


def _id(value) -> str:
    """IDs as RJafroc reads them: numbers without a trailing '.0', text trimmed."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _rows(workbook, role: str, path: Path) -> list[tuple[int, dict]]:
    names = {name.upper(): name for name in workbook.sheetnames}
    sheet_name = next((names[n] for n in SHEETS[role] if n in names), None)
    if sheet_name is None:
        raise InputError(path, f"has no sheet {' or '.join(SHEETS[role])} (it has {', '.join(workbook.sheetnames)})")
    rows = list(workbook[sheet_name].iter_rows(values_only=True))
    header = [str(h).strip() if h is not None else "" for h in (rows[0] if rows else [])]
    missing = [c for c in COLUMNS[role] if c not in header]
    if missing:
        raise InputError(path, f"sheet {sheet_name}: missing column(s) {', '.join(missing)} (header row has {', '.join(h for h in header if h)})")
    out = []
    for number, row in enumerate(rows[1:], start=2):  # Excel's own row numbers
        if row is None or all(v is None or str(v).strip() == "" for v in row):
            continue
        record = dict(zip(header, row))
        for column in COLUMNS[role]:
            if record.get(column) is None or str(record[column]).strip() == "":
                raise InputError(path, f"sheet {sheet_name}, row {number}: {column} is empty")
        out.append((number, {**record, "_sheet": sheet_name}))
    return out


def _rating(record: dict, column: str, number: int, path: Path) -> float:
    try:
        value = float(record[column])
    except (TypeError, ValueError):
        raise InputError(path, f"sheet {record['_sheet']}, row {number}: {column} {record[column]!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(path, f"sheet {record['_sheet']}, row {number}: {column} must be finite")
    return value


def read_jafroc_excel(path: str | Path) -> Ratings:
    """The ratings of a factorial (every reader reads every case in every modality) ROC or FROC study."""
    import openpyxl

    path = Path(path)
    import warnings

    with warnings.catch_warnings():  # openpyxl warns about Excel extensions it does not keep; we only read cells
        warnings.simplefilter("ignore", UserWarning)
        try:
            workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except Exception as exc:
            raise InputError(path, f"is not a readable Excel workbook ({exc.__class__.__name__}: {exc})") from exc
        truth, nl_rows, ll_rows = (_rows(workbook, role, path) for role in ("truth", "nl", "ll"))
    lesions: dict[str, dict[str, float]] = {}
    normal: list[str] = []
    readers_listed, modalities_listed, paradigms = set(), set(), []
    for number, r in truth:
        case, lesion = _id(r["CaseID"]), _id(r["LesionID"])
        if r.get("ReaderID") is not None:
            readers_listed.add(tuple(_id(v) for v in str(r["ReaderID"]).split(",")))
        if r.get("ModalityID") is not None:
            modalities_listed.add(tuple(_id(v) for v in str(r["ModalityID"]).split(",")))
        if r.get("Paradigm") is not None and str(r["Paradigm"]).strip():
            paradigms.append(str(r["Paradigm"]).strip().upper())
        if lesion == "0":
            if case in lesions:
                raise InputError(path, f"sheet {r['_sheet']}, row {number}: case {case} is listed as non-diseased (LesionID 0) and with lesions")
            if case not in normal:
                normal.append(case)
            continue
        if case in normal:
            raise InputError(path, f"sheet {r['_sheet']}, row {number}: case {case} is listed as non-diseased (LesionID 0) and with lesions")
        if lesion in lesions.setdefault(case, {}):
            raise InputError(path, f"sheet {r['_sheet']}, row {number}: lesion {lesion} of case {case} is listed twice")
        lesions[case][lesion] = _rating(r, "Weight", number, path)
    if len(readers_listed) > 1 or len(modalities_listed) > 1:
        raise InputError(path, "sheet TRUTH lists different readers or modalities per case (a split-plot design); "
                               "only factorial studies (every reader reads every case in every modality) are analysed")
    if not lesions:
        raise InputError(path, f"sheet TRUTH needs diseased cases (LesionID 1 and up); it has {len(normal)} non-diseased and none else")
    paradigm = _paradigm(paradigms, path)
    for case, by_lesion in lesions.items():
        lesions[case] = _weights(case, by_lesion, path)
    readers = list(next(iter(readers_listed))) if readers_listed else sorted({_id(r["ReaderID"]) for _, r in nl_rows + ll_rows})
    modalities = list(next(iter(modalities_listed))) if modalities_listed else sorted({_id(r["ModalityID"]) for _, r in nl_rows + ll_rows})
    diseased = list(lesions)
    cases = normal + diseased
    index = {c: k for k, c in enumerate(cases)}
    max_lesions = max(len(v) for v in lesions.values())
    lesion_index = {c: {lid: n for n, lid in enumerate(v)} for c, v in lesions.items()}

    def where(number, r, kind):
        reader, modality, case = _id(r["ReaderID"]), _id(r["ModalityID"]), _id(r["CaseID"])
        for value, known, label in ((reader, readers, "ReaderID"), (modality, modalities, "ModalityID")):
            if value not in known:
                raise InputError(path, f"sheet {r['_sheet']}, row {number}: {label} {value} is not one of {', '.join(known)}")
        if case not in index:
            raise InputError(path, f"sheet {r['_sheet']}, row {number}: CaseID {case} is not in sheet TRUTH")
        return modalities.index(modality), readers.index(reader), case

    marks: dict[tuple, list[float]] = {}
    for number, r in nl_rows:
        i, j, case = where(number, r, "nl")
        marks.setdefault((i, j, index[case]), []).append(_rating(r, "FP_Rating", number, path))
    max_nl = max([len(v) for v in marks.values()] + [1])
    nl = np.full((len(modalities), len(readers), len(cases), max_nl), -np.inf)
    for (i, j, k), values in marks.items():
        nl[i, j, k, :len(values)] = sorted(values, reverse=True)
    ll = np.full((len(modalities), len(readers), len(diseased), max_lesions), -np.inf)
    for number, r in ll_rows:
        i, j, case = where(number, r, "ll")
        lesion = _id(r["LesionID"])
        if case not in lesion_index or lesion not in lesion_index[case]:
            raise InputError(path, f"sheet {r['_sheet']}, row {number}: lesion {lesion} of case {case} is not in sheet TRUTH")
        slot = (i, j, index[case] - len(normal), lesion_index[case][lesion])
        if ll[slot] != -np.inf:
            raise InputError(path, f"sheet {r['_sheet']}, row {number}: lesion {lesion} of case {case} is rated twice by reader "
                                   f"{readers[j]} in modality {modalities[i]}")
        ll[slot] = _rating(r, "TP_Rating", number, path)
    weights = np.zeros((len(diseased), max_lesions))
    for k, case in enumerate(diseased):
        weights[k, :len(lesions[case])] = list(lesions[case].values())
    cases = _case_names(path, cases)
    return Ratings(nl, ll, [len(lesions[c]) for c in diseased], weights, modalities, readers, cases, paradigm)


def _paradigm(filled: list[str], path: Path) -> str:
    """The type from the Paradigm column's first filled cell, after checking the design in its second. A workbook
    this tool wrote before it followed RJafroc has the type in every cell: its design is the type again."""
    kind = filled[0] if filled else "FROC"  # the old format has no Paradigm column; RJafroc's default then is FROC
    if kind not in ("ROC", "FROC"):
        raise InputError(path, f"sheet TRUTH: Paradigm {kind!r} is not read here; ROC and FROC are (LROC is not)")
    design = filled[1] if len(filled) > 1 else "FCTRL"
    if design not in ("FCTRL", "CROSSED", kind):
        raise InputError(path, f"sheet TRUTH: study design {design!r} (the Paradigm column's second cell) is not "
                               "analysed here; only factorial studies (FCTRL: every reader reads every case in every modality) are")
    return kind


def _weights(case: str, by_lesion: dict[str, float], path: Path) -> dict[str, float]:
    """RJafroc's rule: all 0 means equal weights; a sum within 1 +- 0.01 is rescaled to 1; any other sum is an error."""
    total = sum(by_lesion.values())
    if all(w == 0 for w in by_lesion.values()):
        return {lesion: 1.0 / len(by_lesion) for lesion in by_lesion}
    if not 0.99 <= total <= 1.01:  # as RJafroc compares it; abs(total - 1) > 0.01 refused the 0.99 of its Froc.xlsx
        raise InputError(path, f"sheet TRUTH: the weights of case {case} sum to {total:g}, not 1 (or all 0 for equal weights)")
    return {lesion: w / total for lesion, w in by_lesion.items()}


def _case_names(path: Path, cases: list[str]) -> list[str]:
    """Our own case ids, where the workbook is one of our exports with its case-id file beside it."""
    import csv

    mapping = path.with_name(path.stem + CASE_MAP_SUFFIX)
    if not mapping.is_file():
        return cases
    with open(mapping, newline="", encoding="utf-8") as fh:
        names = {row["CaseID"]: row["case"] for row in csv.DictReader(fh)}
    return [names.get(c, c) for c in cases]


def _integer_case_ids(case_ids: list[str]) -> tuple[list[int], bool]:
    """The CaseIDs to write: ours where they are distinct whole numbers already, else 1..K (and True: a map is needed)."""
    try:
        numbers = [int(c) for c in case_ids]
        if len(set(numbers)) == len(numbers) and all(str(n) == str(c).strip() for n, c in zip(numbers, case_ids)):
            return numbers, False
    except ValueError:
        pass
    return list(range(1, len(case_ids) + 1)), True


def write_jafroc_excel(ratings: Ratings, path: str | Path) -> Path:
    """The ratings as a JAFROC workbook RJafroc's DfReadDataFile reads (new format, factorial). Case ids that are not
    whole numbers become 1..K, and the file <stem>_case_ids.csv beside the workbook maps them back (RJafroc refuses an
    extra sheet, so the map cannot go inside)."""
    import openpyxl

    path = Path(path)
    _, _, k1, k2 = ratings.shape
    for label, ids in (("reader", ratings.reader_ids), ("modality", ratings.modality_ids)):
        bad = [i for i in ids if "," in str(i)]
        if bad:
            from ..errors import OutputError

            raise OutputError(path, f"{label} id {bad[0]!r} holds a comma, which RJafroc's TRUTH sheet uses between ids")
    case_ids, mapped = _integer_case_ids([str(c) for c in ratings.case_ids])
    workbook = openpyxl.Workbook()
    truth = workbook.active
    truth.title = "TRUTH"
    truth.append(["CaseID", "LesionID", "Weight", "ReaderID", "ModalityID", "Paradigm"])
    readers, modalities = ",".join(ratings.reader_ids), ",".join(ratings.modality_ids)
    rows = [[case_ids[k], 0, 0] for k in range(k1)]
    rows += [[case_ids[k1 + k], n + 1, float(ratings.weights[k, n])] for k in range(k2) for n in range(ratings.lesions_per_case[k])]
    for r, row in enumerate(rows):
        truth.append([*row, readers, modalities, (ratings.paradigm, "FCTRL")[r] if r < 2 else None])
    fp, tp = workbook.create_sheet("FP"), workbook.create_sheet("TP")
    fp.append(["ReaderID", "ModalityID", "CaseID", "FP_Rating"])
    tp.append(["ReaderID", "ModalityID", "CaseID", "LesionID", "TP_Rating"])
    for i, modality in enumerate(ratings.modality_ids):
        for j, reader in enumerate(ratings.reader_ids):
            for k in range(len(ratings.case_ids)):
                for value in ratings.nl[i, j, k]:
                    if np.isfinite(value):
                        fp.append([reader, modality, case_ids[k], float(value)])
            for k in range(k2):
                for n in range(ratings.lesions_per_case[k]):
                    if np.isfinite(ratings.ll[i, j, k, n]):
                        tp.append([reader, modality, case_ids[k1 + k], n + 1, float(ratings.ll[i, j, k, n])])
    with atomic_path(path) as tmp:
        workbook.save(tmp)
    if mapped:
        from ..fileio import atomic_write_csv

        atomic_write_csv(path.with_name(path.stem + CASE_MAP_SUFFIX),
                         [{"CaseID": n, "case": c} for n, c in zip(case_ids, ratings.case_ids)], ["CaseID", "case"])
    return path


def import_rjafroc(xlsx: str | Path, study_dir: str | Path) -> Ratings:
    """A study read elsewhere, as a study folder that 'reader-study analyze' accepts (its ratings, no images).
    Everything is checked before anything is written; an existing study folder is never overwritten."""
    ratings = read_jafroc_excel(xlsx)
    study_dir = Path(study_dir)
    if (study_dir / RATINGS_FILE).exists() or (study_dir / "plan.json").exists() or (study_dir / "key").exists():
        raise InputError(study_dir, "holds a study already; import into a new folder")
    study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(study_dir / RATINGS_FILE, json.dumps({**ratings.to_json(), "imported_from": str(Path(xlsx).resolve())}) + "\n")
    return ratings
