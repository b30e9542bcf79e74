"""Image similarity in a CT window: MAE (HU), PSNR and MS-SSIM, computed the same way everywhere.

Both images are clipped to the window (default mediastinal W350/L50). MAE is in HU of the clipped
images; PSNR uses the window width as data range. MS-SSIM is 2D per axial slice on images scaled to
[0, 1] (data range 1), Gaussian window sigma 1.5 (11 taps), K1 0.01, K2 0.03, the five scale weights of
Wang et al. 2003, 2x2 average pooling between scales (odd sides edge-extended first), each scale's map
averaged after cropping the 5-px window border, and the slice values then averaged over slices.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..engine.encoding import MEDIASTINAL_WINDOW, window_bounds

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_GAUSS_SIGMA, _GAUSS_TRUNCATE = 1.5, 3.5  # radius int(3.5 * 1.5 + 0.5) = 5: the 11-tap window
_WIN = 11


def clip_to_window(hu: np.ndarray, window=MEDIASTINAL_WINDOW) -> np.ndarray:
    lo, hi = window_bounds(*window)
    return np.clip(np.asarray(hu, np.float64), lo, hi)


def _select(a: np.ndarray, mask):
    return a if mask is None else a[np.asarray(mask, bool)]


def mae(pred, ref, window=MEDIASTINAL_WINDOW, mask=None) -> float:
    """Mean absolute difference in HU after clipping both to the window."""
    return float(np.mean(np.abs(_select(clip_to_window(pred, window) - clip_to_window(ref, window), mask))))


def psnr(pred, ref, window=MEDIASTINAL_WINDOW, mask=None) -> float:
    """Peak signal-to-noise ratio in dB with the window width as the data range."""
    diff = _select(clip_to_window(pred, window) - clip_to_window(ref, window), mask)
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else float(10 * np.log10(window[0] ** 2 / mse))


def _filter(img: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(img, _GAUSS_SIGMA, truncate=_GAUSS_TRUNCATE, mode="reflect")


def ssim_components(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> tuple[float, float]:
    """Mean SSIM and mean contrast-structure term of two 2D images (borders of the 11-px window cropped)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _filter(x), _filter(y)
    # Population (not sample) covariance, as in Wang et al. and scikit-image's use_sample_covariance=False.
    vx, vy, cxy = _filter(x * x) - mx * mx, _filter(y * y) - my * my, _filter(x * y) - mx * my
    cs = (2 * cxy + c2) / (vx + vy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    pad = (_WIN - 1) // 2
    crop = (slice(pad, -pad),) * 2
    return float(np.mean((lum * cs)[crop])), float(np.mean(cs[crop]))


def ms_ssim_2d(x: np.ndarray, y: np.ndarray, data_range: float = 1.0, weights=MS_SSIM_WEIGHTS) -> float:
    """Multi-scale SSIM of two 2D images; needs min side > (11 - 1) * 2**(scales - 1), i.e. > 160 px for 5 scales."""
    scales = len(weights)
    if min(x.shape) <= (_WIN - 1) * 2 ** (scales - 1):
        raise ValueError(f"MS-SSIM with {scales} scales needs images larger than {(_WIN - 1) * 2 ** (scales - 1)} px, got {x.shape}")
    values = []
    for s in range(scales):
        ssim, cs = ssim_components(x, y, data_range)
        values.append(max(ssim if s == scales - 1 else cs, 0.0))
        if s < scales - 1:
            x, y = _halve(x), _halve(y)
    return float(np.prod(np.power(values, weights)))


def _halve(img: np.ndarray) -> np.ndarray:
    """2x2 mean pooling; an odd side is first extended by its edge row/column, so 161 px -> 81 -> 41 -> 21 -> 11."""
    img = np.pad(img, ((0, img.shape[0] % 2), (0, img.shape[1] % 2)), mode="edge")
    h, w = img.shape
    return img.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def ms_ssim(pred, ref, window=MEDIASTINAL_WINDOW) -> float:
    """MS-SSIM per axial slice of (z, y, x) volumes in the window scaled to [0, 1], averaged over slices."""
    lo, hi = window_bounds(*window)
    p = (clip_to_window(pred, window) - lo) / (hi - lo)
    r = (clip_to_window(ref, window) - lo) / (hi - lo)
    return float(np.mean([ms_ssim_2d(p[k], r[k], 1.0) for k in range(p.shape[0])]))
