"""PNG figures shared by the demo, training samples and evaluation: images shown in a CT window."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..engine.encoding import MEDIASTINAL_WINDOW, window_bounds
from ..fileio import atomic_path


def side_by_side(slices, titles, path, suptitle: str = "", window=MEDIASTINAL_WINDOW) -> Path:
    """Axial slices next to each other in one CT window, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = window_bounds(*window)
    fig, axes = plt.subplots(1, len(slices), figsize=(4.2 * len(slices), 4.6))
    for ax, img, title in zip(np.atleast_1d(axes), slices, titles):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(f"{suptitle}  [W{window[0]:.0f}/L{window[1]:.0f}]".strip())
    return save_figure(fig, path)


def save_figure(fig, path) -> Path:
    """Lay out, write atomically as PNG, and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path
