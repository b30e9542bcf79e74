"""Sliding-window synthesis along z: any number of slices in, the same number of synthetic slices out.

Windows of the model's depth slide along z with a chosen stride; overlapping predictions are blended
with per-slice weights (mean or Gaussian). Stride 1 with mean blending is exactly the paper's scheme.
Slices larger than the model's in-plane window are tiled; smaller ones are padded with air. Only one
batch of windows is on the device at a time; the blend accumulates on the host into an array the size
of the output, so device memory does not grow with the volume.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import SYNTHETIC_LABEL
from .encoding import WindowEncoding
from .errors import SynthesisCancelled
from .volume_io import Volume

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class SynthesisOptions:
    """How to slide and blend. ``stride=None`` takes the model card's default stride."""

    stride: int | None = None
    blend: str | Sequence[float] = "gaussian"
    batch_size: int = 1
    precision: str = "fp32"
    device: str = "auto"
    sigma_scale: float = 0.125
    tile_overlap: float = 0.5  # in-plane, only for models whose window is smaller than the slice


@dataclass
class SynthesisReport:
    """What actually ran, for logs and provenance (batch size and device may change after OOM)."""

    windows: int
    stride: int
    blend: str
    device: str
    batch_size: int
    precision: str
    padded_slices: int = 0
    notes: list[str] = field(default_factory=list)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' was asked for but Apple MPS is not available")
    return device


