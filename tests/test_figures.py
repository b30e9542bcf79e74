"""What the PNGs show, read back by their pixels: a synthetic panel says so on the image itself, the named lesion
is marked, orientation, window and scale are on every panel, and figures from simulated data say SIMULATED."""

from __future__ import annotations

import numpy as np
from matplotlib.image import imread

from SyntheticContrastLib.measurement.figures import save_figure, side_by_side


def share(rgb: np.ndarray, colour) -> float:
    """Share of pixels within 40/255 of ``colour`` (RGB in 0-1): the marks' colours, which no grey CT pixel has."""
    return float((np.abs(rgb[..., :3] - np.asarray(colour)) < 40 / 255).all(axis=-1).mean())


def thirds(image: np.ndarray) -> list[np.ndarray]:
    w = image.shape[1] // 3
    return [image[:, i * w:(i + 1) * w] for i in range(3)]


def test_a_synthetic_panel_carries_the_mark_on_the_image_and_the_lesion_is_circled(tmp_path):
    img = np.full((128, 128), -1000.0)
    img[20:108, 20:108] = 40.0
    path = side_by_side([img, img + 100, img], ["NCCT", "sCECT (SYNTHETIC)", "CECT"], tmp_path / "f.png", "t",
                        pixel_mm=0.7, marks=[(64, 64, 8, "LN2")])
    ncct, scect, cect = thirds(imread(path))
    yellow, cyan, white = (1, 1, 0), (0, 1, 1), (1, 1, 1)
    assert share(scect, yellow) > 0.002 and share(ncct, yellow) == 0 and share(cect, yellow) == 0
    for panel in (ncct, scect, cect):
        assert share(panel, cyan) > 0.0005  # the lesion's circle and its label
        # Letters A, P, R, L, the window and the scale bar, in white over the black air around the body.
        body_free = panel[int(panel.shape[0] * 0.8):]
        assert share(body_free, white) > 0.001


def test_figures_of_simulated_data_say_simulated_and_real_ones_do_not(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    magenta = (1, 0, 1)
    for simulated in (True, False):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        path = save_figure(fig, tmp_path / f"{simulated}.png", simulated=simulated)
        assert (share(imread(path), magenta) > 0.0003) is simulated
