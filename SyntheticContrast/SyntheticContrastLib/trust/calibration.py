"""Does the uncertainty map point at the errors? Spearman(SD, |error|) and sparsification: AUSE, the area between
removing the most uncertain voxels first and the oracle's removing the worst first (Ilg et al., ECCV 2018).

Errors are absolute HU differences, not windowed: a window would set the error of lung and bone to zero where the
samples disagree most.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


FRACTIONS = np.linspace(0.0, 0.99, 100)


def _remaining_mae(errors_sorted_desc: np.ndarray) -> np.ndarray:
    """MAE of what is left after removing each fraction in FRACTIONS from the front of the array."""
    n = errors_sorted_desc.size
    tail_sums = np.cumsum(errors_sorted_desc[::-1])[::-1]  # sum of errors[k:] for each k
    kept_from = np.minimum((FRACTIONS * n).astype(int), n - 1)
    return tail_sums[kept_from] / (n - kept_from)


def sparsification(sd: np.ndarray, abs_error: np.ndarray) -> dict:
    """Curves by uncertainty and by the oracle, their difference, AUSE (HU and relative to the MAE), and Spearman."""
    sd, abs_error = np.asarray(sd, np.float64).ravel(), np.asarray(abs_error, np.float64).ravel()
    if sd.size < 2:
        raise ValueError("calibration needs at least two voxels")
    by_uncertainty = _remaining_mae(abs_error[np.argsort(-sd, kind="stable")])
    oracle = _remaining_mae(np.sort(abs_error)[::-1])
    gap = by_uncertainty - oracle
    ause = float(np.trapezoid(gap, FRACTIONS)) if hasattr(np, "trapezoid") else float(np.trapz(gap, FRACTIONS))
    rho, p = stats.spearmanr(sd, abs_error)
    mae = float(abs_error.mean())
    return {
        "voxels": int(sd.size), "spearman_rho": float(rho), "spearman_p": float(p), "mae": mae,
        "ause_hu": ause, "ause_relative": ause / mae if mae else float("nan"),
        "fractions": FRACTIONS.tolist(), "mae_by_uncertainty": by_uncertainty.tolist(), "mae_oracle": oracle.tolist(),
    }


def calibrate(pred: np.ndarray, sd: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Calibration of the SD map of ``pred`` against the reference CECT, inside ``mask`` (the body) if given."""
    if not (pred.shape == sd.shape == reference.shape):
        raise ValueError(f"sCECT {pred.shape}, SD {sd.shape} and reference {reference.shape} must share one grid")
    abs_error = np.abs(pred.astype(np.float64) - reference)
    if mask is not None:
        return sparsification(sd[mask], abs_error[mask])
    return sparsification(sd, abs_error)


def sparsification_plot(results: dict[str, dict], path) -> None:
    """One panel: MAE of the remaining voxels against the fraction removed, by uncertainty and by the oracle."""
    from ..measurement.figures import save_figure
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, r in results.items():
        line, = ax.plot(r["fractions"], r["mae_by_uncertainty"], label=f"{name}: by SD (AUSE {r['ause_hu']:.2f} HU)")
        ax.plot(r["fractions"], r["mae_oracle"], "--", color=line.get_color(), alpha=0.6, label=f"{name}: oracle")
    ax.set_xlabel("fraction of voxels removed (most uncertain first)")
    ax.set_ylabel("MAE of the remaining voxels (HU)")
    ax.set_title("Sparsification of the SYNTHETIC image's uncertainty")
    ax.legend(fontsize=7)
    save_figure(fig, path)
