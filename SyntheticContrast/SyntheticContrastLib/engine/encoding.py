"""Multi-window CT encoding: a HU volume becomes one [-1, 1] channel per CT window, and back."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: torch is imported where tensors are made
    import torch

#: The paper's windows as (width, level) in HU: W2000/L0, W1000/L200, W500/L50.
PAPER_WINDOWS: tuple[tuple[float, float], ...] = ((2000.0, 0.0), (1000.0, 200.0), (500.0, 50.0))
#: Mediastinal window used for evaluation (paper Table 2).
MEDIASTINAL_WINDOW: tuple[float, float] = (350.0, 50.0)


def window_bounds(width: float, level: float) -> tuple[float, float]:
    """Lowest and highest HU shown by a window of the given width and level."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    return level - width / 2.0, level + width / 2.0


@functools.lru_cache(maxsize=32)
def _window_affine(windows: tuple[tuple[float, float], ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window scale and shift that map [lo, hi] onto [-1, 1], on ``device``. Made once per device: a small
    tensor built from Python numbers on every slab is a host-to-device copy that waits for the GPU's queue."""
    import torch  # here, not at the top: a card (cards.py) is read without torch

    scale, shift = [], []
    for width, level in windows:
        lo, hi = window_bounds(width, level)
        scale.append(2.0 / (hi - lo))
        shift.append(-1.0 - lo * 2.0 / (hi - lo))
    return (torch.tensor(scale, dtype=torch.float32, device=device),
            torch.tensor(shift, dtype=torch.float32, device=device))


@dataclass(frozen=True)
class WindowEncoding:
    """Encodes HU as stacked windows; decodes the ``output_channel`` window back to HU."""

    windows: tuple[tuple[float, float], ...] = PAPER_WINDOWS
    output_channel: int = 0
    air_hu: float = field(default=-1000.0)

    def __post_init__(self):
        object.__setattr__(self, "windows", tuple((float(w), float(l)) for w, l in self.windows))
        if not 0 <= self.output_channel < len(self.windows):
            raise ValueError(f"output_channel {self.output_channel} outside {len(self.windows)} windows")
        for width, level in self.windows:
            window_bounds(width, level)

    @property
    def channels(self) -> int:
        return len(self.windows)

    @property
    def output_range_hu(self) -> tuple[float, float]:
        return window_bounds(*self.windows[self.output_channel])

    def encode(self, hu: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """HU tensor of any shape (..., Z, Y, X) -> float32 tensor with a channel axis inserted before Z.

        ``channels_last`` stores the channels innermost (the same values and shape), so a window cut from it is
        already in the ``channels_last_3d`` layout, with no copy before the network."""
        import torch

        hu = hu.to(torch.float32)
        # clamp(hu, lo, hi) scaled to [-1, 1] is clamp(scale * hu + shift, -1, 1): one fused pass writes every
        # channel in either layout, and one more clamps it in place.
        scale, shift = _window_affine(self.windows, hu.device)
        if channels_last:
            out = torch.addcmul(shift, hu.unsqueeze(-1), scale).movedim(-1, -4)
        else:
            out = torch.addcmul(shift[:, None, None, None], hu.unsqueeze(-4), scale[:, None, None, None])
        return out.clamp_(-1.0, 1.0)

    def decode(self, encoded_channel: torch.Tensor | np.ndarray, in_place: bool = False):
        """The output channel's [-1, 1] values -> HU within that window's range. ``in_place`` (a tensor only)
        overwrites the input, so no second volume-sized array is made."""
        lo, hi = self.output_range_hu
        if in_place:
            return encoded_channel.add_(1.0).mul_((hi - lo) / 2.0).add_(lo)
        return (encoded_channel + 1.0) * ((hi - lo) / 2.0) + lo

    def to_dict(self) -> dict:
        return {
            "windows": [{"width": w, "level": l} for w, l in self.windows],
            "output_channel": self.output_channel,
            "air_hu": self.air_hu,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "WindowEncoding":
        return cls(
            windows=tuple((float(w["width"]), float(w["level"])) for w in data["windows"]),
            output_channel=int(data.get("output_channel", 0)),
            air_hu=float(data.get("air_hu", -1000.0)),  # cards written before air_hu was stored used -1000
        )
