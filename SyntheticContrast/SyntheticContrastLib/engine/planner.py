"""Before a run, what it will need and whether it fits: the network's peak memory for a batch of windows (followed
through the U-Net's layers), its weights, the blend accumulator, the slabs and, on the CPU, the process around them;
from that the batch size and the accumulator's place, and one line that says so. Plain arithmetic on the card and the
volume's shape, so the Slicer panel can plan without importing torch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .cards import GENERATOR_ARCHITECTURE
from .geometry import WindowGeometry

GIB, MIB = 1024 ** 3, 1024 ** 2
#: The share of a device's free memory a plan may fill: the rest is for what no plan sees (allocator rounding and
#: fragmentation, cuDNN's workspaces, other processes starting meanwhile).
USABLE_SHARE = 0.9
#: Batch sizes "auto" tries on a GPU, largest first. On the CPU it stays at 1, as before "auto" existed: larger CPU
#: batches were not measured to be faster, and they surely take more memory.
AUTO_BATCHES = (8, 4, 2, 1)
#: What a fresh engine process holds before it reads a volume: Python, torch, numpy, SimpleITK and the engine imported,
#: a small model loaded (457 MiB, measured once on Linux x86-64 with torch 2.13 CPU by a stage-by-stage probe that is
#: not shipped; benchmarks/planner.py checks only the sum). Used where the plan is made outside the process that will
#: run (the Slicer panel, about its child).
FRESH_PROCESS_BYTES = 457 * MIB
#: Host bytes per voxel of the volume that reading it takes at its peak (the file's pixels, SimpleITK's image and the
#: float32 array at once), and that the output checks and the write take beside the result after synthesis. Both were
#: measured once, with the demo model, by the same unshipped stage probe: the read's peak was 13.2 and 13.1 bytes per
#: voxel at 48 and 150 slices, and the checks' 16.3 at 150 slices, of which 4 are the result. benchmarks/planner.py
#: then compares the whole estimate with the measured peak at 48, 150 and 300 slices.
READ_BYTES_PER_VOXEL = 13.0
AFTER_BYTES_PER_VOXEL = 12.5
#: What PyTorch's CPU runtime (oneDNN's primitives and scratch, the thread pool) holds while windows run, beyond the
#: tensors the plan counts (the same stage probe, 2 cores; an allowance, not a law).
CPU_RUNTIME_BYTES = 200 * MIB
#: Where oneDNN keeps a reordered copy of a convolution's input and output on the CPU: peak live tensors times this.
#: An allowance that was not measured on its own; the whole estimate is, by benchmarks/planner.py.
CPU_CONVOLUTION_FACTOR = 1.5


def generator_parameters(config: dict) -> int:
    """The U-Net's parameter count, from its configuration alone (engine/networks.py builds exactly these layers)."""
    levels, chans, strides = int(config.get("levels", 9)), _channels(config), _strides(config)
    count, prev = 0, int(config.get("in_channels", 3))
    for stride, ch in zip(strides, chans):
        count += prev * ch * math.prod(4 if s == 2 else 3 for s in stride) + ch
        prev = ch
    for i in range(levels - 1, 0, -1):
        in_ch = chans[i] if i == levels - 1 else 2 * chans[i]
        count += in_ch * chans[i - 1] * 27 + chans[i - 1]
    head_in = 2 * chans[0] if levels > 1 else chans[0]
    return count + head_in * int(config.get("out_channels", 3)) * 27 + int(config.get("out_channels", 3))


def _channels(config: dict) -> list[int]:
    ngf, top = int(config.get("ngf", 64)), int(config.get("max_multiplier", 8))
    return [ngf * min(2 ** i, top) for i in range(int(config.get("levels", 9)))]


def _strides(config: dict) -> list[tuple[int, int, int]]:
    halvings = int(config.get("z_halvings", 4))
    return [(2 if i < halvings else 1, 2, 2) for i in range(int(config.get("levels", 9)))]


