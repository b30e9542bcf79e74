"""Multi-window CT encoding: a HU volume becomes one [-1, 1] channel per CT window, and back."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
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

    def encode(self, hu: torch.Tensor) -> torch.Tensor:
        """HU tensor of any shape (..., Z, Y, X) -> float32 tensor with a channel axis inserted before Z."""
        hu = hu.to(torch.float32)
        shape = hu.shape[:-3] + (len(self.windows),) + hu.shape[-3:]
        out = torch.empty(shape, dtype=torch.float32, device=hu.device)
        for c, (width, level) in enumerate(self.windows):
            lo, hi = window_bounds(width, level)
            channel = out.select(-4, c)
            # In place into the output: no per-window temporaries and no stacking copy.
            torch.clamp(hu, lo, hi, out=channel)
            channel.sub_(lo).mul_(2.0 / (hi - lo)).sub_(1.0)
        return out

    def decode(self, encoded_channel: torch.Tensor | np.ndarray, out: np.ndarray | None = None):
        """The output channel's [-1, 1] values -> HU within that window's range; into ``out`` (numpy) if given,
        which may be the input itself, so no second volume-sized array is made."""
        lo, hi = self.output_range_hu
        if out is None:
            return (encoded_channel + 1.0) * ((hi - lo) / 2.0) + lo
        np.add(encoded_channel, 1.0, out=out)
        out *= (hi - lo) / 2.0
        out += lo
        return out

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
