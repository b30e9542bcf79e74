"""Sliding-window synthesis along z: any number of slices in, the same number of synthetic slices out.

Windows of the model's depth slide along z with a chosen stride; overlapping predictions are blended
with per-slice weights (mean or Gaussian). Stride 1 with mean blending is exactly the paper's scheme.
Slices larger than the model's in-plane window are tiled; smaller ones are padded with air. The blend
accumulates in fp32 on the compute device when it fits there (engine/placement.py), and the result is
copied to the host once, at the end.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .. import SYNTHETIC_LABEL
from .devices import resolve_device
from .encoding import WindowEncoding
from .geometry import Grid, WindowGeometry, blend_weights
from . import planner
from .placement import AccumulatorPlan, SlabFeeder, device_facts
from ..errors import SynthesisCancelled
from ..io.orientation import AxialLayout
from ..io.volume import Volume

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
#: "auto" is bf16 where the GPU supports it and fp32 elsewhere (see resolve_precision).
PRECISION_CHOICES = ("auto", *PRECISIONS)


@dataclass
class SynthesisOptions:
    """How to slide and blend. ``stride=None`` takes the model card's default stride."""

    stride: int | None = None
    blend: str | Sequence[float] = "gaussian"
    batch_size: int | None = None  # None: "auto", the planner's choice (engine/planner.py)
    precision: str = "fp32"
    device: str = "auto"
    sigma_scale: float = 0.125
    tile_overlap: float = 0.5  # in-plane, only for models whose window is smaller than the slice
    samples: int = 1  # > 1: MC dropout + test-time shifted passes, combined into a mean and an SD
    seed: int = 0  # seeds the samples' dropout masks and shifts
    backend: str = "torch"  # or "openvino" (CPU, fp32; engine/backends.py)
    channels_last: str = "auto"  # "auto": channels_last_3d on the CPU, where it measured a little better; "on" or "off"
    compile: bool = False  # torch.compile the generator: on the CPU compiling took longer than it saved on one volume


