"""Sliding-window synthesis: the paper's stride-1 scheme, blending against MONAI, padding, batching, cancel."""

import numpy as np
import pytest
import torch

from conftest import chest_like, tiny_generator
from SyntheticContrastLib.engine.encoding import WindowEncoding
from SyntheticContrastLib.errors import SynthesisCancelled
from SyntheticContrastLib.engine.geometry import blend_weights, window_starts
from SyntheticContrastLib.engine.inference import SynthesisOptions, paper_reference, synthesize_array

ENC = WindowEncoding()


def run(hu, progress=None, cancel=None, **opts):
    options = SynthesisOptions(**{"device": "cpu", **opts})
    return synthesize_array(hu, tiny_generator(), ENC, 16, options, inplane_multiple=8, progress=progress, cancel=cancel)


def test_window_starts_cover_every_slice_and_end_flush():
    for n in (16, 17, 40, 301):
        for stride in (1, 3, 8, 16):
            starts = window_starts(n, 16, stride)
            covered = np.zeros(n, bool)
            for s in starts:
                covered[s : s + 16] = True
            assert covered.all() and starts[-1] == n - 16 and starts[0] == 0
    assert len(window_starts(300, 16, 1)) == 285  # the paper's N - 15 windows
    with pytest.raises(ValueError):
        window_starts(40, 16, 17)


def test_stride1_mean_reproduces_the_papers_loop():
    hu = chest_like((22, 32, 32))
    ours, report = run(hu, stride=1, blend="mean")
    reference = paper_reference(hu, tiny_generator(), ENC, 16)
    assert report.windows == 7
    np.testing.assert_allclose(ours, reference, atol=1e-3)  # HU; float32 accumulation vs float64
    assert np.abs(ours - hu).max() > 1  # the network really changed the image


def test_batching_does_not_change_the_result():
    hu = chest_like((30, 32, 32))
    one, _ = run(hu, stride=3, batch_size=1)
    many, report = run(hu, stride=3, batch_size=4)
    assert report.batch_size == 4
    np.testing.assert_allclose(one, many, atol=0.01)  # HU: float32 convolutions sum in another order per batch size


def test_gaussian_blend_matches_an_independent_reference():
    hu = chest_like((27, 32, 32))
    ours, _ = run(hu, stride=5, blend="gaussian")
    w = blend_weights("gaussian", 16)
    num = np.zeros(hu.shape)
    den = np.zeros(hu.shape[0])
    g = tiny_generator()
    with torch.no_grad():
        for s in window_starts(27, 16, 5):
            x = ENC.encode(torch.from_numpy(hu[s : s + 16].copy()))[None]
            num[s : s + 16] += w[:, None, None] * g(x)[0, 0].double().numpy()
            den[s : s + 16] += w
    np.testing.assert_allclose(ours, ENC.decode(num / den[:, None, None]), atol=1e-3)
    assert w[0] < w[7] and w[7] == pytest.approx(w[8])  # symmetric, peaked in the middle


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_blending_matches_monai_on_the_same_windows(mode):
    monai_inferers = pytest.importorskip("monai.inferers")
    hu = chest_like((35, 32, 32))
    g = tiny_generator()
    encoded = ENC.encode(torch.from_numpy(hu))[None]

    def predictor(x):
        return g(x)[:, :1]

    # sigma in-plane very wide: MONAI's Gaussian then has no zero weights in-plane, where it would fall
    # back to a constant; along z it uses its own kernel, which we pass to our engine explicitly.
    kwargs = dict(roi_size=(16, 32, 32), sw_batch_size=2, predictor=predictor, overlap=(0.5, 0, 0), mode=mode,
                  sigma_scale=(0.125, 100.0, 100.0), padding_mode="constant")
    with torch.no_grad():
        theirs = monai_inferers.sliding_window_inference(encoded, **kwargs)[0, 0].numpy()
    if mode == "gaussian":
        from monai.data.utils import compute_importance_map

        imp = compute_importance_map((16, 32, 32), mode="gaussian", sigma_scale=(0.125, 100.0, 100.0))
        weights = imp[:, 16, 16].numpy()
    else:
        weights = "mean"
    ours, _ = run(hu, stride=8, blend=weights, batch_size=2)
    np.testing.assert_allclose(ENC.decode(theirs), ours, atol=1e-5 * 1000)  # 1e-5 of the [-1, 1] range in HU
    np.testing.assert_allclose(theirs, (ours + 1000) / 1000 - 1, atol=1e-5)