def autocast_dtype(precision: str, device: torch.device):
    """The autocast dtype for a precision name, or None for fp32; refuses combinations the device lacks."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is torch.float16 and device.type == "cpu":
        raise ValueError("fp16 autocast needs a CUDA or MPS device; use bf16 or fp32 on the CPU")
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this CUDA GPU does not support bf16; use fp16 or fp32")
    return dtype


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


def synthesize_array(
    hu: np.ndarray,
    generator: torch.nn.Module,
    encoding: WindowEncoding,
    window: int,
    options: SynthesisOptions = SynthesisOptions(),
    default_stride: int = 1,
    inplane_multiple: int = 1,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    tile: int | None = None,
) -> tuple[np.ndarray, SynthesisReport]:
    """Synthesise a (z, y, x) HU array; returns float32 HU of the same shape and a report of what ran.

    ``tile`` is the model's in-plane window: slices larger than it are tiled with ``options.tile_overlap``
    and Gaussian-blended in-plane; smaller ones are padded with air up to it.
    """
    if hu.ndim != 3:
        raise ValueError(f"expected a (z, y, x) array, got shape {hu.shape}")
    device = resolve_device(options.device)
    amp = autocast_dtype(options.precision, device)
    stride = options.stride or default_stride
    blend_name = options.blend if isinstance(options.blend, str) else "explicit"
    weights = blend_weights(options.blend, window, options.sigma_scale)
    notes: list[str] = []

    n_slices, height, width = hu.shape
    pad_z = max(0, window - n_slices)
    if pad_z:
        # Replicating the edge slices keeps anatomy plausible for the network; the padding is cropped away again.
        z_before = pad_z // 2
        hu = np.pad(hu, ((z_before, pad_z - z_before), (0, 0), (0, 0)), mode="edge")
        notes.append(f"volume has {n_slices} slices, fewer than the {window}-slice window: padded by repeating edge slices")
    else:
        z_before = 0
    if not 0 <= options.tile_overlap < 1:
        raise ValueError(f"tile overlap must be in [0, 1), got {options.tile_overlap}")
    padded_y, tiles_y, tile_y = _inplane_plan(height, tile, inplane_multiple, options.tile_overlap)
    padded_x, tiles_x, tile_x = _inplane_plan(width, tile, inplane_multiple, options.tile_overlap)
    pad_y, pad_x = _pad_amounts(height, padded_y), _pad_amounts(width, padded_x)
    if padded_y != height or padded_x != width:
        notes.append(f"in-plane size {height}x{width} padded with air to {padded_y}x{padded_x}")
    if len(tiles_y) * len(tiles_x) > 1:
        notes.append(f"in-plane tiled {len(tiles_y)}x{len(tiles_x)} at the model's {tile}-px window")
    w_y = blend_weights("gaussian", tile_y) if len(tiles_y) > 1 else np.ones(tile_y, np.float32)
    w_x = blend_weights("gaussian", tile_x) if len(tiles_x) > 1 else np.ones(tile_x, np.float32)

    z_starts = window_starts(hu.shape[0], window, stride)
    starts = [(z, y, x) for z in z_starts for y in tiles_y for x in tiles_x]
    total = len(starts)
    # The window grid is a product of per-axis grids, so the summed weight is separable: three 1D sums.
    accum = np.zeros((hu.shape[0], padded_y, padded_x), np.float32)
    sum_z, sum_y, sum_x = np.zeros(hu.shape[0], np.float32), np.zeros(padded_y, np.float32), np.zeros(padded_x, np.float32)
    for z in z_starts:
        sum_z[z : z + window] += weights
    for y in tiles_y:
        sum_y[y : y + tile_y] += w_y
    for x in tiles_x:
        sum_x[x : x + tile_x] += w_x
    if len(tiles_y) * len(tiles_x) > 1:
        weight_3d = torch.from_numpy(weights[:, None, None] * w_y[None, :, None] * w_x[None, None, :])
    else:  # one tile: in-plane weights are all ones, so only z needs weighting (no full-size weight array)
        weight_3d = torch.from_numpy(weights[:, None, None].copy())
    batch_size = max(1, int(options.batch_size))
    generator.eval()
    generator.to(device)
    air = float(encoding.air_hu)

    done = 0
    while done < total:
        if cancel is not None and cancel():
            raise SynthesisCancelled(f"cancelled after {done} of {total} windows")
        batch = starts[done : done + batch_size]
        try:
            pred = _predict_batch(hu, batch, (window, tile_y, tile_x), generator, encoding, device, amp, (pad_y, pad_x), air)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if batch_size > 1:
                batch_size //= 2
                notes.append(f"CUDA out of memory: batch halved to {batch_size} windows")
            else:
                device = torch.device("cpu")
                amp = None if amp is torch.float16 else amp
                generator.to(device)
                notes.append("CUDA out of memory with one window per batch: continued on the CPU")
            log.warning(notes[-1])
            continue
        pred = (pred * weight_3d.to(pred.device)).cpu().numpy()
        for (z, y, x), window_pred in zip(batch, pred):
            accum[z : z + window, y : y + tile_y, x : x + tile_x] += window_pred
        done += len(batch)
        if progress is not None:
            progress(done, total)

    accum /= sum_z[:, None, None]
    accum /= sum_y[None, :, None]
    accum /= sum_x[None, None, :]
    crop = accum[z_before : z_before + n_slices, pad_y[0] : pad_y[0] + height, pad_x[0] : pad_x[0] + width]
    result = encoding.decode(crop)
    report = SynthesisReport(len(z_starts), stride, blend_name, str(device), batch_size, options.precision, pad_z, notes)
    return np.ascontiguousarray(result, dtype=np.float32), report


@torch.inference_mode()
def _predict_batch(hu, starts, size, generator, encoding, device, amp, pads, air) -> torch.Tensor:
    """The output channel of the generator, in [-1, 1], for windows at ``starts`` (z, y, x): (B, z, y, x)."""
    window, tile_y, tile_x = size
    z0, z1 = min(s[0] for s in starts), max(s[0] for s in starts) + window
    slab = torch.from_numpy(np.ascontiguousarray(hu[z0:z1])).to(device, torch.float32)
    (pyb, pya), (pxb, pxa) = pads
    if pyb + pya + pxb + pxa:
        slab = F.pad(slab, (pxb, pxa, pyb, pya), value=air)
    encoded = encoding.encode(slab)  # (C, S, Y, X): encoded once per slab, shared by overlapping windows
    views = [encoded[:, z - z0 : z - z0 + window, y : y + tile_y, x : x + tile_x] for z, y, x in starts]
    batch = views[0].unsqueeze(0) if len(views) == 1 else torch.stack(views)  # one window: a view, no copy
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        out = generator(batch)
    return out[:, encoding.output_channel].float()


def synthesize_volume(volume: Volume, model, options: SynthesisOptions = SynthesisOptions(), progress=None, cancel=None):
    """Synthesise an engine Volume with a loaded model; the result carries provenance saying it is synthetic."""
    card = model.card
    _, inplane_multiple = model.generator.config.size_multiple()
    tile = int(card.window.get("y", 0)) or None
    if tile is not None and int(card.window.get("x", tile)) != tile:
        raise ValueError(f"model window {card.window} is not square in-plane; only square in-plane windows are supported")
    array, report = synthesize_array(
        volume.array,
        model.generator,
        card.encoding,
        int(card.window["z"]),
        options,
        default_stride=card.default_stride,
        inplane_multiple=inplane_multiple,
        progress=progress,
        cancel=cancel,
        tile=tile,
    )
    metadata = synthetic_metadata(card, report)
    return volume.with_array(array, **metadata), report


def synthetic_metadata(card, report: SynthesisReport) -> dict:
    """Header fields that mark a volume as synthetic and say how it was made."""
    return {
        # ITK writes this key into NIfTI's 80-byte 'descrip', the only free text NIfTI keeps; NRRD keeps all keys.
        "ITK_FileNotes": f"{SYNTHETIC_LABEL} sCECT, model {card.model_id} sha256 {card.sha256[:12]}"[:79],
        "SyntheticContrast.synthetic": "true",
        "SyntheticContrast.label": f"{SYNTHETIC_LABEL} contrast-enhanced CT - not acquired, not for diagnosis",
        "SyntheticContrast.model_id": card.model_id,
        "SyntheticContrast.model_sha256": card.sha256,
        "SyntheticContrast.stride": str(report.stride),
        "SyntheticContrast.blend": report.blend,
        "SyntheticContrast.windows": str(report.windows),
        "SyntheticContrast.date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def paper_reference(hu: np.ndarray, generator, encoding: WindowEncoding, window: int) -> np.ndarray:
    """The paper's loop written plainly: every window at stride 1, overlapping slices averaged."""
    n = hu.shape[0]
    total = np.zeros(hu.shape, np.float64)
    count = np.zeros(n)
    with torch.inference_mode():
        for i in range(n - window + 1):
            x = encoding.encode(torch.from_numpy(hu[i : i + window].copy()))[None]
            total[i : i + window] += generator(x)[0, encoding.output_channel].double().numpy()
            count[i : i + window] += 1
    return encoding.decode(total / count[:, None, None])