@dataclass
class SynthesisReport:
    """What actually ran, for logs and provenance (batch size and device may change after OOM)."""

    #: One word everywhere (bar, summary, header, manifest): a window is one network input, so a pass has
    #: z-positions x in-plane tiles of them; ``samples`` passes run ``samples`` times as many.
    windows: int
    stride: int
    blend: str
    device: str
    batch_size: int
    precision: str
    padded_slices: int = 0
    notes: list[str] = field(default_factory=list)
    samples: int = 1
    memory: str = ""  # where the blend accumulator lived and how large it was, decided before the run
    peak_device_mib: float | None = None  # CUDA only: the most device memory the run held
    z_positions: int = 0  # where windows start along z; windows / z_positions tiles each
    plan: object = None  # engine/planner.Plan: what the run was estimated to need, before it started


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' becomes bf16 on a CUDA GPU that supports it and fp32 everywhere else; other names are returned as
    they are. On the CPU bf16 ran 2.7x as fast and 0.1 HU MAE from fp32 with the demo model, but moved the paper-size
    network with random weights by up to 283 HU (benchmarks/sliding_window.py), so auto does not take it there."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def autocast_dtype(precision: str, device: torch.device):
    """The autocast dtype for a precision name, or None for fp32; refuses combinations the device lacks."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISION_CHOICES)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is torch.float16 and device.type == "cpu":
        raise ValueError("fp16 autocast needs a CUDA or MPS device; use bf16 or fp32 on the CPU")
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this CUDA GPU does not support bf16; use fp16 or fp32")
    return dtype


class _SlidingWindow:
    """The geometry of one volume's sliding window and the device state that OOM fallbacks change."""

    def __init__(self, hu, generator, encoding, window, options, default_stride, inplane_multiple, tile, on_plan=None):
        if hu.ndim != 3:
            raise ValueError(f"expected a (z, y, x) array, got shape {hu.shape}")
        self.encoding, self.window = encoding, window
        self.device = resolve_device(options.device)
        self.precision = resolve_precision(options.precision, self.device)
        self.amp = autocast_dtype(self.precision, self.device)
        self.channels_last = _use_channels_last(options.channels_last, self.device, generator)
        if self.channels_last:
            generator.to(memory_format=torch.channels_last_3d)  # the same weights, stored channels innermost
        self.generator = torch.compile(generator) if options.compile else generator
        config = getattr(generator, "config", None)
        self.config = config.to_dict() if hasattr(config, "to_dict") else None  # what the planner can size
        self.stride = options.stride or default_stride
        self.geometry = g = WindowGeometry(hu.shape, window, self.stride, tile, inplane_multiple, options.tile_overlap)
        self.weights = blend_weights(options.blend, window, options.sigma_scale)
        self.notes: list[str] = g.notes
        self.n_slices, self.height, self.width = g.n_slices, g.height, g.width
        self.pad_z, self.z_before = g.pad_z, g.z_before
        if self.pad_z:
            # Replicating the edge slices keeps anatomy plausible for the network; the padding is cropped away again.
            hu = np.pad(hu, ((self.z_before, self.pad_z - self.z_before), (0, 0), (0, 0)), mode="edge")
        self.hu = hu
        self.padded_y, self.padded_x, self.tile_y, self.tile_x = g.padded_y, g.padded_x, g.tile_y, g.tile_x
        self.pad_y, self.pad_x, self.tiled = g.pad_y, g.pad_x, g.tiled
        tiled_y, tiled_x = g.padded_y > g.tile_y, g.padded_x > g.tile_x
        self.w_y = blend_weights("gaussian", self.tile_y) if tiled_y else np.ones(self.tile_y, np.float32)
        self.w_x = blend_weights("gaussian", self.tile_x) if tiled_x else np.ones(self.tile_x, np.float32)
        if self.tiled:
            self.weight_3d = torch.from_numpy(self.weights[:, None, None] * self.w_y[None, :, None] * self.w_x[None, None, :])
        else:  # one tile: in-plane weights are all ones, so only z needs weighting (no full-size weight array)
            self.weight_3d = torch.from_numpy(self.weights[:, None, None].copy())
        self._device_accum: torch.Tensor | None = None  # kept across passes, so N samples allocate it once
        self._schedule(options, on_plan)

    def _schedule(self, options, on_plan) -> None:
        """Plan the batch and the accumulator's place from the estimate (engine/planner.py); for a caller that shows
        the plan, time one window first, so the line can say how long the run will take."""
        seconds = self._probe() if on_plan is not None and not options.compile else None
        facts = device_facts(self.device)
        batch = None if options.batch_size in (None, "auto") else int(options.batch_size)
        self.plan = planner.plan_run(self.config, self.geometry, self.encoding.channels, facts, batch,
                                     max(1, int(options.samples)), self.precision)
        if seconds is not None:
            self.plan.seconds = seconds * self.plan.windows
        self.batch_size = self.plan.batch_size
        here = self.device if self.plan.accumulator == "device" else torch.device("cpu")
        self.memory = AccumulatorPlan(here, self.plan.accumulator_bytes, None if self.device.type == "cpu" else facts.free_bytes)
        if self.memory.device != self.device:
            self.notes.append(self.memory.describe(self.device))
        if on_plan is not None:
            on_plan(self.plan)

    def _probe(self) -> float | None:
        """Seconds for one window on the compute device, its output discarded; None when even one does not fit."""
        import time

        grid = self.grid()
        first = [(grid.z[0], grid.y[0], grid.x[0])]
        self.generator.eval()
        self.generator.to(self.device)
        try:
            slab = self._feeder().encoded(*self._slab_range(first))
            _synchronize(self.device)
            start = time.perf_counter()
            _predict_batch(slab, first, (self.window, self.tile_y, self.tile_x), self.generator,
                           self.encoding.output_channel, self.amp, self.channels_last)
            _synchronize(self.device)
            return time.perf_counter() - start
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return None

    def grid(self, dz: int = 0, dy: int = 0, dx: int = 0) -> Grid:
        return self.geometry.grid(dz, dy, dx)

    def shift_range(self) -> tuple[int, int, int]:
        return self.geometry.shift_range()

    @property
    def accum_shape(self) -> tuple[int, int, int]:
        return self.geometry.accum_shape

    def run(self, grid: Grid, progress, cancel, done: int, total: int, out: np.ndarray | None = None) -> np.ndarray:
        """One blended pass over ``grid`` in HU, cropped to the input's shape: a view into ``out``, a host array of
        ``accum_shape`` that is reused when given. Blending and decoding run where the accumulator is."""
        starts = [(z, y, x) for z in grid.z for y in grid.y for x in grid.x]
        out = np.empty(self.accum_shape, np.float32) if out is None else out
        accum = self._accumulator(out)
        weight = self.weight_3d.to(accum.device)
        feeder = self._feeder()
        self.generator.to(self.device)
        i = 0
        while i < len(starts):
            if cancel is not None and cancel():
                raise SynthesisCancelled(f"cancelled after {done + i} of {total} windows")
            batch = starts[i : i + self.batch_size]
            following = starts[i + len(batch) : i + len(batch) + self.batch_size]
            try:
                slab = feeder.encoded(*self._slab_range(batch))
                if following:
                    feeder.prefetch(*self._slab_range(following))  # copied while the network runs on this batch
                pred = _predict_batch(slab, batch, (self.window, self.tile_y, self.tile_x), self.generator,
                                      self.encoding.output_channel, self.amp, self.channels_last)
            except torch.cuda.OutOfMemoryError:
                slab = pred = None  # the failed batch's tensors go before the retry
                accum = self._out_of_memory(accum)
                weight = self.weight_3d.to(accum.device)
                feeder = self._feeder()  # what was prefetched for a smaller batch or the old device is dropped
                continue
            pred = pred.to(accum.device)  # a copy only when the accumulator had to stay on the host
            for (z, y, x), window_pred in zip(batch, pred):
                accum[z : z + self.window, y : y + self.tile_y, x : x + self.tile_x].addcmul_(window_pred, weight)
            i += len(batch)
            if progress is not None:
                progress(done + i, total)
        self._normalise(accum, grid)
        self.encoding.decode(accum, in_place=True)  # on the accumulator's device, before the copy
        host = torch.from_numpy(out)
        if accum.data_ptr() != host.data_ptr():
            host.copy_(accum)  # the one device-to-host copy of the run
        return out[self.z_before : self.z_before + self.n_slices, self.pad_y[0] : self.pad_y[0] + self.height,
                   self.pad_x[0] : self.pad_x[0] + self.width]

    def _feeder(self) -> SlabFeeder:
        return SlabFeeder(self.hu, self.device, self.encoding, (self.pad_y, self.pad_x), float(self.encoding.air_hu),
                          self.channels_last)

    def _slab_range(self, batch) -> tuple[int, int]:
        return min(s[0] for s in batch), max(s[0] for s in batch) + self.window

    def _accumulator(self, out: np.ndarray) -> torch.Tensor:
        """A zeroed fp32 accumulator where the memory plan put it: ``out`` itself on the host, else one device
        tensor kept for every pass; a device that cannot allocate it after all sends it to the host."""
        if self.memory.device.type == "cpu":
            accum = torch.from_numpy(out)
        else:
            try:
                if self._device_accum is None:
                    self._device_accum = torch.empty(self.accum_shape, dtype=torch.float32, device=self.memory.device)
                accum = self._device_accum
            except torch.cuda.OutOfMemoryError:
                self.memory = AccumulatorPlan(torch.device("cpu"), self.memory.nbytes)  # the note below says why
                self.notes.append(f"the {self.memory.nbytes / 2**20:.0f} MiB blend accumulator did not fit on {self.device}: "
                                  "it was kept on the host")
                log.warning(self.notes[-1])
                accum = torch.from_numpy(out)
        return accum.zero_()

    def _normalise(self, accum: torch.Tensor, grid: Grid) -> None:
        """Divide by the summed weights. The window grid is a product of per-axis grids, so that sum is separable:
        three 1D sums instead of a volume-sized weight array."""
        sums = []
        for size, starts, length, weights in ((accum.shape[0], grid.z, self.window, self.weights),
                                              (accum.shape[1], grid.y, self.tile_y, self.w_y),
                                              (accum.shape[2], grid.x, self.tile_x, self.w_x)):
            total = np.zeros(size, np.float32)
            for start in starts:
                total[start : start + length] += weights
            sums.append(torch.from_numpy(total).to(accum.device))
        accum.div_(sums[0][:, None, None]).div_(sums[1][None, :, None]).div_(sums[2][None, None, :])

    def _out_of_memory(self, accum: torch.Tensor) -> torch.Tensor:
        """Halve the batch; at one window, continue on the CPU and bring the partial sums to the host with it."""
        torch.cuda.empty_cache()
        if self.batch_size > 1:
            self.batch_size //= 2
            self.notes.append(f"CUDA out of memory: batch halved to {self.batch_size} windows")
        else:
            self.device = torch.device("cpu")
            self.amp = None if self.amp is torch.float16 else self.amp
            self.generator.to(self.device)
            if accum.device.type != "cpu":
                accum = accum.cpu()  # the sums so far are kept, not recomputed
                self._device_accum = None
                self.memory = AccumulatorPlan(torch.device("cpu"), self.memory.nbytes)
                torch.cuda.empty_cache()
            self.notes.append("CUDA out of memory with one window per batch: continued on the CPU")
        log.warning(self.notes[-1])
        return accum


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _use_channels_last(choice: str, device: torch.device, generator) -> bool:
    """channels_last_3d: 'auto' turns it on for a PyTorch network on the CPU, where the paper's U-Net at ngf 16 ran
    with 10 % less peak memory and its time within noise (benchmarks/sliding_window.py); GPUs keep PyTorch's
    default until measured there."""
    if choice not in ("auto", "on", "off"):
        raise ValueError(f"channels_last must be 'auto', 'on' or 'off', got {choice!r}")
    has_weights = any(True for _ in generator.parameters())  # an OpenVINO stand-in has none and takes plain arrays
    return has_weights and (choice == "on" or (choice == "auto" and device.type == "cpu"))