def test_volume_shorter_than_the_window_is_padded_not_zeroed():
    hu = chest_like((9, 32, 32))
    out, report = run(hu, stride=4)
    assert out.shape == hu.shape and report.padded_slices == 7
    assert np.isfinite(out).all()
    assert any("fewer than the 16-slice window" in n for n in report.notes)
    # Equals running the edge-padded volume and cropping: nothing was silently zero-filled.
    padded = np.pad(hu, ((3, 4), (0, 0), (0, 0)), mode="edge")
    full, _ = run(padded, stride=4)
    np.testing.assert_allclose(out, full[3:12], atol=1e-4)


def pointwise_reference(hu, generator):
    """What a voxel-wise network gives each voxel, computed on the whole volume at once: no windows, no padding."""
    with torch.no_grad():
        encoded = ENC.encode(torch.from_numpy(np.ascontiguousarray(hu)))
        return ENC.decode(generator(encoded[None])[0, ENC.output_channel].numpy())


def test_inplane_size_not_a_multiple_is_padded_with_air_and_cropped():
    hu = chest_like((16, 30, 27))
    out, report = run(hu, stride=8)
    assert out.shape == hu.shape
    assert any("padded with air" in n for n in report.notes)
    # Voxel by voxel: the air padding is cropped away exactly and nothing of it bleeds into the slice.
    g = Pointwise()
    out, _ = synthesize_array(hu, g, ENC, 16, SynthesisOptions(stride=8, device="cpu"), inplane_multiple=8)
    np.testing.assert_allclose(out, pointwise_reference(hu, g), atol=1e-3)


def test_progress_and_cancellation():
    hu = chest_like((40, 32, 32))
    seen = []
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(SynthesisCancelled, match="3 of 25"):
        run(hu, stride=1, progress=lambda d, t: seen.append((d, t)), cancel=cancel)
    assert seen == [(1, 25), (2, 25), (3, 25)]


def test_options_the_device_cannot_honour_are_refused():
    hu = chest_like((16, 32, 32))
    with pytest.raises(ValueError, match="fp16"):
        run(hu, precision="fp16")
    with pytest.raises(ValueError, match="blend"):
        run(hu, blend="median")
    out, report = run(hu, precision="bf16")
    assert report.precision == "bf16" and np.isfinite(out).all()


class Pointwise(torch.nn.Module):
    """A 1x1x1 conv + tanh: its output at a voxel depends only on that voxel, so tiling must not matter."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv3d(3, 3, 1)

    def forward(self, x):
        return torch.tanh(self.conv(x))


def test_inplane_tiling_is_seamless_for_a_pointwise_network():
    hu = chest_like((20, 70, 90))
    g, opts = Pointwise(), SynthesisOptions(stride=4, device="cpu")
    whole, _ = synthesize_array(hu, g, ENC, 16, opts, inplane_multiple=8)
    tiled, report = synthesize_array(hu, g, ENC, 16, opts, inplane_multiple=8, tile=32)
    assert any("tiled 4x5" in n for n in report.notes)  # step 16 at 50 % overlap: y 0,16,32,38; x 0,16,32,48,58
    np.testing.assert_allclose(tiled, whole, atol=1e-3)


def test_volume_smaller_than_the_model_window_is_padded_up_to_it():
    hu = chest_like((16, 20, 20))
    seen = []

    class Recorder(Pointwise):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return super().forward(x)

    out, report = synthesize_array(hu, Recorder(), ENC, 16, SynthesisOptions(device="cpu"), inplane_multiple=8, tile=32)
    assert out.shape == hu.shape and seen == [(32, 32)]
    np.testing.assert_allclose(out, pointwise_reference(hu, Recorder()), atol=1e-3)


def test_residual_generator_starts_as_the_identity():
    from SyntheticContrastLib.engine.networks import GeneratorConfig, UNetGenerator3D

    g = UNetGenerator3D(GeneratorConfig(ngf=2, levels=3, z_halvings=2, dropout=0, residual=True)).eval()
    x = ENC.encode(torch.from_numpy(chest_like((16, 32, 32))))[None]
    with torch.no_grad():
        y = g(x)
    assert y.shape == x.shape
    assert torch.equal(y, x)


class RunsOutOfMemory(Pointwise):
    """Raises CUDA's out-of-memory error for batches above ``limit``, or once on the first call."""

    def __init__(self, limit=None, first_call_only=False):
        super().__init__()
        self.limit, self.first_call_only, self.calls = limit, first_call_only, 0

    def forward(self, x):
        self.calls += 1
        if (self.limit is not None and x.shape[0] > self.limit) or (self.first_call_only and self.calls == 1):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().forward(x)


