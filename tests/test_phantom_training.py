"""The paired phantom's anatomy and truth, and the trainer's exact resume and distributed run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import free_port
from SyntheticContrastLib import phantom as ph
from SyntheticContrastLib.engine.networks import GeneratorConfig
from SyntheticContrastLib.measurement.rois import parse_rois
from SyntheticContrastLib.engine.training import PairedVolume, TrainConfig, Trainer

SMALL = ph.PhantomSpec(size=256, slices=24, pixel_mm=1.4, slice_mm=5.0)


def structure_core(case, label):
    """A structure without its edge voxels, which the blur mixes with their neighbours on purpose."""
    from scipy import ndimage

    return ndimage.binary_erosion(case.labels == label, np.ones((1, 5, 5), bool))


@pytest.fixture(scope="module")
def case():
    return ph.make_phantom(11)


def test_pair_shares_geometry(case):
    a, b = case.ncct, case.cect
    assert a.array.shape == b.array.shape == (48, 512, 512)
    assert a.spacing == b.spacing and a.origin == b.origin and a.direction == b.direction


def test_contrast_raises_aorta_and_leaves_fat(case):
    core = lambda label: structure_core(case, label)
    aorta = core(ph.AORTA)
    assert case.cect.array[aorta].mean() - case.ncct.array[aorta].mean() > 150
    for fat in (ph.SUBCUT_FAT, ph.MED_FAT):
        diff = case.cect.array[core(fat)].mean() - case.ncct.array[core(fat)].mean()
        assert abs(diff) < 5  # noise SD is 10-25 HU; means over thousands of voxels agree within a few HU
    assert abs(case.ncct.array[aorta].mean() - 40) < 10
    assert abs(case.ncct.array[core(ph.LUNG)].mean() + 850) < 15


def test_noise_is_in_the_ct_range(case):
    sd = case.ncct.array[structure_core(case, ph.SUBCUT_FAT)].std()
    assert 8 < sd < 30


def test_annotations_fall_inside_what_they_name(case):
    lesions = parse_rois(case.annotations)
    assert 1 <= len(lesions) <= 8
    for n, lesion in enumerate(lesions):
        i, j, k = np.round(case.ncct.physical_to_index(lesion.center)).astype(int)
        assert case.labels[k, j, i] == ph.NODE_BASE + n
        assert 5 <= lesion.extra["short_axis_mm"] <= 20
        for name, label in (("dta", ph.AORTA), ("right_fat", ph.SUBCUT_FAT), ("left_fat", ph.SUBCUT_FAT)):
            i, j, k = np.round(case.ncct.physical_to_index(lesion.references[name])).astype(int)
            assert case.labels[k, j, i] == label, name
        assert lesion.references["right_fat"][0] < 0 < lesion.references["left_fat"][0]  # LPS: +x is patient left


def test_seeds_vary_the_anatomy():
    a, b = ph.make_phantom(1, SMALL), ph.make_phantom(2, SMALL)
    assert a.annotations["lesions"] != b.annotations["lesions"]
    assert not np.array_equal(a.labels, b.labels)
    again = ph.make_phantom(1, SMALL)
    np.testing.assert_array_equal(a.ncct.array, again.ncct.array)


def _tiny_cfg(epochs):
    return TrainConfig(generator=GeneratorConfig(ngf=2, levels=3, z_halvings=2, dropout=0.5), discriminator_ndf=2,
                       window_z=8, crop=32, epochs=epochs, samples_per_volume=2, shift_px=5, device="cpu",
                       lr_decay_epoch=1, seed=3, default_stride=4)


def _pairs():
    rng = np.random.default_rng(0)
    base = np.full((10, 48, 48), -1000, np.float32)
    base[:, 8:40, 8:40] = 40
    return [PairedVolume(f"p{n}", base + rng.normal(0, 10, base.shape).astype(np.float32),
                         base + 30 + rng.normal(0, 10, base.shape).astype(np.float32)) for n in range(2)]


def test_resume_continues_exactly(tmp_path):
    pairs = _pairs()
    straight = Trainer(_tiny_cfg(2), tmp_path / "a")
    straight.fit(pairs, pairs[:1])
    first = Trainer(_tiny_cfg(2), tmp_path / "b")
    first.fit(pairs, pairs[:1], stop_after_epoch=1)
    resumed = Trainer(_tiny_cfg(2), tmp_path / "b")
    resumed.load_checkpoint()
    assert resumed.epoch == 1
    resumed.fit(pairs, pairs[:1])
    for key, value in straight.G.state_dict().items():
        assert torch.equal(value, resumed.G.state_dict()[key]), key
    assert resumed.opt_g.param_groups[0]["lr"] == straight.opt_g.param_groups[0]["lr"] == pytest.approx(2e-5)
    log = (tmp_path / "b" / "training_log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,lr,loss_d") and len(log) == 3
    card = json.loads((tmp_path / "b" / "sct-model.json").read_text())
    assert card["training"]["final_epoch"] == 2


def test_torchrun_two_cpu_ranks(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_phantom_training import _pairs, _tiny_cfg
from SyntheticContrastLib.engine.training import Trainer
t = Trainer(_tiny_cfg(1), {str(tmp_path / 'out')!r})
assert t.world == 2
t.fit(_pairs(), _pairs()[:1])
t.close()
open({str(tmp_path)!r} + f"/rank{{t.rank}}.done", "w").close()  # a file per rank: stdout of two ranks interleaves
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", str(script)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "rank0.done").exists() and (tmp_path / "rank1.done").exists()
    assert (tmp_path / "out" / "sct-model.json").exists()


def test_training_windows_reach_every_z_position_the_first_and_the_last():
    """A volume of 20 slices holds windows of 16 starting at slices 0 to 4: all five must be drawn, each the slab it
    names, in input and target alike. An off-by-one would never train on the last slices of any volume."""
    from SyntheticContrastLib.engine.training import _sample

    z, size = 20, 32
    slab = np.broadcast_to(np.arange(z, dtype=np.float32)[:, None, None], (z, size, size)).copy()
    pair = PairedVolume("p", slab, slab + 1000.0)
    cfg = TrainConfig(window_z=16, crop=None, shift_px=0)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        source, target = _sample(pair, cfg, rng)
        start = int(source[0, 0, 0])
        np.testing.assert_array_equal(source[:, 0, 0], np.arange(start, start + 16))
        np.testing.assert_array_equal(target, source + 1000.0)
        starts.add(start)
    assert starts == {0, 1, 2, 3, 4}


def test_the_validation_split_never_divides_a_patient():
    """The split was random per pair: a patient's second study could validate a model trained on the first. Now whole
    patients go to one side, for every seed; pairs without a patient are their own group."""
    from SyntheticContrastLib.engine.training import split_pairs

    slab = np.zeros((2, 4, 4), np.float32)
    groups = ["A", "A", "A", "B", "B", "C", "D", "", ""]
    pairs = [PairedVolume(f"p{n}", slab, slab, group=g) for n, g in enumerate(groups)]
    for seed in range(30):
        train, val = split_pairs(pairs, 0.3, seed)
        assert val and train and len(train) + len(val) == len(pairs)
        sides = {p.group or p.name: (p in val) for p in pairs}
        assert all((p in val) == sides[p.group or p.name] for p in pairs), seed
    assert split_pairs([PairedVolume("a", slab, slab, group="X"), PairedVolume("b", slab, slab, group="X")], 0.5, 0)[1] == []



def _scripted_validation(monkeypatch, maes, input_mae):
    """Validation MAEs by epoch, so the choice of epoch is what is tested (validate itself is tested above)."""
    scripted = iter(maes)
    monkeypatch.setattr(Trainer, "validate", lambda self, pairs: {"val_mae": next(scripted), "input_mae": input_mae})


def test_the_exported_model_is_the_best_epoch_and_its_card_says_which(tmp_path, monkeypatch):
    """The last epoch was exported even when a validation MAE before it was lower. Now best.pt keeps the lowest,
    the exported weights are its own (not the last epoch's, which checkpoint.pt keeps for --resume), and the card
    names the exported epoch."""
    from SyntheticContrastLib.engine.models import load_model

    _scripted_validation(monkeypatch, [50.0, 10.0, 30.0], 20.0)
    pairs = _pairs()
    trainer = Trainer(_tiny_cfg(3), tmp_path / "run")
    trainer.fit(pairs, pairs[:1])
    record = json.loads((tmp_path / "run" / "sct-model.json").read_text())["training"]
    assert (record["exported_epoch"], record["final_epoch"], record["selected_by"]) == (2, 3, "the lowest validation MAE")
    assert record["best"] == {"epoch": 2, "val_mae": 10.0, "input_mae": 20.0} and "warning" not in record
    exported = load_model(tmp_path / "run" / "sct-model.json").generator.state_dict()
    kept = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["G"]
    assert all(torch.equal(exported[k].cpu(), kept[k].cpu()) for k in kept)
    assert not all(torch.equal(exported[k].cpu(), last[k].cpu()) for k in last)


def test_a_model_no_better_than_its_input_on_validation_is_warned_about_in_the_log_and_the_card(tmp_path, monkeypatch):
    """The card reported validation MAE 7.15 HU against 7.12 HU for the input itself, and nothing warned."""
    _scripted_validation(monkeypatch, [7.20, 7.15], 7.12)
    said, pairs = [], _pairs()
    Trainer(_tiny_cfg(2), tmp_path / "run", progress=said.append).fit(pairs, pairs[:1])
    record = json.loads((tmp_path / "run" / "sct-model.json").read_text())["training"]
    assert record["warning"] == ("no better than its input on validation: MAE 7.15 HU against 7.12 HU for the NCCT "
                                 "itself, at its best epoch 2")
    assert "warning: the exported model is no better than its input on validation: MAE 7.15 HU" in said[-1]


def test_validation_looks_at_the_central_slab_unless_asked_for_the_whole_volume(tmp_path):
    """Validation ran whole-volume sliding windows on every validation case each epoch: 164 s for one 512 x 512 x 32
    case on 2 cores. By default it now takes each pair's central slab, two windows deep and two crops wide."""
    import dataclasses

    volume = np.arange(40 * 100 * 90, dtype=np.float32).reshape(40, 100, 90)
    pair = PairedVolume("p", volume, volume + 1)
    trainer = Trainer(_tiny_cfg(1), tmp_path / "a")  # window_z 8, crop 32
    source, target = trainer.validation_view(pair)
    assert source.shape == (16, 64, 64) and np.array_equal(source, volume[12:28, 18:82, 13:77])
    assert np.array_equal(target, source + 1)
    whole = Trainer(dataclasses.replace(_tiny_cfg(1), val_full=True), tmp_path / "b").validation_view(pair)[0]
    assert whole.shape == volume.shape


def test_the_lowpass_loss_sees_an_offset_that_the_voxel_loss_hardly_sees_under_the_targets_noise():
    """The first demo model darkened lung by 5-16 HU in tile-shaped patches, and its voxel L1 barely moved: each
    target carries its own scan's noise. Block means average that noise away and keep the offset."""
    from SyntheticContrastLib.engine.training import lowpass_l1

    gen = torch.Generator().manual_seed(0)
    clean = torch.zeros(1, 1, 16, 64, 64)
    target = clean + 0.03 * torch.randn(clean.shape, generator=gen)  # about 30 HU of noise on the W2000 channel
    l1 = torch.nn.functional.l1_loss
    offset = 0.007  # 7 HU darker on the same channel
    voxel_gain = l1(clean - offset, target) - l1(clean, target)
    lowpass_gain = lowpass_l1(clean - offset, target, (2, 8, 8)) - lowpass_l1(clean, target, (2, 8, 8))
    assert voxel_gain < 0.1 * offset
    assert lowpass_gain > 0.6 * offset
    assert lowpass_l1(clean, clean, (2, 8, 8)) == 0
    # A block larger than the window is clipped to it rather than failing.
    assert lowpass_l1(clean[:, :, :1], clean[:, :, :1] + offset, (2, 8, 8)) == pytest.approx(offset)


def test_the_lowpass_loss_is_trained_on_and_logged_only_when_asked(tmp_path):
    import dataclasses

    pairs = _pairs()
    plain = Trainer(_tiny_cfg(1), tmp_path / "a")
    plain.fit(pairs, pairs[:1])
    assert "loss_g_lowpass" not in plain.history[0]
    weighted = Trainer(dataclasses.replace(_tiny_cfg(1), lowpass_l1_weight=100.0), tmp_path / "b")
    weighted.fit(pairs, pairs[:1])
    assert weighted.history[0]["loss_g_lowpass"] > 0
    changed = [k for k, v in weighted.G.state_dict().items() if not torch.equal(v, plain.G.state_dict()[k])]
    assert changed  # same seed, same batches: only the extra loss can make the weights differ
    config = json.loads((tmp_path / "b" / "sct-model.json").read_text())["training"]["config"]
    assert config["lowpass_l1_weight"] == 100.0 and config["lowpass_block"] == [2, 8, 8]
    assert TrainConfig.from_dict(config).lowpass_block == (2, 8, 8)


def test_fine_tuning_starts_from_the_named_model_and_its_card_says_so(tmp_path):
    """`train --init-from MODEL`: the run begins from that model's weights (checked by sha256), takes its network,
    and the new card names the model it began from. A network flag that contradicts it is refused."""
    from SyntheticContrastLib.cli import main
    from SyntheticContrastLib.engine.models import load_model

    pairs = _pairs()
    Trainer(_tiny_cfg(1), tmp_path / "base").fit(pairs, pairs[:1])
    base_card = tmp_path / "base" / "sct-model.json"
    base = load_model(base_card)
    trainer = Trainer(_tiny_cfg(1), tmp_path / "tuned")
    trainer.start_from(base)
    assert all(torch.equal(v, base.generator.state_dict()[k]) for k, v in trainer.G.state_dict().items())
    import dataclasses

    wider = Trainer(dataclasses.replace(_tiny_cfg(1), generator=GeneratorConfig(ngf=4, levels=3, z_halvings=2)), tmp_path / "w")
    with pytest.raises(Exception, match="fine-tuning needs the same architecture") as err:
        wider.start_from(base)
    assert str(base_card) in str(err.value)

    run = tmp_path / "cli"
    code = main(["train", "--phantom-seeds", "1", "--phantom-slices", "16", "--output", str(run), "--epochs", "1",
                 "--crop", "32", "--samples-per-volume", "1", "--init-from", str(base_card), "--lowpass-l1", "50"])
    assert code == 0
    card = json.loads((run / "sct-model.json").read_text())
    assert card["training"]["config"]["init_from"] == {"model_id": base.card.model_id, "sha256": base.card.sha256}
    assert card["training"]["started_from"] == {"model_id": base.card.model_id, "sha256": base.card.sha256,
                                                "command": None, "started_from": None}  # the base came from the API
    assert card["architecture"]["parameters"] == base.card.architecture["parameters"]
    assert main(["train", "--phantom-seeds", "1", "--phantom-slices", "16", "--output", str(tmp_path / "bad"),
                 "--epochs", "1", "--init-from", str(base_card), "--ngf", "16"]) != 0
    assert main(["train", "--output", str(run), "--resume", "--init-from", str(base_card)]) == 2


def test_a_fine_tuned_phantom_run_is_bundled_with_its_whole_chain_of_runs(tmp_path, capsys):
    """scripts/bundle_demo_model.py: the bundled card says what the demo is for, on which seeds it was trained,
    and how to reproduce it, every run of a fine-tuning chain in order; its weights still verify."""
    import importlib.util

    from SyntheticContrastLib.cli import main
    from SyntheticContrastLib.engine.models import load_model

    run = ["--phantom-seeds", "1-2", "--phantom-slices", "16", "--epochs", "1", "--crop", "32", "--samples-per-volume", "1"]
    network = ["--ngf", "2", "--levels", "3", "--norm", "none", "--residual"]  # the second run takes them from the card
    assert main(["train", *run, *network, "--output", str(tmp_path / "first")]) == 0
    assert main(["train", *run, "--output", str(tmp_path / "second"), "--init-from",
                 str(tmp_path / "first" / "sct-model.json"), "--lowpass-l1", "100"]) == 0
    spec = importlib.util.spec_from_file_location("bundle", Path(__file__).parents[1] / "scripts" / "bundle_demo_model.py")
    bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundle)
    assert bundle.main([str(tmp_path / "second" / "sct-model.json"), "--into", str(tmp_path / "bundled")]) == 0
    card = json.loads((tmp_path / "bundled" / "sct-model.json").read_text())
    assert card["intended_use"].startswith("DEMONSTRATION ONLY - NOT FOR DIAGNOSIS")
    assert "seeds 1-2" in card["training_data"] and "block-mean L1 x100" in card["training"]["deviations_from_paper"]
    first, second = card["training"]["reproduce"]
    assert "--output " + str(tmp_path / "first") in first and "--init-from" in second
    assert load_model(tmp_path / "bundled" / "sct-model.json").card.sha256 == card["sha256"]
    assert main(["models", "show", str(tmp_path / "bundled" / "sct-model.json")]) == 0
    shown = capsys.readouterr().out
    assert "reproduce" in shown and "--init-from" in shown.split("reproduce", 1)[1].splitlines()[1]