NO_DROPOUT_NOTE = "the model has no dropout: the samples differ only by test-time shifts of the window grid"


def samples_note(generator, samples: int) -> str | None:
    """What a user must know before N passes start, not after them: whether MC dropout can vary at all."""
    return NO_DROPOUT_NOTE if samples > 1 and not dropout_layers(generator) else None


def dropout_layers(generator: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in generator.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0]


def sample_grids(sliding: _SlidingWindow, samples: int, seed: int) -> list[Grid]:
    """Sample 0 uses the ordinary grid; each further sample a grid shifted by a seeded random offset."""
    rng = np.random.default_rng(seed)
    ranges = sliding.shift_range()
    grids = [sliding.grid()]
    for _ in range(1, samples):
        grids.append(sliding.grid(*(int(rng.integers(0, r)) if r > 1 else 0 for r in ranges)))
    return grids


def iter_samples(hu, generator, encoding, window, options, default_stride=1, inplane_multiple=1, progress=None,
                 cancel=None, tile=None, sliding: _SlidingWindow | None = None):
    """Yield each of ``options.samples`` stochastic passes as HU: MC dropout (where the generator has dropout)
    plus a test-time shift of the window grid along z and in-plane. No flips: anatomy is not symmetric.

    Pass k draws its dropout masks from ``options.seed + k``, so the same options give the same samples.
    """
    sliding = sliding or _SlidingWindow(hu, generator, encoding, window, options, default_stride, inplane_multiple, tile)
    grids = sample_grids(sliding, options.samples, options.seed)
    total, done = sum(g.windows for g in grids), 0
    dropout = dropout_layers(generator)
    generator.eval()
    # One accumulator for all passes: allocating and freeing a volume-sized array per pass fragments the heap
    # (glibc raises its mmap threshold after the first free), and the process's memory then grows with N.
    buffer = np.empty(sliding.accum_shape, np.float32)
    try:
        for k, grid in enumerate(grids):
            for layer in dropout:
                layer.train(True)  # MC dropout: only the dropout layers sample; InstanceNorm stays as it is
            cuda = [sliding.device.index or 0] if sliding.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):  # the caller's random state is left as it was
                torch.manual_seed(options.seed + k)
                sample = sliding.run(grid, progress, cancel, done, total, buffer)
            done += grid.windows
            yield sample  # a view into the shared buffer: valid until the next pass starts
    finally:
        generator.eval()


