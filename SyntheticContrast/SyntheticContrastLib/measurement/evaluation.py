"""Table-2 evaluation: MAE, PSNR, MS-SSIM (and LPIPS when weights are given) of sCECT and of the input vs CECT.

Metrics are computed in the mediastinal window (W350/L50) over a chosen slice range with an optional
body mask (MAE and PSNR only; MS-SSIM needs whole slices). Reports: per-case CSV and JSON, a Markdown
table laid out like the paper's Table 2, and box plots like its Fig. 4.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import metrics
from ..trust.anatomy import body_mask
from ..engine.encoding import MEDIASTINAL_WINDOW
from .figures import save_figure
from ..fileio import atomic_write_csv, atomic_write_text
from .stats import FEW_CASES, format_median_iqr, format_p, median_iqr, paired_comparison
from ..io.volume import Volume

METRICS = ("mae", "psnr", "ms_ssim", "lpips")
METRIC_LABELS = {"mae": "MAE (HU) ↓", "psnr": "PSNR (dB) ↑", "ms_ssim": "MS-SSIM (×100) ↑", "lpips": "LPIPS (×100) ↓"}
PERCENT = {"ms_ssim", "lpips"}


@dataclass
class EvaluationSettings:
    window: tuple[float, float] = MEDIASTINAL_WINDOW
    slices: tuple[int, int] | None = None  # inclusive slice indices; None = all
    z_range_mm: tuple[float, float] | None = None  # alternatively a physical z range (LPS mm)
    body_mask: str | None = None  # None, 'auto', or a mask volume path
    lpips_weights: str | None = None


def slice_selection(volume: Volume, settings: EvaluationSettings) -> slice:
    n = volume.array.shape[0]
    if settings.slices is not None:
        lo, hi = settings.slices
    elif settings.z_range_mm is not None:
        ks = sorted(volume.physical_to_index([0, 0, z])[2] for z in settings.z_range_mm)
        lo, hi = int(np.ceil(ks[0] - 1e-6)), int(np.floor(ks[1] + 1e-6))
    else:
        lo, hi = 0, n - 1
    if not (0 <= lo <= hi < n):
        raise ValueError(f"slice range {lo}..{hi} is outside the volume's {n} slices")
    return slice(lo, hi + 1)


def lpips_metric(settings: EvaluationSettings):
    """A callable (pred, ref, window) -> LPIPS when weights were given, else None."""
    if not settings.lpips_weights:
        return None
    from .lpips import load_lpips, lpips_volume

    model = load_lpips(settings.lpips_weights)
    return lambda pred, ref, window: lpips_volume(model, pred, ref, window)


def evaluate_case(pred: Volume, source: Volume, reference: Volume, settings: EvaluationSettings = EvaluationSettings(), lpips=None,
                  sd: Volume | None = None) -> dict:
    """Metrics of sCECT and of the input against the reference; all three must share one grid. With the sCECT's
    SD map, also how well it ranks the errors (inside the body, or the given mask)."""
    for name, vol in (("sCECT", pred), ("input", source)):
        if vol.array.shape != reference.array.shape or not np.allclose(vol.spacing, reference.spacing, atol=1e-3):
            raise ValueError(f"{name} grid {vol.array.shape} differs from the reference grid {reference.array.shape}; resample first")
    sel = slice_selection(reference, settings)
    ref = reference.array[sel]
    mask = None
    if settings.body_mask == "auto":
        mask = body_mask(source.array[sel])
    elif settings.body_mask:
        from ..io.reading import read_volume

        mask = read_volume(settings.body_mask, check_hu=False).array[sel] > 0
    out = {"slices": [sel.start, sel.stop - 1]}
    for name, vol in (("sCECT", pred), ("input", source)):
        img = vol.array[sel]
        values = {
            "mae": metrics.mae(img, ref, settings.window, mask),
            "psnr": metrics.psnr(img, ref, settings.window, mask),
        }
        try:
            values["ms_ssim"] = metrics.ms_ssim(img, ref, settings.window)
        except ValueError as exc:
            values["ms_ssim"], out["ms_ssim_note"] = float("nan"), str(exc)
        values["lpips"] = lpips(img, ref, settings.window) if lpips is not None else float("nan")
        out[name] = values
    if lpips is None:
        out["lpips_note"] = "LPIPS skipped: no local LPIPS/AlexNet weights given (they cannot be downloaded at run time)"
    out["enhancement"] = enhancement_by_class(source, pred, reference)
    if sd is not None:
        from ..trust.calibration import calibrate

        if sd.array.shape != reference.array.shape:
            raise ValueError(f"SD map grid {sd.array.shape} differs from the reference grid {reference.array.shape}")
        region = mask if mask is not None else body_mask(source.array[sel])
        out["calibration"] = calibrate(pred.array[sel], sd.array[sel], ref, region)
    return out


ENHANCEMENT_FIGURES = ("median", "p5", "p95", "p99", "share_above_100")


def enhancement_by_class(source: Volume, pred: Volume, reference: Volume) -> dict:
    """Per NCCT tissue class, the enhancement (minus the input) of the sCECT and of the reference CECT over the
    whole volume, with the bounds trust/plausibility.py applies: where the model departs from real enhancement."""
    from ..trust import plausibility

    out = {}
    for name, vol in (("sCECT", pred), ("reference", reference)):
        measured = plausibility.measure(source, vol)
        out[name] = {cls: {k: c[k] for k in ENHANCEMENT_FIGURES} for cls, c in measured.figures()["classes"].items() if "median" in c}
        out[name]["findings"] = [f.message for f in plausibility.check(measured, None)]
    return out


def enhancement_markdown(cases: list[dict]) -> str:
    """Median over cases of each class's median enhancement, sCECT beside the reference CECT, and the findings."""
    classes = [c for c in ("air", "lung", "fat", "soft_tissue", "cancellous_bone", "cortical_bone")
               if any(c in case["enhancement"]["sCECT"] for case in cases)]
    lines = [f"Enhancement (CT minus the NCCT input, HU) per NCCT tissue class, whole volume, n = {len(cases)} case(s); "
             "median over cases of each case's class median (p5 to p95 in brackets).", "",
             "| Class | sCECT | Reference CECT |", "|---|---|---|"]
    for cls in classes:
        cells = []
        for key in ("sCECT", "reference"):
            rows = [case["enhancement"][key][cls] for case in cases if cls in case["enhancement"][key]]
            cells.append(f"{np.median([r['median'] for r in rows]):+.1f} ({np.median([r['p5'] for r in rows]):+.0f} to "
                         f"{np.median([r['p95'] for r in rows]):+.0f})" if rows else "-")
        lines.append(f"| {cls.replace('_', ' ')} | " + " | ".join(cells) + " |")
    lines.append("")
    for case in cases:
        for key in ("sCECT", "reference"):
            for message in case["enhancement"][key]["findings"]:
                lines.append(f"- {case['case']}, {key}: implausible enhancement: {message}")
    return "\n".join(lines) + "\n"


