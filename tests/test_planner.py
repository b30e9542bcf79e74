"""The planner (engine/planner.py): its arithmetic against the real network, the choices it makes from it, and the
line every entry point shows before the first window."""

from __future__ import annotations

import json
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from SyntheticContrastLib.engine import planner
from SyntheticContrastLib.engine.bundled import DEFAULT_MODEL_CARD
from SyntheticContrastLib.engine.cards import read_card
from SyntheticContrastLib.engine.networks import GeneratorConfig, UNetGenerator3D

GIB, MIB = 2 ** 30, 2 ** 20
DEMO = read_card(DEFAULT_MODEL_CARD)
H100 = dict(device="cuda:0", name="cuda:0 (NVIDIA H100)")


class LiveTensors(TorchDispatchMode):
    """Counts the bytes of every tensor storage an operator creates, until Python frees it: the peak of tensors alive
    at once, which is what the planner claims to compute."""

    def __init__(self, inputs):
        super().__init__()
        self.live, self.now, self.peak = {}, 0, 0
        for tensor in inputs:
            self._add(tensor)

    def _add(self, tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.live or storage.nbytes() == 0:  # a view or an in-place result: no new memory
            return
        self.live[key] = storage.nbytes()
        self.now += storage.nbytes()
        self.peak = max(self.peak, self.now)
        weakref.finalize(tensor, self._free, key)

    def _free(self, key):
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                self._add(tensor)
        return out


def _live_peak(config: dict, window, batch: int, dropout: bool = False) -> int:
    generator = UNetGenerator3D(GeneratorConfig(**config)).eval()
    if dropout:
        for module in generator.modules():
            if isinstance(module, torch.nn.Dropout):
                module.train(True)
    x = torch.zeros(batch, config.get("in_channels", 3), *window)
    with torch.inference_mode():
        with LiveTensors([x]) as mode:
            generator(x)
    return mode.peak


@pytest.mark.parametrize("config, window, dropout", [
    (DEMO.architecture["parameters"], (16, 128, 128), False),  # the bundled model: residual, 6 levels
    ({"ngf": 4, "levels": 9}, (16, 512, 512), False),  # the paper's depth and window, a narrow width
    ({"ngf": 8, "levels": 4, "z_halvings": 2, "dropout": 0.5, "dropout_levels": 2}, (8, 64, 96), True),  # MC dropout
])
@pytest.mark.parametrize("batch", [1, 3])
def test_activation_peak_is_the_peak_of_tensors_alive_in_a_real_forward_pass(config, window, dropout, batch):
    measured = _live_peak(config, window, batch, dropout)
    assert planner.activation_peak_bytes(config, window, batch, dropout=dropout) == pytest.approx(measured, rel=0.02)


@pytest.mark.parametrize("config", [DEMO.architecture["parameters"], GeneratorConfig.paper().to_dict(),
                                    {"ngf": 16, "levels": 5, "z_halvings": 2, "in_channels": 1, "out_channels": 1}])
def test_parameter_count_is_the_built_networks(config):
    built = UNetGenerator3D(GeneratorConfig(**config))
    assert planner.generator_parameters(config) == sum(p.numel() for p in built.parameters())


def _gpu(free_gib: float, **kwargs) -> planner.Plan:
    facts = planner.DeviceFacts(free_bytes=int(free_gib * GIB), resident_bytes=2 * GIB, **H100)
    return planner.plan_card(DEMO, (300, 512, 512), facts, **kwargs)


def test_auto_batch_is_the_largest_that_fits_and_an_asked_one_is_kept_and_judged():
    roomy = _gpu(79)
    assert roomy.batch_size == 8 and roomy.accumulator == "device" and roomy.fits
    one = _gpu(79, batch_size=1)
    need = {b: one.accumulator_bytes + planner.plan_card(DEMO, (300, 512, 512), planner.DeviceFacts(**H100, free_bytes=GIB),
                                                         batch_size=b).network_bytes for b in (1, 2, 4, 8)}
    assert need[1] < need[2] < need[4] < need[8]
    between = (need[4] + need[8]) / 2 / planner.USABLE_SHARE  # 4 fits, 8 does not
    assert _gpu(between / GIB).batch_size == 4
    forced = _gpu(between / GIB, batch_size=8)
    assert forced.batch_size == 8 and forced.fits is False and forced.line().startswith("does not fit: ")


def test_the_accumulator_goes_to_the_host_when_it_fits_alone_but_not_beside_the_network():
    plan = _gpu(1)
    alone = plan.accumulator_bytes / planner.USABLE_SHARE
    beside = _gpu((alone + plan.network_bytes / planner.USABLE_SHARE + MIB) / GIB)
    assert beside.accumulator == "device"
    squeezed = _gpu((alone + MIB) / GIB)  # room for the accumulator alone
    assert squeezed.accumulator == "host" and squeezed.batch_size >= 1
    assert "kept on the host" in squeezed.notes[0] and "accumulator on the host" in squeezed.line()


def test_cpu_keeps_one_window_per_batch_and_mps_is_not_guessed():
    cpu = planner.plan_card(DEMO, (48, 512, 512), planner.DeviceFacts(free_bytes=8 * GIB))
    assert cpu.batch_size == 1 and cpu.accumulator == "host" and cpu.fits
    assert cpu.line().startswith("fits: ") and "available on cpu" in cpu.line() and "accumulator" not in cpu.line()
    mps = planner.plan_card(DEMO, (48, 512, 512), planner.DeviceFacts(device="mps", name="mps"))
    assert mps.batch_size == 1 and mps.fits is None and mps.line().startswith("needs: ")


def test_the_line_gives_memory_device_batch_accumulator_and_time():
    plan = _gpu(79)
    plan.seconds = 40.2
    assert plan.line() == (f"fits: {plan.peak_bytes / GIB:.1f} GiB of 79.0 GiB free on cuda:0 (NVIDIA H100), batch 8, "
                           f"{plan.windows} windows, accumulator on the GPU, about 40 s")
    assert json.loads(json.dumps(plan.as_dict()))["line"] == plan.line()


def test_before_reading_the_plan_counts_the_read_and_in_the_run_it_starts_from_what_the_process_holds():
    voxels = 300 * 512 * 512
    before = planner.plan_card(DEMO, (300, 512, 512), planner.DeviceFacts(free_bytes=64 * GIB))
    assert before.host_peak_bytes >= planner.FRESH_PROCESS_BYTES + planner.READ_BYTES_PER_VOXEL * voxels
    held = planner.DeviceFacts(free_bytes=64 * GIB, resident_bytes=5 * GIB, peak_so_far_bytes=6 * GIB)
    inside = planner.plan_card(DEMO, (300, 512, 512), held, volume_in_memory=True)
    assert inside.host_peak_bytes >= 5 * GIB + 4 * voxels + planner.AFTER_BYTES_PER_VOXEL * voxels
    peaked = planner.DeviceFacts(free_bytes=64 * GIB, resident_bytes=GIB, peak_so_far_bytes=40 * GIB)
    assert planner.plan_card(DEMO, (300, 512, 512), peaked, volume_in_memory=True).host_peak_bytes == 40 * GIB


def test_an_architecture_the_planner_does_not_know_is_refused_by_name():
    from dataclasses import replace

    other = replace(DEMO, architecture={"name": "someone-elses-net", "parameters": {}})
    with pytest.raises(ValueError, match="cannot plan architecture 'someone-elses-net'"):
        planner.plan_card(other, (48, 512, 512), planner.DeviceFacts())
