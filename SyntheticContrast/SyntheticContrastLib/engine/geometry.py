"""Where a sliding window's windows go, from the volume's shape and the model's window alone: padding, in-plane
tiles, window starts and blend weights. Plain numpy, so the planner can size a run where torch is not imported."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


def window_starts(n_slices: int, window: int, stride: int) -> list[int]:
    """First slice of each window; the last window is moved back to end exactly at the last slice."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if stride > window:
        raise ValueError(f"stride {stride} is larger than the window ({window} slices) and would skip slices")
    last = n_slices - window
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def blend_weights(blend: str | Sequence[float], window: int, sigma_scale: float = 0.125) -> np.ndarray:
    """Per-slice weights inside one window: flat for 'mean', a centred Gaussian, or given explicitly."""
    if isinstance(blend, str):
        if blend == "mean":
            return np.ones(window, np.float32)
        if blend == "gaussian":
            centre, sigma = (window - 1) / 2.0, sigma_scale * window
            w = np.exp(-0.5 * ((np.arange(window) - centre) / sigma) ** 2)
            return (w / w.max()).astype(np.float32)
        raise ValueError(f"blend must be 'mean' or 'gaussian', got {blend!r}")
    w = np.asarray(blend, np.float32)
    if w.shape != (window,) or not np.all(w > 0):
        raise ValueError(f"explicit blend weights must be {window} positive numbers")
    return w


def shifted_starts(size: int, window: int, step: int, offset: int) -> list[int]:
    """Window starts on a grid moved by ``offset`` (0 <= offset < step), still covering every position."""
    if offset == 0:
        return window_starts(size, window, step)
    last = size - window
    return sorted({0, last, *range(offset, last + 1, step)})


def _pad_amounts(size: int, target: int) -> tuple[int, int]:
    extra = max(0, target - size)
    return extra // 2, extra - extra // 2


def _inplane_plan(size: int, tile: int | None, multiple: int, overlap: float) -> tuple[int, list[int], int]:
    """(padded size, tile starts, tile size) along one in-plane axis.

    Without a tile size the whole (padded) slice is one tile. A model trained on smaller in-plane windows
    is tiled at its own size, because InstanceNorm statistics change with the field of view.
    """
    if tile is None or size <= tile:
        target = tile if tile is not None else size + (-size) % multiple
        return max(size, target), [0], max(size, target)
    # Only the tile size must suit the network; tiles may start anywhere, so the step needs no rounding.
    step = min(tile, max(1, int(round(tile * (1 - overlap)))))
    return size, window_starts(size, tile, step), tile


@dataclass
class Grid:
    """Where the windows of one pass start along z, y and x (shifted passes start elsewhere)."""

    z: list[int]
    y: list[int]
    x: list[int]

    @property
    def windows(self) -> int:
        return len(self.z) * len(self.y) * len(self.x)


@dataclass
class WindowGeometry:
    """One volume's windows: a (z, y, x) shape padded to the model's window (edge slices along z, air in-plane) and,
    where a slice is larger than the model's in-plane window, tiled at that window with ``tile_overlap``."""

    shape: tuple[int, int, int]
    window: int
    stride: int
    tile: int | None = None
    inplane_multiple: int = 1
    tile_overlap: float = 0.5
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.n_slices, self.height, self.width = (int(s) for s in self.shape)
        window_starts(max(self.n_slices, self.window), self.window, self.stride)  # refuses a stride that skips slices
        self.pad_z = max(0, self.window - self.n_slices)
        self.z_before = self.pad_z // 2
        if self.pad_z:
            self.notes.append(f"volume has {self.n_slices} slices, fewer than the {self.window}-slice window: padded by "
                              "repeating edge slices")
        if not 0 <= self.tile_overlap < 1:
            raise ValueError(f"tile overlap must be in [0, 1), got {self.tile_overlap}")
        self.padded_y, tiles_y, self.tile_y = _inplane_plan(self.height, self.tile, self.inplane_multiple, self.tile_overlap)
        self.padded_x, tiles_x, self.tile_x = _inplane_plan(self.width, self.tile, self.inplane_multiple, self.tile_overlap)
        self.pad_y, self.pad_x = _pad_amounts(self.height, self.padded_y), _pad_amounts(self.width, self.padded_x)
        if self.padded_y != self.height or self.padded_x != self.width:
            self.notes.append(f"in-plane size {self.height}x{self.width} padded with air to {self.padded_y}x{self.padded_x}")
        self.tiled = len(tiles_y) * len(tiles_x) > 1
        if self.tiled:
            self.notes.append(f"in-plane tiled {len(tiles_y)}x{len(tiles_x)} at the model's {self.tile}-px window")
        self.step_y = tiles_y[1] - tiles_y[0] if len(tiles_y) > 1 else 1
        self.step_x = tiles_x[1] - tiles_x[0] if len(tiles_x) > 1 else 1

    @property
    def accum_shape(self) -> tuple[int, int, int]:
        """The padded volume the blend accumulates into."""
        return self.n_slices + self.pad_z, self.padded_y, self.padded_x

    @property
    def window_shape(self) -> tuple[int, int, int]:
        """One network input's (z, y, x)."""
        return self.window, self.tile_y, self.tile_x

    def grid(self, dz: int = 0, dy: int = 0, dx: int = 0) -> Grid:
        z = self.accum_shape[0]
        return Grid(shifted_starts(z, self.window, self.stride, dz),
                    shifted_starts(self.padded_y, self.tile_y, self.step_y, dy) if self.padded_y > self.tile_y else [0],
                    shifted_starts(self.padded_x, self.tile_x, self.step_x, dx) if self.padded_x > self.tile_x else [0])

    def shift_range(self) -> tuple[int, int, int]:
        """How far a test-time shift can move the grid along z, y and x (1 = not at all)."""
        return (self.stride, self.step_y if self.tiled and self.padded_y > self.tile_y else 1,
                self.step_x if self.tiled and self.padded_x > self.tile_x else 1)
