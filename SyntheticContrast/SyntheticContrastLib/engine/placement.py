"""Where the sliding window's data lives: the fp32 blend accumulator on the compute device when it fits (else on
the host), and each input slab copied to the device once, from pinned memory, one slab ahead of the network."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MIB = 1024 ** 2


def device_free_bytes(device: torch.device) -> int | None:
    """Free memory on an accelerator, or None where torch cannot tell (CPU, MPS)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return None


def device_facts(device: torch.device):
    """What the planner needs of ``device``: its name, its free memory (the host's available memory for the CPU) and
    this process's resident and peak bytes."""
    from . import host_memory
    from .devices import describe_device
    from .planner import DeviceFacts

    free = host_memory.available_bytes() if device.type == "cpu" else device_free_bytes(device)
    index = f":{device.index if device.index is not None else torch.cuda.current_device()}" if device.type == "cuda" else ""
    return DeviceFacts(f"{device.type}{index}", describe_device(device), free, host_memory.resident_bytes(),
                       host_memory.peak_resident_bytes())


@dataclass(frozen=True)
class AccumulatorPlan:
    """Where the blend accumulator lives (the planner chose it), how large it is, and the free memory it was chosen
    against."""

    device: torch.device
    nbytes: int
    free_bytes: int | None = None

    def describe(self, compute: torch.device) -> str:
        where = f"{self.nbytes / MIB:.0f} MiB fp32 blend accumulator on {self.device}"
        if self.free_bytes is None:
            return where
        if self.device.type != compute.type:
            return (f"{where}: it would not fit beside the network in the {self.free_bytes / MIB:.0f} MiB free on {compute}, "
                    "so each batch is copied to the host")
        return f"{where} ({self.free_bytes / MIB:.0f} MiB were free)"


class SlabFeeder:
    """Gives the network each batch's encoded slab on the compute device. On CUDA the raw HU slab goes through a
    pinned staging buffer with a non-blocking copy on a side stream, started one batch ahead so the copy overlaps
    the forward pass; on the CPU the slab is a view of the input, not a copy."""

    def __init__(self, hu: np.ndarray, device: torch.device, encoding, pads, air: float, channels_last: bool):
        self.hu, self.device, self.encoding = hu, device, encoding
        self.pads, self.air, self.channels_last = pads, air, channels_last
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._staging: list[torch.Tensor] = []
        self._copied: list[object] = [None, None]  # the event of each staging buffer's last copy
        self._ahead: tuple[tuple[int, int], torch.Tensor, object] | None = None  # (z range, device slab, its copy's event)
        self._turn = 0

    def prefetch(self, z0: int, z1: int) -> None:
        """Start copying slices z0:z1 to the device (CUDA only; elsewhere there is nothing to overlap)."""
        if self._stream is None or (self._ahead is not None and self._ahead[0] == (z0, z1)):
            return
        turn, staging = self._staging_buffer(z1 - z0)
        staging.copy_(torch.from_numpy(np.ascontiguousarray(self.hu[z0:z1])))
        with torch.cuda.stream(self._stream):
            raw = staging.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._stream)
        self._copied[turn] = done
        self._ahead = ((z0, z1), raw, done)

    def encoded(self, z0: int, z1: int) -> torch.Tensor:
        """Slices z0:z1 encoded, padded in-plane with air: (C, S, Y, X) on the device."""
        if self._stream is not None:
            self.prefetch(z0, z1)  # a no-op when this range was prefetched
            _, raw, done = self._ahead
            self._ahead = None
            torch.cuda.current_stream(self.device).wait_event(done)
            raw.record_stream(torch.cuda.current_stream(self.device))  # allocated on the side stream, used here
        else:
            raw = torch.from_numpy(np.ascontiguousarray(self.hu[z0:z1])).to(self.device, torch.float32)
        (pyb, pya), (pxb, pxa) = self.pads
        if pyb + pya + pxb + pxa:
            raw = F.pad(raw, (pxb, pxa, pyb, pya), value=self.air)
        return self.encoding.encode(raw, channels_last=self.channels_last)

    def _staging_buffer(self, slices: int) -> tuple[int, torch.Tensor]:
        """Two pinned buffers used in turn, so one may still be copying while the next batch is staged; a buffer
        is written again only after its previous copy has finished."""
        if not self._staging or self._staging[0].shape[0] < slices:
            shape = (slices, *self.hu.shape[1:])
            self._staging = [torch.empty(shape, dtype=torch.float32, pin_memory=True) for _ in range(2)]
            self._copied = [None, None]
        self._turn ^= 1
        if self._copied[self._turn] is not None:
            self._copied[self._turn].synchronize()
        return self._turn, self._staging[self._turn][:slices]