def summarize(cases: list[dict]) -> dict:
    """Median (IQR) per image type and metric, and the paired test sCECT vs input for each metric."""
    summary = {}
    for metric in METRICS:
        s = [c["sCECT"][metric] for c in cases]
        i = [c["input"][metric] for c in cases]
        summary[metric] = {"sCECT": median_iqr(s), "input": median_iqr(i), "test": paired_comparison(s, i)}
    return summary


def scope(settings: EvaluationSettings | None, n: int) -> str:
    """What every figure and table of an evaluation says it measured: cases, window, slices and mask."""
    if settings is None:
        return f"n = {n} case(s)"
    where = (f"slices {settings.slices[0]}-{settings.slices[1]}" if settings.slices else
             f"z {settings.z_range_mm[0]:g} to {settings.z_range_mm[1]:g} mm" if settings.z_range_mm else "all slices")
    mask = {None: "none (the whole field of view)", "auto": "the body (largest region, holes filled)"}.get(settings.body_mask, settings.body_mask)
    return (f"n = {n} case(s); window W{settings.window[0]:g}/L{settings.window[1]:g} HU; {where}; "
            f"mask for MAE and PSNR: {mask}")


def table2_markdown(summary: dict, input_label: str = "NCCT", dataset: str = "Evaluation set",
                    settings: EvaluationSettings | None = None) -> str:
    """Markdown laid out like the paper's Table 2: median (IQR) rows per CT, then the P values, and a caption that
    names n, the window, the slices and the mask, with a caution where n is small."""
    shown = [m for m in METRICS if summary[m]["sCECT"]["n"]]
    head = "| Data set | CT | " + " | ".join(METRIC_LABELS[m] for m in shown) + " |"
    lines = [head, "|" + "---|" * (len(shown) + 2)]
    for label, key in ((input_label, "input"), ("sCECT", "sCECT")):
        cells = []
        for m in shown:
            s = dict(summary[m][key])
            if m in PERCENT:
                s = {k: v * 100 if isinstance(v, float) else v for k, v in s.items()}
            cells.append(format_median_iqr(s))
        lines.append(f"| {dataset if key == 'input' else ''} | {label} | " + " | ".join(cells) + " |")
    lines.append("| | | " + " | ".join(f"{format_p(summary[m]['test']['p'])} ({summary[m]['test']['test'] or 'no test'})" for m in shown) + " |")
    skipped = [m for m in METRICS if m not in shown]
    n = summary[shown[0]]["sCECT"]["n"] if shown else 0
    note = f"\n\nData are median (IQR); {scope(settings, n)}." + (f" Not computed: {', '.join(skipped)}." if skipped else "")
    if 0 < n < FEW_CASES:
        note += (f"\n\n**Caution:** the paired tests compare only {n} case(s); their P values describe these cases and "
                 "say little about others.")
    return "\n".join(lines) + note + "\n"