def activation_peak_bytes(config: dict, window: tuple[int, int, int], batch: int, compute_bytes: int = 4,
                          dropout: bool = False) -> int:
    """The most bytes of tensors alive at once during one inference forward pass of ``batch`` windows, input included.

    It follows UNetGenerator3D.forward: every encoder output stays alive as a skip until its decoder concatenates it;
    each block briefly holds its input, its convolution's output and its normalisation's output. ``compute_bytes`` is
    2 under bf16/fp16 autocast, where convolutions write half-width tensors (normalisation and concatenation stay
    fp32, conservatively). ``dropout``: MC-dropout passes, whose dropout layers allocate an output and a mask."""
    levels, chans = int(config.get("levels", 9)), _channels(config)
    out_ch, in_ch = int(config.get("out_channels", 3)), int(config.get("in_channels", 3))
    dropout_levels = int(config.get("dropout_levels", 3)) if dropout and float(config.get("dropout", 0)) > 0 else 0
    sizes, (d, h, w) = [], window
    for stride in _strides(config):
        d, h, w = d // stride[0], h // stride[1], w // stride[2]
        sizes.append(batch * d * h * w)
    full = batch * math.prod(window)
    cast = compute_bytes < 4  # autocast casts each convolution's fp32 input to a half-width copy
    live = peak = full * in_ch * 4
    skips = []
    for i, ch in enumerate(chans):
        conv = sizes[i] * ch * compute_bytes
        source = (full * in_ch if i == 0 else sizes[i - 1] * chans[i - 1]) * compute_bytes if cast else 0
        peak = max(peak, live + source + conv)
        out = conv
        if 0 < i < levels - 1:
            out = sizes[i] * ch * 4
            peak = max(peak, live + conv + out)
        live += out
        skips.append(out)
    x = skips.pop()
    for depth, i in enumerate(range(levels - 1, 0, -1)):
        channels_in = chans[i] if i == levels - 1 else 2 * chans[i]
        upsampled = sizes[i - 1] * channels_in * 4
        conv = sizes[i - 1] * chans[i - 1] * compute_bytes
        peak = max(peak, live + upsampled + (upsampled * compute_bytes // 4 if cast else 0) + conv)
        normed = sizes[i - 1] * chans[i - 1] * 4
        peak = max(peak, live + conv + normed)
        if depth < dropout_levels:
            peak = max(peak, live + 2 * normed + normed // 4)  # the output and a one-byte mask
        skip = skips.pop()
        concatenated = normed + skip
        peak = max(peak, live + normed + concatenated)
        live += concatenated - x - skip
        x = concatenated
    head_in = full * (2 * chans[0] if levels > 1 else chans[0]) * 4
    peak = max(peak, live + head_in)
    live += head_in - x
    head_out = full * out_ch * compute_bytes
    peak = max(peak, live + (head_in * compute_bytes // 4 if cast else 0) + head_out)
    # The head's output and the residual sum (or tanh) of it; the sum's clamp is written while the sum still lives.
    return max(peak, live + head_out + full * out_ch * 4, live + 2 * full * out_ch * 4)


@dataclass
class Plan:
    """What a run will need, where its parts go, and whether that fits: the figures behind the one-line summary."""

    device: str
    device_name: str
    batch_size: int
    accumulator: str  # "device" or "host"
    windows: int
    peak_bytes: int  # on the compute device; on the CPU, the whole process
    available_bytes: int | None  # free on the device (the host's available memory on the CPU), when known
    network_bytes: int  # weights + activations + slabs of one batch
    accumulator_bytes: int
    host_peak_bytes: int  # the process's peak RSS, on any device
    seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool | None:
        if self.available_bytes is None:
            return None
        return self.peak_bytes <= USABLE_SHARE * self.available_bytes

    def line(self) -> str:
        """'fits: 7.8 GiB of 79.1 GiB free on cuda:0 (NVIDIA H100), batch 4, accumulator on the GPU, about 40 s'."""
        where = "free on" if self.device != "cpu" else "available on"
        verdict = {True: "fits", False: "does not fit", None: "needs"}[self.fits]
        memory = (f"{human_bytes(self.peak_bytes)} of {human_bytes(self.available_bytes)} {where} {self.device_name}"
                  if self.available_bytes is not None else f"{human_bytes(self.peak_bytes)} on {self.device_name}")
        accumulator = "" if self.device == "cpu" else (
            ", accumulator on the GPU" if self.accumulator == "device" else ", accumulator on the host")
        seconds = "" if self.seconds is None else f", about {_duration(self.seconds)}"
        return f"{verdict}: {memory}, batch {self.batch_size}, {windows(self.windows)}{accumulator}{seconds}"

    def as_dict(self) -> dict:
        return {**asdict(self), "fits": self.fits, "line": self.line()}


def windows(count: int) -> str:
    return f"{count} window" + ("" if count == 1 else "s")


def human_bytes(nbytes: int) -> str:
    """'7.8 GiB', or '93 MiB' under a tenth of a GiB."""
    return f"{nbytes / GIB:.1f} GiB" if nbytes >= GIB / 10 else f"{nbytes / MIB:.0f} MiB"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{max(1, round(seconds))} s"


@dataclass(frozen=True)
class DeviceFacts:
    """What the planner needs to know of the device, gathered by ``engine/placement.py`` (with torch) or ``engine/host_memory.py`` (without)."""

    device: str = "cpu"  # "cpu", "cuda:0", "mps"
    name: str = "cpu"
    free_bytes: int | None = None  # the device's free memory; on the CPU, the host's available memory
    resident_bytes: int | None = None  # this process's RSS now, when the plan is made in the process that will run
    peak_so_far_bytes: int | None = None  # its high-water mark so far (reading the volume may already have set it)


def plan_card(card, shape: tuple[int, int, int], facts: DeviceFacts, batch_size: int | None = None,
              stride: int | None = None, tile_overlap: float = 0.5, samples: int = 1, precision: str = "fp32",
              volume_in_memory: bool = False) -> Plan:
    """The plan of ``card``'s model on an axial (z, y, x) volume, where no network is built: the panel before Apply,
    the node before it synthesises a series."""
    if card.architecture.get("name") != GENERATOR_ARCHITECTURE:
        raise ValueError(f"model card {card.model_id}: cannot plan architecture {card.architecture.get('name')!r}")
    config = dict(card.architecture.get("parameters", {}))
    tile = int(card.window.get("y", 0)) or None
    geometry = WindowGeometry(tuple(shape), int(card.window["z"]), stride or card.default_stride, tile,
                              2 ** int(config.get("levels", 9)), tile_overlap)
    return plan_run(config, geometry, len(card.encoding.windows), facts, batch_size, samples, precision, volume_in_memory)


def plan_run(config: dict | None, geometry: WindowGeometry, channels: int, facts: DeviceFacts,
             batch_size: int | None = None, samples: int = 1, precision: str = "fp32", volume_in_memory: bool = True) -> Plan:
    """The plan of one synthesis with the U-Net ``config`` (None: a network the planner cannot size) over
    ``geometry``, ``channels`` encoded CT windows per slice, on the device ``facts`` describes.

    ``batch_size`` None is "auto": the largest of AUTO_BATCHES that fits on a GPU, 1 on the CPU. The accumulator goes
    on the GPU when it fits there beside a batch of one, else on the host. ``volume_in_memory``: the volume is already
    read into this process (the CLI, the node's worker); otherwise the plan adds reading it (the panel)."""
    shape = (geometry.n_slices, geometry.height, geometry.width)
    voxels = math.prod(shape)
    accum_bytes = 4 * math.prod(geometry.accum_shape)
    on_cpu = facts.device == "cpu"
    compute_bytes = 2 if precision in ("bf16", "fp16") else 4
    notes: list[str] = []
    if config is None:
        notes.append("the network is not a U-Net the planner knows: its own memory is not counted")
    parameters = generator_parameters(config) if config is not None else 0
    weights = 4 * parameters + (2 * parameters if compute_bytes == 2 else 0)  # autocast keeps a half-width copy

    def slab_slices(batch: int) -> int:
        return min(geometry.accum_shape[0], geometry.window + (batch - 1) * geometry.stride)

    def network(batch: int) -> int:
        activations = 0 if config is None else activation_peak_bytes(config, geometry.window_shape, batch, compute_bytes,
                                                                     dropout=samples > 1)
        if on_cpu:
            activations = int(activations * CPU_CONVOLUTION_FACTOR)
        plane = 4 * slab_slices(batch) * geometry.padded_y * geometry.padded_x
        if on_cpu:  # the raw slab is a view of the volume; its encoded channels are new
            return weights + activations + plane * channels
        # On CUDA the raw slab is copied over, encoded there, and the next batch's raw slab is staged meanwhile.
        return weights + activations + plane * (2 + channels)

    windows = geometry.grid().windows * samples
    if on_cpu:
        batch = max(1, batch_size or 1)
        peak = _host_peak(facts, voxels, accum_bytes, network(batch), samples, volume_in_memory)
        return Plan("cpu", facts.name, batch, "host", windows, peak, facts.free_bytes, network(batch), accum_bytes, peak,
                    notes=notes)
    free = facts.free_bytes
    usable = None if free is None else USABLE_SHARE * free
    accumulator = "device" if usable is None or accum_bytes + network(1) <= usable else "host"
    on_device = accum_bytes if accumulator == "device" else 0
    if batch_size is not None:
        batch = max(1, batch_size)
    elif usable is None:
        batch = 1  # MPS says nothing of its memory: no guess
    else:
        batch = next((b for b in AUTO_BATCHES if on_device + network(b) <= usable), 1)
    if accumulator == "host":
        notes.append(f"the {human_bytes(accum_bytes)} blend accumulator does not fit on {facts.name} beside the network: it is kept "
                     "on the host and each batch is copied there")
    staging = 2 * 4 * slab_slices(batch) * geometry.padded_y * geometry.padded_x  # two pinned host buffers
    host = _host_peak(facts, voxels, accum_bytes if accumulator == "host" else 0, staging, samples, volume_in_memory)
    return Plan(facts.device, facts.name, batch, accumulator, windows, on_device + network(batch), free, network(batch),
                accum_bytes, host, notes=notes)


def _host_peak(facts: DeviceFacts, voxels: int, accum_bytes: int, network_bytes: int, samples: int,
               volume_in_memory: bool) -> int:
    """The process's peak RSS: what it holds now (or a fresh engine process, with the volume read into it), then the
    larger of synthesis (accumulator, network, the CPU runtime's working memory, and for samples the running mean and
    variance) and what follows it (the output checks and the write, beside the result)."""
    base = facts.resident_bytes if facts.resident_bytes is not None else FRESH_PROCESS_BYTES
    if volume_in_memory:
        resident, read_peak = base, facts.peak_so_far_bytes or base
    else:
        resident, read_peak = base + 4 * voxels, base + int(READ_BYTES_PER_VOXEL * voxels)
    synthesis = accum_bytes + network_bytes + CPU_RUNTIME_BYTES + (8 * voxels if samples > 1 else 0)
    after = 4 * voxels * (2 if samples > 1 else 1) + int(AFTER_BYTES_PER_VOXEL * voxels)
    return max(read_peak, resident + max(synthesis, after))
