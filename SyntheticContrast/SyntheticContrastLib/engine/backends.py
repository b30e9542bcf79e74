"""Where the generator's forward pass runs: PyTorch (the default), or OpenVINO on the CPU in fp32, which on the CPU
measured runs the paper-size network 1.8x and the demo model 2.6x as fast (benchmarks/cpu_backends.py). The network
is exported to ONNX once per set of weights (cached by sha256) and compiled per window shape."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelError

log = logging.getLogger(__name__)
BACKENDS = ("torch", "openvino")


def onnx_cache_path(model) -> Path:
    """Beside the model card when it is a user's own model in a writable folder, else (the bundled model, which is
    package data, or a read-only site model) in the user's cache folder: ``<model_id>-<sha256[:16]>.onnx``, so
    other weights never reuse a stale export."""
    import os

    from .models import BUNDLED_MODELS_DIR

    name = f"{model.card.model_id}-{model.card.sha256[:16]}.onnx"
    beside = model.card_path.parent
    if beside.resolve() != BUNDLED_MODELS_DIR.resolve() and os.access(beside, os.W_OK):
        return beside / name
    import platformdirs

    return Path(platformdirs.user_cache_dir("SyntheticContrast", appauthor=False)) / "onnx" / name


def export_onnx(model, path: Path, window: tuple[int, int, int]) -> Path:
    """The generator in eval mode as ONNX, with batch and spatial axes left free; written atomically."""
    from ..fileio import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, *window)
    axes = {0: "batch", 2: "z", 3: "y", 4: "x"}
    generator = model.generator.eval().to("cpu")
    import warnings

    with atomic_path(path) as tmp, torch.inference_mode(), warnings.catch_warnings():
        # The tracer warns about Python branches on shapes and about InstanceNorm using each window's own
        # statistics; both are what the network does at inference, so the export is faithful (the test compares).
        warnings.simplefilter("ignore")
        torch.onnx.export(generator, example, str(tmp), input_names=["window"], output_names=["channels"], dynamo=False,
                          opset_version=17, dynamic_axes={"window": axes, "channels": axes})
    return path


class OpenVINOGenerator(torch.nn.Module):
    """Stands where the generator stands in the sliding window: windows in, channels out, on the CPU in fp32.
    It has no dropout to sample, so it serves single passes only."""

    def __init__(self, onnx_path: Path, config, threads: int | None = None):
        super().__init__()
        import openvino as ov

        self.config = config  # the engine asks the generator for its size multiples
        self._core = ov.Core()
        self._model = self._core.read_model(str(onnx_path))
        # OpenVINO would pick bf16 on AVX512-BF16 CPUs: twice as fast again, but 79-106 HU off in the benchmark.
        settings = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            settings["INFERENCE_NUM_THREADS"] = int(threads)
        self._settings = settings
        self._compiled = {}

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        shape = tuple(batch.shape)
        compiled = self._compiled.get(shape)
        if compiled is None:  # static shapes compile to faster kernels than one dynamic model
            model = self._model.clone()
            model.reshape({0: list(shape)})
            compiled = self._compiled[shape] = self._core.compile_model(model, "CPU", self._settings)
        out = compiled([np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())])[0]
        return torch.from_numpy(np.asarray(out))


def predictor(model, backend: str, window: tuple[int, int, int], samples: int = 1) -> torch.nn.Module:
    """The module that runs the windows: the model's generator, or its OpenVINO twin (exported once, then cached)."""
    if backend == "torch":
        return model.generator
    if backend != "openvino":
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        raise ModelError(None, "backend 'openvino' needs the openvino package: pip install 'synthetic-contrast[openvino]'")
    from .inference import dropout_layers

    if samples > 1 and dropout_layers(model.generator):
        raise ValueError("backend 'openvino' runs the network without dropout, so it cannot draw MC-dropout samples; "
                         "use --backend torch with --samples")
    path = onnx_cache_path(model)
    if not path.exists():
        log.info("exporting %s to ONNX at %s (once for these weights)", model.card.model_id, path)
        export_onnx(model, path, window)
    return OpenVINOGenerator(path, model.generator.config, torch.get_num_threads())
