"""The one place a device name ("auto", "cpu", "cuda", "cuda:N", "mps") becomes a torch device: every verb, batch
rank, node worker and the Slicer child resolve it here, so "auto" means the same everywhere."""

from __future__ import annotations


DEVICE_HELP = "auto (CUDA, then MPS, then CPU), cuda, cuda:N, mps or cpu"


def _torch():
    import torch  # here, not at the top: the CLI's --help reads DEVICE_HELP without paying for torch

    return torch


def _mps_available() -> bool:
    torch = _torch()
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: "str | torch.device" = "auto") -> "torch.device":
    """'auto' picks CUDA (under torchrun, this rank's LOCAL_RANK GPU), then Apple MPS, then CPU; a named device must
    exist. A name torch cannot parse is a ValueError that names it and the accepted forms, not torch's own
    RuntimeError."""
    import os

    torch = _torch()
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {name!r} is not a device: give {DEVICE_HELP}") from exc
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r} is not supported: give {DEVICE_HELP}")
    if device.type == "cuda":
        if device.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # 'cuda' under torchrun: this rank's GPU
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} was asked for but only {torch.cuda.device_count()} CUDA GPU(s) exist")
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"device {name!r} was asked for but Apple MPS is not available")
    return device


def describe_device(device: "torch.device") -> str:
    """'cuda:0 (NVIDIA H200)' or 'cpu': what a log line or status table shows for a resolved device."""
    torch = _torch()
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)
