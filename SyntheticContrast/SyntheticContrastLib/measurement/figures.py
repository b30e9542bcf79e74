"""PNG figures shared by the demo, training samples and evaluation: images shown in a CT window."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..engine.encoding import MEDIASTINAL_WINDOW, window_bounds
from ..fileio import atomic_path


#: Burned into every panel that shows a synthetic image, in this colour, which no grey CT pixel has.
SYNTHETIC_MARK, SYNTHETIC_COLOUR = "SYNTHETIC - not for diagnosis", "#ffff00"
SIMULATED_MARK, SIMULATED_COLOUR = "SIMULATED", "#ff00ff"
LESION_COLOUR = "#00ffff"
SCALE_BAR_MM = 50.0


def side_by_side(slices, titles, path, suptitle: str = "", window=MEDIASTINAL_WINDOW, synthetic=None, pixel_mm: float | None = None,
                 marks=()) -> Path:
    """Axial slices (LPS voxel order, so radiological display: the patient's right on the left) next to each other
    in one CT window, written atomically as PNG. Each panel has orientation letters, its window and, with
    ``pixel_mm``, a scale bar; a panel whose ``synthetic`` flag is set (default: its title says SYNTHETIC) carries
    "SYNTHETIC - not for diagnosis" on the image itself; ``marks`` are (row, column, radius in pixels, label)
    circles drawn on every panel, such as the lesion the title names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    lo, hi = window_bounds(*window)
    if synthetic is None:
        synthetic = ["SYNTHETIC" in title.upper() for title in titles]
    fig, axes = plt.subplots(1, len(slices), figsize=(4.2 * len(slices), 4.6))
    for ax, img, title, is_synthetic in zip(np.atleast_1d(axes), slices, titles, synthetic):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
        rows, cols = img.shape
        style = dict(color="white", fontsize=9, fontweight="bold", transform=ax.transAxes)
        for x, y, letter, ha, va in ((0.5, 0.99, "A", "center", "top"), (0.5, 0.01, "P", "center", "bottom"),
                                     (0.01, 0.5, "R", "left", "center"), (0.99, 0.5, "L", "right", "center")):
            ax.text(x, y, letter, ha=ha, va=va, **style)
        ax.text(0.01, 0.01, f"W{window[0]:.0f} L{window[1]:.0f}", ha="left", va="bottom", **{**style, "fontsize": 7})
        if pixel_mm:
            length = SCALE_BAR_MM / pixel_mm
            x1, y0 = cols * 0.97, rows * 0.93
            ax.plot([x1 - length, x1], [y0, y0], color="white", linewidth=2)
            ax.text(x1 - length / 2, y0 - rows * 0.015, f"{SCALE_BAR_MM:.0f} mm", ha="center", va="bottom", color="white", fontsize=7)
        for row, col, radius, label in marks:
            ax.add_patch(Circle((col, row), radius, fill=False, edgecolor=LESION_COLOUR, linewidth=1.2))
            ax.text(col + radius * 1.1, row - radius * 1.1, label, color=LESION_COLOUR, fontsize=8)
        if is_synthetic:
            ax.text(0.5, 0.9, SYNTHETIC_MARK, ha="center", va="top", transform=ax.transAxes, color=SYNTHETIC_COLOUR,
                    fontsize=10, fontweight="bold", bbox=dict(facecolor="black", edgecolor=SYNTHETIC_COLOUR, alpha=0.8))
        ax.set_xlim(-0.5, cols - 0.5)
        ax.set_ylim(rows - 0.5, -0.5)
    fig.suptitle(f"{suptitle}  [W{window[0]:.0f}/L{window[1]:.0f}]".strip())
    return save_figure(fig, path)


def save_figure(fig, path, simulated: bool = False, svg: bool = False) -> Path:
    """Lay out, write atomically as PNG (and, with ``svg``, as SVG beside it, for a paper), and close a matplotlib
    figure; ``simulated`` stamps SIMULATED across it, for figures made from simulated readers or data."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    if simulated:
        fig.text(0.5, 0.5, SIMULATED_MARK, ha="center", va="center", rotation=20, fontsize=40, fontweight="bold",
                 color=SIMULATED_COLOUR, alpha=0.35)
        fig.text(0.005, 0.995, SIMULATED_MARK, ha="left", va="top", fontsize=9, fontweight="bold", color=SIMULATED_COLOUR)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    if svg:
        import matplotlib

        with atomic_path(path.with_suffix(".svg")) as tmp, matplotlib.rc_context({"svg.fonttype": "none"}):
            fig.savefig(tmp, format="svg")  # text stays text, which a journal's editor can set in its own font
    plt.close(fig)
    return path


def training_curves(history: list[dict], path) -> Path:
    """A training run's losses by epoch, and its validation MAE beside the input's own (the line a model must stay
    below to be worth more than the NCCT itself), as nnU-Net's progress.png shows its run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (losses, errors) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [row["epoch"] for row in history]
    for key, label in (("loss_g_l1", "generator L1"), ("loss_g_gan", "generator GAN"), ("loss_d", "discriminator")):
        if any(key in row for row in history):
            losses.plot(epochs, [row.get(key, np.nan) for row in history], marker=".", label=label)
    losses.set_xlabel("epoch")
    losses.set_ylabel("loss")
    losses.set_title("training losses")
    losses.legend(fontsize=8)
    validated = [row for row in history if "val_mae" in row]
    if validated:
        at = [row["epoch"] for row in validated]
        errors.plot(at, [row["val_mae"] for row in validated], marker="o", label="sCECT vs CECT")
        errors.plot(at, [row["input_mae"] for row in validated], linestyle="--", color="grey", label="NCCT vs CECT (input)")
        best = min(validated, key=lambda row: row["val_mae"])
        errors.annotate(f"best: epoch {best['epoch']}", (best["epoch"], best["val_mae"]), textcoords="offset points",
                        xytext=(0, 8), ha="center", fontsize=8)
        errors.legend(fontsize=8)
    else:
        errors.text(0.5, 0.5, "no validation pairs", ha="center", va="center", transform=errors.transAxes)
    errors.set_xlabel("epoch")
    errors.set_ylabel("MAE (HU)")
    errors.set_title("validation")
    return save_figure(fig, path)