def write_reports(cases: list[dict], out_dir: str | Path, input_label: str = "NCCT",
                  settings: EvaluationSettings | None = None) -> dict:
    """Per-case CSV and JSON, Table-2 Markdown and Fig.-4 box plots (PNG and SVG); returns the summary."""
    out_dir = Path(out_dir)
    summary = summarize(cases)
    rows = [{"case": c["case"], "ct": key, **c[key]} for c in cases for key in ("input", "sCECT")]
    atomic_write_csv(out_dir / "metrics_per_case.csv", rows, ["case", "ct", *METRICS])
    atomic_write_text(out_dir / "metrics.json", json.dumps({"cases": cases, "summary": summary}, indent=2, default=float) + "\n")
    atomic_write_text(out_dir / "table2.md", table2_markdown(summary, input_label, settings=settings))
    atomic_write_text(out_dir / "enhancement.md", enhancement_markdown(cases))
    _box_plots(cases, out_dir / "metrics_boxplots.png", input_label, scope(settings, len(cases)))
    calibrated = {c["case"]: c["calibration"] for c in cases if "calibration" in c}
    if calibrated:
        from ..trust.calibration import sparsification_plot

        keys = ("voxels", "spearman_rho", "spearman_p", "mae", "ause_hu", "ause_relative")
        atomic_write_csv(out_dir / "uncertainty_calibration.csv", [{"case": name, **{k: r[k] for k in keys}} for name, r in calibrated.items()])
        sparsification_plot(calibrated, out_dir / "sparsification.png")
        summary["calibration"] = {k: median_iqr([r[k] for r in calibrated.values()]) for k in ("spearman_rho", "ause_hu", "ause_relative")}
    return summary


def _box_plots(cases, path, input_label, caption: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in METRICS if np.isfinite([c["sCECT"][m] for c in cases]).any()]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 4.0))
    for ax, m in zip(np.atleast_1d(axes), shown):
        scale = 100.0 if m in PERCENT else 1.0  # as the table shows them, and as the title says
        a = np.array([c["input"][m] for c in cases]) * scale
        b = np.array([c["sCECT"][m] for c in cases]) * scale
        ax.boxplot([a, b], tick_labels=[input_label, "sCECT"])
        for x, y in zip(a, b):
            ax.plot([1, 2], [x, y], color="0.6", lw=0.7, zorder=0)
        ax.set_title(METRIC_LABELS[m])
        ax.set_ylabel(METRIC_LABELS[m].rsplit(" ", 1)[0])
    fig.suptitle(caption, fontsize=8)
    save_figure(fig, path, svg=True)