def _synthesize(hu, generator, encoding, window, options, default_stride, inplane_multiple, progress, cancel, tile, on_plan=None):
    """(mean HU, SD HU or None, report). One sample is today's deterministic pass; more are combined by Welford."""
    sliding = _SlidingWindow(hu, generator, encoding, window, options, default_stride, inplane_multiple, tile, on_plan)
    if sliding.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(sliding.device)  # the report's peak is this run's, not the process's
    samples = int(options.samples)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    blend_name = options.blend if isinstance(options.blend, str) else "explicit"
    if samples == 1:
        generator.eval()
        grid = sliding.grid()
        result = np.ascontiguousarray(sliding.run(grid, progress, cancel, 0, grid.windows))  # a copy only when cropped
        sd = None
    else:
        if not dropout_layers(generator):
            sliding.notes.append(NO_DROPOUT_NOTE)
        if sliding.shift_range() == (1, 1, 1):
            sliding.notes.append("stride 1 and no in-plane tiling leave no room for test-time shifts")
        mean = m2 = None
        for k, sample in enumerate(iter_samples(hu, generator, encoding, window, options, progress=progress, cancel=cancel, sliding=sliding), 1):
            if mean is None:
                mean, m2 = np.array(sample, dtype=np.float32), np.zeros(sample.shape, np.float32)  # a copy: the buffer is reused
                continue
            for z in range(sample.shape[0]):  # Welford, a slice at a time: no volume-sized temporaries
                delta = sample[z] - mean[z]
                mean[z] += delta / k
                m2[z] += delta * (sample[z] - mean[z])
        np.maximum(m2, 0.0, out=m2)
        m2 /= samples - 1
        sd = np.sqrt(m2, out=m2)
        result = mean
    peak = torch.cuda.max_memory_allocated(sliding.device) / 2**20 if sliding.device.type == "cuda" else None
    precision = sliding.precision if options.precision != "auto" else f"{sliding.precision} (auto)"
    grid = sliding.grid()
    report = SynthesisReport(grid.windows, sliding.stride, blend_name, str(sliding.device), sliding.batch_size, precision,
                             sliding.pad_z, sliding.notes, samples, sliding.memory.describe(sliding.device), peak, z_positions=len(grid.z),
                             plan=sliding.plan)
    log.info("%s", report.memory)
    return result, sd, report


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
    and Gaussian-blended in-plane; smaller ones are padded with air up to it. With ``options.samples`` > 1
    the result is the mean of the samples (see ``synthesize_array_with_uncertainty`` for their SD).
    """
    result, _, report = _synthesize(hu, generator, encoding, window, options, default_stride, inplane_multiple, progress, cancel, tile)
    return result, report


def synthesize_array_with_uncertainty(hu, generator, encoding, window, options=SynthesisOptions(), default_stride=1,
                                      inplane_multiple=1, progress=None, cancel=None, tile=None, on_plan=None):
    """As ``synthesize_array``, plus the per-voxel SD in HU of ``options.samples`` passes (None for one pass)."""
    return _synthesize(hu, generator, encoding, window, options, default_stride, inplane_multiple, progress, cancel, tile,
                       on_plan)


@torch.inference_mode()
def _predict_batch(encoded, starts, size, generator, output_channel, amp, channels_last) -> torch.Tensor:
    """The output channel of the generator, in [-1, 1], for windows at ``starts`` (z, y, x) cut from the encoded
    slab that begins at the first window's z: (B, z, y, x)."""
    window, tile_y, tile_x = size
    z0 = min(s[0] for s in starts)
    views = [encoded[:, z - z0 : z - z0 + window, y : y + tile_y, x : x + tile_x] for z, y, x in starts]
    batch = views[0].unsqueeze(0) if len(views) == 1 else torch.stack(views)  # one window: a view, no copy
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last_3d)  # a no-op for an untiled window
    with torch.autocast(encoded.device.type, dtype=amp, enabled=amp is not None):
        out = generator(batch)
    return out[:, output_channel].float()