def test_out_of_memory_halves_the_batch_and_says_so():
    hu = chest_like((40, 32, 32))
    reference, _ = synthesize_array(hu, Pointwise(), ENC, 16, SynthesisOptions(stride=2, device="cpu"), inplane_multiple=8)
    out, report = synthesize_array(hu, RunsOutOfMemory(limit=2), ENC, 16, SynthesisOptions(stride=2, batch_size=8, device="cpu"), inplane_multiple=8)
    assert report.batch_size == 2
    assert [n for n in report.notes if "out of memory" in n] == ["CUDA out of memory: batch halved to 4 windows", "CUDA out of memory: batch halved to 2 windows"]
    np.testing.assert_allclose(out, reference, atol=1e-3)  # nothing lost or counted twice (float32 batching noise)


def test_out_of_memory_with_one_window_falls_back_to_the_cpu():
    hu = chest_like((20, 32, 32))
    out, report = synthesize_array(hu, RunsOutOfMemory(first_call_only=True), ENC, 16, SynthesisOptions(stride=4, device="cpu"), inplane_multiple=8)
    assert report.device == "cpu" and any("continued on the CPU" in n for n in report.notes)
    assert np.isfinite(out).all()


def test_gaussian_weights_follow_their_formula():
    """exp(-(k - c)^2 / (2 sigma^2)) with c the window centre and sigma = 0.125 x window, scaled to a maximum of 1."""
    for window in (16, 9):
        k = np.arange(window)
        expected = np.exp(-((k - (window - 1) / 2) ** 2) / (2 * (0.125 * window) ** 2))
        np.testing.assert_allclose(blend_weights("gaussian", window), expected / expected.max(), rtol=1e-6)


def test_the_accumulators_description_says_where_it_is_and_why():
    """Where it goes is the planner's choice (test_planner.py); this is what the report then says of it."""
    from SyntheticContrastLib.engine.placement import AccumulatorPlan

    cuda, cpu, nbytes = torch.device("cuda"), torch.device("cpu"), 300 * 2**20
    assert AccumulatorPlan(cuda, nbytes, 1200 * 2**20).describe(cuda) == "300 MiB fp32 blend accumulator on cuda (1200 MiB were free)"
    host = AccumulatorPlan(cpu, nbytes, 310 * 2**20).describe(cuda)
    assert "would not fit beside the network in the 310 MiB free on cuda" in host and "copied to the host" in host
    assert AccumulatorPlan(cpu, nbytes).describe(cpu) == "300 MiB fp32 blend accumulator on cpu"


def test_report_says_where_the_accumulator_was_and_what_precision_auto_chose():
    hu = chest_like((20, 32, 32))
    fp32, _ = run(hu, stride=4)
    out, report = run(hu, stride=4, precision="auto")
    assert report.precision == "fp32 (auto)"  # no GPU here: auto never picks bf16 on the CPU
    assert report.memory == f"{20 * 32 * 32 * 4 / 2**20:.0f} MiB fp32 blend accumulator on cpu"
    assert report.peak_device_mib is None
    np.testing.assert_array_equal(out, fp32)


def test_each_slab_is_encoded_once_whatever_the_overlap():
    hu = chest_like((30, 32, 32))
    calls = []

    class Counting(WindowEncoding):
        def encode(self, hu, channels_last=False):
            calls.append(tuple(hu.shape))
            return super().encode(hu, channels_last)

    _, report = synthesize_array(hu, tiny_generator(), Counting(), 16, SynthesisOptions(stride=2, batch_size=4, device="cpu"),
                                 inplane_multiple=8)
    assert report.windows == 8 and len(calls) == 2  # two batches of four windows: one slab each
    assert calls == [(22, 32, 32), (22, 32, 32)]  # windows 0-6 (slices 0-21), then 8-14 (8-29)


def test_channels_last_changes_the_layout_not_the_values():
    from SyntheticContrastLib.engine.inference import _use_channels_last

    hu = chest_like((20, 40, 40))
    encoded = ENC.encode(torch.from_numpy(hu), channels_last=True)
    assert torch.equal(encoded, ENC.encode(torch.from_numpy(hu)))
    assert encoded[None].is_contiguous(memory_format=torch.channels_last_3d)
    on, _ = run(hu, stride=4, channels_last="on")
    off, _ = run(hu, stride=4, channels_last="off")
    np.testing.assert_allclose(on, off, atol=0.05)  # HU: the same sums in another order
    cpu = torch.device("cpu")
    assert _use_channels_last("auto", cpu, tiny_generator())
    assert not _use_channels_last("auto", torch.device("cuda"), tiny_generator())  # not measured on a GPU yet
    assert not _use_channels_last("on", cpu, torch.nn.Identity())  # a stand-in without weights takes plain arrays
    with pytest.raises(ValueError, match="channels_last"):
        _use_channels_last("yes", cpu, tiny_generator())
