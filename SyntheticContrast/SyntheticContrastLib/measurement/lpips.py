"""LPIPS (Zhang et al. 2018, AlexNet variant) from a local safetensors file; nothing is downloaded.

The file holds torchvision's AlexNet feature weights ("features.{0,3,6,8,10}.weight/bias") and the
LPIPS linear heads ("lin{0..4}.model.1.weight"), e.g. converted once from torchvision and the lpips
package where they are available. CT slices are clipped to the window, scaled to [-1, 1] and repeated
to three channels; LPIPS is computed per axial slice and averaged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..engine.encoding import window_bounds
from ..errors import ModelError

_SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
_SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
_CHANNELS = (64, 192, 384, 256, 256)


class LPIPSAlex(nn.Module):
    """AlexNet features tapped after each of its five ReLUs, unit-normalised per channel, weighted by 1x1 heads."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )
        self.taps = (1, 4, 7, 9, 11)
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)

    def _activations(self, x):
        x = (x - _SHIFT.to(x)) / _SCALE.to(x)
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images in [-1, 1] -> (N,) distances."""
        return sum(head((fa - fb) ** 2).mean(dim=(2, 3))[:, 0]
                   for head, fa, fb in zip(self.heads, self._activations(a), self._activations(b)))


def load_lpips(path: str | Path) -> LPIPSAlex:
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelError(path, "LPIPS weights must be one .safetensors file (pickled .pth files are refused)")
    if not path.exists():
        raise ModelError(path, "LPIPS weights file not found")
    state = load_file(str(path))
    mapped = {k: v for k, v in state.items() if k.startswith("features.")}
    for n in range(5):
        key = f"lin{n}.model.1.weight"
        if key not in state:
            raise ModelError(path, f"lacks {key} (the LPIPS linear head of layer {n + 1})")
        mapped[f"heads.{n}.weight"] = state[key]
    model = LPIPSAlex()
    try:
        model.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:
        raise ModelError(path, f"does not hold AlexNet-LPIPS weights: {exc}") from exc
    return model.eval()


def lpips_volume(model: LPIPSAlex, pred: np.ndarray, ref: np.ndarray, window) -> float:
    """Mean LPIPS over axial slices of two (z, y, x) HU volumes shown in ``window``."""
    lo, hi = window_bounds(*window)
    to_img = lambda a: torch.from_numpy(((np.clip(a, lo, hi) - lo) / (hi - lo) * 2 - 1).astype(np.float32))[:, None].repeat(1, 3, 1, 1)
    with torch.inference_mode():
        return float(model(to_img(pred), to_img(ref)).mean())