def synthesize_volume_with_uncertainty(volume: Volume, model, options: SynthesisOptions = SynthesisOptions(), progress=None,
                                      cancel=None, on_plan=None):
    """(sCECT Volume, SD Volume or None, report). Both volumes carry provenance saying they are synthetic; the SD
    map also says it is an uncertainty map, in HU, and from how many samples."""
    card = model.card
    _, inplane_multiple = model.generator.config.size_multiple()
    tile = int(card.window.get("y", 0)) or None
    if tile is not None and int(card.window.get("x", tile)) != tile:
        raise ValueError(f"model window {card.window} is not square in-plane; only square in-plane windows are supported")
    layout = AxialLayout.of(volume.direction)  # the network knows axial LPS slabs only
    generator = model.generator
    if options.backend != "torch":
        from .backends import predictor

        if options.precision != "fp32":
            raise ValueError(f"backend {options.backend!r} runs in fp32; drop --precision {options.precision}")
        options = dataclasses.replace(options, device="cpu")
        size = tile or inplane_multiple * max(1, 64 // inplane_multiple)
        generator = predictor(model, options.backend, (int(card.window["z"]), size, size), options.samples)
    array, sd, report = synthesize_array_with_uncertainty(
        layout.to_axial(volume.array),
        generator,
        card.encoding,
        int(card.window["z"]),
        options,
        default_stride=card.default_stride,
        inplane_multiple=inplane_multiple,
        progress=progress,
        cancel=cancel,
        tile=tile,
        on_plan=on_plan,
    )
    array, sd = layout.back(array), None if sd is None else layout.back(sd)
    if options.backend != "torch":
        report.device = f"{report.device} ({options.backend})"
    if not layout.is_identity:
        report.notes.append(f"synthesised in axial LPS voxel order ({layout.describe()}; no resampling), "
                            "then put back on the input's own grid")
    metadata = synthetic_metadata(card, report)
    sd_volume = None if sd is None else volume.with_array(sd, **uncertainty_metadata(card, report))
    return volume.with_array(array, **metadata), sd_volume, report


def synthesize_volume(volume: Volume, model, options: SynthesisOptions = SynthesisOptions(), progress=None, cancel=None,
                      on_plan=None):
    """Synthesise an engine Volume with a loaded model; the result carries provenance saying it is synthetic."""
    result, _, report = synthesize_volume_with_uncertainty(volume, model, options, progress, cancel, on_plan)
    return result, report


def uncertainty_metadata(card, report: SynthesisReport) -> dict:
    """Header fields of the SD map: synthetic, an uncertainty map in HU, and how it was made."""
    return {
        **synthetic_metadata(card, report),
        "ITK_FileNotes": f"{SYNTHETIC_LABEL} UNCERTAINTY (SD HU, {report.samples} samples), model {card.model_id}"[:79],
        "SyntheticContrast.map": "uncertainty",
        "SyntheticContrast.label": f"{SYNTHETIC_LABEL} uncertainty map: per-voxel SD in HU of {report.samples} samples - not an image",
    }


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
        "SyntheticContrast.samples": str(report.samples),
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
