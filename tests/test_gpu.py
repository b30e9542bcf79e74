"""The engine's CUDA paths, which no CPU can run: the device accumulator, one copy per slab, out-of-memory fallbacks,
bf16 under --precision auto, and cancel. Marked ``gpu`` and skipped without a CUDA device, with the reason; run by
benchmarks/gpu_check.py on the first GPU a session is lent (``pytest -m gpu tests/test_gpu.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import chest_like, tiny_generator
from SyntheticContrastLib.engine import placement, planner
from SyntheticContrastLib.engine.encoding import WindowEncoding
from SyntheticContrastLib.engine.inference import SynthesisOptions, synthesize_array, synthesize_array_with_uncertainty
from SyntheticContrastLib.engine.networks import GeneratorConfig
from SyntheticContrastLib.errors import SynthesisCancelled

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU: torch.cuda.is_available() is False here")]

ENC = WindowEncoding()
WITH_DROPOUT = GeneratorConfig(ngf=4, levels=3, z_halvings=2, dropout=0.5, dropout_levels=2)


def _run(hu, *, samples=1, tile=None, batch=1, precision="fp32", generator=None, cancel=None):
    options = SynthesisOptions(device="cuda", stride=4, batch_size=batch, precision=precision, samples=samples, seed=3)
    return synthesize_array_with_uncertainty(hu, generator or tiny_generator(config=WITH_DROPOUT), ENC, 16, options,
                                             inplane_multiple=8, tile=tile, cancel=cancel)


@pytest.mark.parametrize("tile", [None, 32])
def test_the_device_accumulator_equals_the_host_one_within_0_01_hu(monkeypatch, tile):
    hu = chest_like((40, 64, 64))
    mean_dev, sd_dev, report_dev = _run(hu, samples=3, tile=tile)
    monkeypatch.setattr(planner, "USABLE_SHARE", 0.0)  # nothing fits: the accumulator stays on the host
    mean_host, sd_host, report_host = _run(hu, samples=3, tile=tile)
    assert "on cuda" in report_dev.memory and "on cpu" in report_host.memory
    np.testing.assert_allclose(mean_dev, mean_host, atol=0.01)
    np.testing.assert_allclose(sd_dev, sd_host, atol=0.01)


def test_each_input_slab_is_copied_to_the_device_once(monkeypatch):
    copies = []
    real = placement.SlabFeeder._staging_buffer

    def counting(self, slices):
        copies.append(slices)
        return real(self, slices)

    monkeypatch.setattr(placement.SlabFeeder, "_staging_buffer", counting)
    hu = chest_like((64, 32, 32))
    _, report = synthesize_array(hu, tiny_generator(), ENC, 16, SynthesisOptions(device="cuda", stride=4, batch_size=2),
                                 inplane_multiple=8)
    batches = -(-report.windows // 2)
    assert len(copies) == batches, (len(copies), batches)


def _peak_of(hu, batch):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    _run(hu, batch=batch)
    return torch.cuda.max_memory_allocated() - start


@pytest.mark.parametrize("allowed, batch, note", [
    (lambda one, four: (one + four) / 2, 4, "batch halved"),  # the accumulator fits, a batch of 4 does not
    (lambda one, four: one * 0.3, 2, "continued on the CPU"),  # not even one window fits: the partial sums go along
])
def test_out_of_memory_falls_back_and_the_result_is_unchanged(allowed, batch, note):
    hu = chest_like((48, 128, 128))
    generator = tiny_generator(config=GeneratorConfig(ngf=16, levels=3, z_halvings=2, dropout=0.0))
    reference, _, _ = _run(hu, batch=1, generator=generator)
    extra = allowed(_peak_of(hu, 1), _peak_of(hu, 4))
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_allocated() + extra) / total)
    try:
        result, _, report = _run(hu, batch=batch, generator=generator)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert any(note in n for n in report.notes), report.notes
    np.testing.assert_allclose(result, reference, atol=0.01)


def test_precision_auto_is_bf16_on_a_bf16_gpu_and_the_report_says_so():
    if not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name(0)} has no bf16")
    _, _, report = _run(chest_like((20, 32, 32)), precision="auto")
    assert report.precision == "bf16"


def test_cancel_between_batches_leaves_no_device_memory_behind():
    torch.cuda.empty_cache()
    start = torch.cuda.memory_allocated()
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(SynthesisCancelled):
        _run(chest_like((64, 64, 64)), cancel=cancel)
    torch.cuda.empty_cache()
    assert torch.cuda.memory_allocated() == start
