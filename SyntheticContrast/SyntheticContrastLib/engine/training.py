"""pix2pix training of the 3D generator on paired NCCT/CECT volumes (the paper's recipe by default).

Runs on one device or under ``torchrun`` (DistributedDataParallel; NCCL on GPUs, gloo on CPUs). All
randomness of an epoch derives from (seed, epoch, rank), so ``resume`` continues exactly.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .encoding import PAPER_WINDOWS, WindowEncoding
from ..errors import InputError
from ..fileio import atomic_path, atomic_write_csv
from .devices import resolve_device
from .inference import SynthesisOptions, autocast_dtype, synthesize_array
from ..measurement.metrics import mae, psnr
from .models import ModelCard, save_model
from ..io.orientation import AxialLayout
from .networks import DiscriminatorConfig, GeneratorConfig, PatchDiscriminator3D, UNetGenerator3D
from ..io.reading import read_volume
from ..io.volume import Volume

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Paper defaults: GAN + 100 x L1, real label 0.9, Adam 2e-4 / 0.5, lr x0.1 after epoch 10, 20 epochs, batch 1."""

    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator_ndf: int = 64
    windows: tuple = PAPER_WINDOWS
    window_z: int = 16
    crop: int | None = None  # in-plane training crop (None: whole slices, as the paper)
    epochs: int = 20
    lr: float = 2e-4
    beta1: float = 0.5
    lr_decay_epoch: int = 10
    lr_decay_factor: float = 0.1
    l1_weight: float = 100.0
    # Not the paper's: L1 between block means of output and target. Each target carries its own scan's noise, which
    # the voxel L1 is dominated by, so a tile-wide offset of a few HU in lung costs it almost nothing (the first demo
    # model darkened lung by 5-16 HU in tile-shaped patches); block means average the noise away and keep the offset.
    lowpass_l1_weight: float = 0.0
    lowpass_block: tuple = (2, 8, 8)  # (z, y, x) voxels: 5 x 5.6 x 5.6 mm at the phantoms' spacing
    # The model a fine-tuning run began from ({"model_id", "sha256"}); None: random weights, as the paper.
    init_from: dict | None = None
    real_label: float = 0.9
    shift_px: int = 50
    samples_per_volume: int = 8
    batch_size: int = 1
    precision: str = "fp32"
    val_fraction: float = 0.1
    val_every: int = 1  # validate every this many epochs (and always after the last)
    val_max_cases: int = 0  # validate on at most this many pairs (0: all)
    # Validation by default on each pair's central slab (2 windows deep, 2 crops wide where a crop is set): a full
    # 512 x 512 x 32 volume took 164 s per epoch on 2 cores. val_full keeps the whole volume.
    val_full: bool = False
    sample_every: int = 5
    seed: int = 0
    device: str = "auto"
    model_id: str = "sct-model"
    # Stride 10 of 16 matched stride 8 on the held-out phantoms (0.95 vs 0.92 HU MAE against the paper's stride 1)
    # with 30 instead of 37 windows for 300 slices, 9.5x fewer than stride 1 (benchmarks/sliding_window.py).
    default_stride: int = 10
    intended_use: str = "research"
    training_data: str = "unspecified"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["generator"] = self.generator.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["generator"] = GeneratorConfig.from_dict(d["generator"])
        d["windows"] = tuple(tuple(w) for w in d["windows"])
        if "lowpass_block" in d:
            d["lowpass_block"] = tuple(d["lowpass_block"])
        return cls(**d)


@dataclass
class PairedVolume:
    name: str
    source: np.ndarray  # HU (z, y, x)
    target: np.ndarray
    spacing: tuple = (1.0, 1.0, 1.0)  # (x, y, z) mm of the source, for the card's input statistics
    group: str = ""  # the patient (else the study) it belongs to: the validation split never divides one
    registration: dict | None = None  # with --register: how well the target was aligned to the source


def _read_ref(ref) -> Volume:
    """A pair member: a path, or (path, SeriesInstanceUID) when its folder holds several series."""
    path, series = (ref, None) if isinstance(ref, (str, Path)) else ref
    return read_volume(path, series_uid=series or None)


def register_rigid(fixed_path, moving_path, quality: dict | None = None):
    """Rigidly align ``moving`` (e.g. CECT) to ``fixed`` (NCCT) with Mattes MI; returns it resampled on fixed's grid.
    ``quality`` receives the metric before and after (lower is better), the optimizer's iterations and stop reason,
    and the translation and rotation found."""
    import SimpleITK as sitk

    fixed = _read_ref(fixed_path).to_sitk()
    moving = _read_ref(moving_path).to_sitk()
    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(50)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.05, seed=1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(2.0, 1e-3, 200)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SetInitialTransform(init, inPlace=False)
    fixed32, moving32 = sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32)
    before = reg.MetricEvaluate(fixed32, moving32)
    transform = reg.Execute(fixed32, moving32)
    if quality is not None:
        reg.SetInitialTransform(transform, inPlace=False)  # the same metric, at the transform found
        euler = sitk.Euler3DTransform(sitk.CompositeTransform(transform).GetBackTransform()) \
            if transform.GetName() == "CompositeTransform" else sitk.Euler3DTransform(transform)
        quality.update({"metric": "Mattes mutual information (lower is better)", "before": float(before),
                        "after": float(reg.MetricEvaluate(fixed32, moving32)), "iterations": int(reg.GetOptimizerIteration()),
                        "stop": reg.GetOptimizerStopConditionDescription(),
                        "translation_mm": [round(float(v), 2) for v in euler.GetTranslation()],
                        "rotation_deg": [round(float(np.degrees(a)), 2) for a in (euler.GetAngleX(), euler.GetAngleY(), euler.GetAngleZ())]})
    resampled = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, -1000.0)
    return sitk.GetArrayFromImage(resampled).astype(np.float32)


def load_pairs(pairs: Sequence[tuple], register: bool = False) -> list[PairedVolume]:
    """Read (input, target) or (input, target, group) references; targets must share the input grid unless
    ``register`` aligns them."""
    out = []
    for src, tgt, *group in pairs:
        s = _read_ref(src)
        quality = {} if register else None
        if register:
            t_arr = register_rigid(src, tgt, quality)
        else:
            t = _read_ref(tgt)
            if t.array.shape != s.array.shape or not np.allclose(t.spacing, s.spacing, atol=1e-3) or not np.allclose(t.origin, s.origin, atol=1e-2):
                raise InputError(tgt, f"grid differs from its input {src} (shape {t.array.shape} vs {s.array.shape}); align the pair or use --register")
            t_arr = t.array
        layout = AxialLayout.of(s.direction)  # trained in the voxel order that inference uses
        name = Path(src if isinstance(src, (str, Path)) else src[0]).name
        out.append(PairedVolume(name, layout.to_axial(s.array), layout.to_axial(t_arr), layout.spacing(s.spacing),
                                group=group[0] if group else "", registration=quality))
    return out


def read_pair_list(path: str | Path) -> list[tuple]:
    """(input, target, group) from a CSV with columns input,target (and input_series,target_series where a folder
    holds several series, and patient_id and study_uid, as 'synthetic-contrast pairs' writes), or from a folder with
    <case>_ncct.* / <case>_cect.* files. The group is the patient, else the study, else the case itself."""
    path = Path(path)
    if path.is_dir():
        pairs = []
        for src in sorted(path.glob("*_ncct.*")):
            tgt = src.with_name(src.name.replace("_ncct.", "_cect."))
            if not tgt.exists():
                raise InputError(src, f"has no paired target {tgt.name}")
            pairs.append((str(src), str(tgt), src.name.split("_ncct.")[0]))
        if not pairs:
            raise InputError(path, "holds no <case>_ncct.* / <case>_cect.* pairs")
        return pairs
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"input", "target"} <= set(rows[0]):
        raise InputError(path, "CSV needs the columns 'input' and 'target'")
    base = path.parent
    return [((str(base / r["input"]), r.get("input_series") or None), (str(base / r["target"]), r.get("target_series") or None),
             (r.get("patient_id") or "").strip() or (r.get("study_uid") or "").strip() or r["input"]) for r in rows]


def _sample(pair: PairedVolume, cfg: TrainConfig, rng: np.random.Generator):
    """One training window: same z-range, crop and in-plane shift for input and target (air fills the gap)."""
    z, h, w = pair.source.shape
    z0 = int(rng.integers(0, max(1, z - cfg.window_z + 1)))
    zs = slice(z0, z0 + cfg.window_z)
    crop = cfg.crop or h
    y0 = x0 = 0
    if crop < h or crop < w:
        # Centre crops on a random body voxel of the window's middle slice, so few crops are empty air.
        body = np.argwhere(pair.source[z0 + min(cfg.window_z, z) // 2] > -500)
        cy, cx = body[rng.integers(len(body))] if len(body) else (h // 2, w // 2)
        y0 = int(np.clip(cy - crop // 2, 0, h - crop)) if crop < h else 0
        x0 = int(np.clip(cx - crop // 2, 0, w - crop)) if crop < w else 0
    dy, dx = (int(v) for v in rng.integers(-cfg.shift_px, cfg.shift_px + 1, size=2)) if cfg.shift_px else (0, 0)
    out = []
    for arr in (pair.source, pair.target):
        win = np.full((cfg.window_z, crop, crop), -1000.0, np.float32)
        sy0, sx0 = y0 - dy, x0 - dx  # window pixel (i, j) shows source pixel (sy0 + i, sx0 + j)
        ys, xs = max(sy0, 0), max(sx0, 0)
        ye, xe = min(sy0 + crop, h), min(sx0 + crop, w)
        if ye > ys and xe > xs:
            win[:, ys - sy0 : ye - sy0, xs - sx0 : xe - sx0] = arr[zs, ys:ye, xs:xe]
        out.append(win)
    return out


class Trainer:
    """Owns the networks, optimisers and schedules; ``fit`` runs epochs with checkpoints and validation."""

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, progress: Callable[[str], None] | None = None):
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self._owns_group = self.distributed and not dist.is_initialized()
        if self._owns_group:
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.device = resolve_device(cfg.device)
        if self.distributed and self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.amp = autocast_dtype(cfg.precision, self.device)
        self.encoding = WindowEncoding(cfg.windows)
        torch.manual_seed(cfg.seed)
        self.G = UNetGenerator3D(cfg.generator).to(self.device)
        disc_cfg = DiscriminatorConfig(in_channels=cfg.generator.in_channels + cfg.generator.out_channels, ndf=cfg.discriminator_ndf)
        self.D = PatchDiscriminator3D(disc_cfg).to(self.device)
        betas = (cfg.beta1, 0.999)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr, betas=betas)
        # One decay after lr_decay_epoch (paper: x0.1 after epoch 10), not a decay every that many epochs.
        step = lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, [cfg.lr_decay_epoch], cfg.lr_decay_factor)
        self.sched_g, self.sched_d = step(self.opt_g), step(self.opt_d)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp is torch.float16)
        self.G_train, self.D_train = self.G, self.D
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.G_train = nn.parallel.DistributedDataParallel(self.G, device_ids=ids)
            self.D_train = nn.parallel.DistributedDataParallel(self.D, device_ids=ids)
        self.epoch = 0
        self.history: list[dict] = []
        self.best: dict | None = None  # the epoch with the lowest validation MAE, whose weights best.pt holds
        self.run_record: dict = {}  # what the caller knows of the run (command, data, split), for the card
        self.say = progress or (lambda msg: log.info(msg))

    def close(self) -> None:
        """Tear down the process group this trainer created; exiting with a live gloo group can abort."""
        if self._owns_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
            self._owns_group = False

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    def _keep_if_best(self, row: dict) -> None:
        if "val_mae" not in row or (self.best is not None and row["val_mae"] >= self.best["val_mae"]):
            return
        self.best = {"epoch": row["epoch"], "val_mae": row["val_mae"], "input_mae": row["input_mae"]}
        with atomic_path(self.best_path) as tmp:
            torch.save(self.G.state_dict(), tmp)

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        state = {
            "epoch": self.epoch, "config": json.dumps(self.cfg.to_dict()), "history": json.dumps(self.history),
            "best": json.dumps(self.best),
            "G": self.G.state_dict(), "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
            "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(),
        }
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self, path: str | Path | None = None) -> None:
        path = Path(path or self.checkpoint_path)
        if not path.exists():
            raise InputError(path, "no checkpoint to resume from")
        # weights_only=True: tensors and plain containers only, so a checkpoint cannot run code.
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch = int(state["epoch"])
        self.history = json.loads(state["history"])
        self.best = json.loads(state.get("best", "null"))  # checkpoints from before best.pt have none

    # -- training ----------------------------------------------------------------------------
    def _batches(self, pairs: list[PairedVolume], rng):
        order = np.arange(len(pairs) * self.cfg.samples_per_volume) % len(pairs)
        rng.shuffle(order)
        order = order[self.rank :: self.world]  # each rank its own shard of the epoch's samples
        bs = self.cfg.batch_size
        for i in range(0, len(order) - bs + 1, bs):
            samples = [_sample(pairs[j], self.cfg, rng) for j in order[i : i + bs]]
            src = torch.from_numpy(np.stack([s for s, _ in samples])).to(self.device)
            tgt = torch.from_numpy(np.stack([t for _, t in samples])).to(self.device)
            yield self.encoding.encode(src), self.encoding.encode(tgt)

    #: Progress lines per epoch: a long epoch says where it is, a short one is not flooded.
    PROGRESS_LINES = 5

    def _epoch_steps(self, epoch: int, train: list[PairedVolume], rng, t0: float) -> list[dict]:
        """One epoch's steps, with a progress line (rank 0) at each fifth of it: an epoch of the paper's recipe runs
        for hours, and said nothing until it ended."""
        total = len(range(0, len(train) * self.cfg.samples_per_volume // self.world - self.cfg.batch_size + 1, self.cfg.batch_size))
        every, losses = max(1, -(-total // self.PROGRESS_LINES)), []
        for x, y in self._batches(train, rng):
            losses.append(self._step(x, y))
            done = len(losses)
            if self.rank == 0 and (done % every == 0 or done == total) and done < total:
                elapsed = time.perf_counter() - t0
                self.say(f"epoch {epoch}: step {done}/{total}, {elapsed:.0f} s, about {elapsed / done * (total - done):.0f} s to go "
                         f"(loss_g_l1 {np.mean([l['loss_g_l1'] for l in losses]):.4g})")
        return losses

    def _step(self, x, y) -> dict:
        bce = nn.functional.binary_cross_entropy_with_logits
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            fake = self.G_train(x)
        # Discriminator: real pairs toward 0.9 (one-sided label smoothing), synthetic pairs toward 0.
        self.opt_d.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            logits = self.D_train(torch.cat([x, x]), torch.cat([y, fake.detach()]))
            real, synth = logits.float().chunk(2)
            loss_d = 0.5 * (bce(real, torch.full_like(real, self.cfg.real_label)) + bce(synth, torch.zeros_like(synth)))
        self.scaler.scale(loss_d).backward()
        self.scaler.step(self.opt_d)
        # Generator: fool D (through the unwrapped D, whose gradients are not wanted) plus weighted L1.
        self.opt_g.zero_grad(set_to_none=True)
        for p in self.D.parameters():
            p.requires_grad_(False)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            pred = self.D(x, fake).float()
            loss_gan = bce(pred, torch.ones_like(pred))
            loss_l1 = nn.functional.l1_loss(fake.float(), y)
            loss_g = loss_gan + self.cfg.l1_weight * loss_l1
            if self.cfg.lowpass_l1_weight:
                loss_lowpass = lowpass_l1(fake.float(), y, self.cfg.lowpass_block)
                loss_g = loss_g + self.cfg.lowpass_l1_weight * loss_lowpass
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.opt_g)
        self.scaler.update()
        for p in self.D.parameters():
            p.requires_grad_(True)
        losses = {"loss_d": loss_d.item(), "loss_g_gan": loss_gan.item(), "loss_g_l1": loss_l1.item()}
        if self.cfg.lowpass_l1_weight:
            losses["loss_g_lowpass"] = loss_lowpass.item()
        return losses

    def start_from(self, model) -> None:
        """Begin from a trained model's generator (fine-tuning) instead of random weights; its card must describe
        this run's network and input encoding, or the weights would mean something else."""
        card = model.card
        theirs = (card.generator_config().to_dict(), [list(w) for w in card.encoding.windows])
        ours = (self.cfg.generator.to_dict(), [list(w) for w in self.cfg.windows])
        if theirs != ours:
            raise InputError(model.card_path, f"its network or input windows differ from this run's ({theirs} against "
                                              f"{ours}); fine-tuning needs the same architecture")
        self.G.load_state_dict(model.generator.state_dict())

    def validation_view(self, pair: PairedVolume) -> tuple[np.ndarray, np.ndarray]:
        """The part of a pair validation looks at: the whole volume with val_full, else its central slab (two
        windows deep; two crops wide where the training crops), the same every epoch."""
        source, target = pair.source, pair.target
        if self.cfg.val_full:
            return source, target
        depth = min(source.shape[0], 2 * self.cfg.window_z)
        z0 = (source.shape[0] - depth) // 2
        box = [slice(z0, z0 + depth)]
        for n in source.shape[1:]:
            width = min(n, 2 * self.cfg.crop) if self.cfg.crop else n
            box.append(slice((n - width) // 2, (n - width) // 2 + width))
        return source[tuple(box)], target[tuple(box)]

    def validate(self, pairs: list[PairedVolume]) -> dict:
        if not pairs:
            return {}
        self.G.eval()
        values = {"val_mae": [], "val_psnr": [], "input_mae": [], "input_psnr": []}
        preds = []
        for p in pairs[:self.cfg.val_max_cases or None]:
            source, target = self.validation_view(p)
            pred, _ = synthesize_array(
                source, self.G, self.encoding, self.cfg.window_z,
                SynthesisOptions(stride=self.cfg.default_stride, blend="gaussian", device=str(self.device),
                                 channels_last="off"),  # the weights being trained keep their layout
                inplane_multiple=self.cfg.generator.size_multiple()[1], tile=self.cfg.crop,
            )
            preds.append(pred)
            values["val_mae"].append(mae(pred, target))
            values["val_psnr"].append(psnr(pred, target))
            values["input_mae"].append(mae(source, target))
            values["input_psnr"].append(psnr(source, target))
        self.G.train()
        self._last_val_pred = preds[0]
        return {k: float(np.mean(v)) for k, v in values.items()}

    def fit(self, train: list[PairedVolume], val: list[PairedVolume], stop_after_epoch: int | None = None) -> None:
        cfg = self.cfg
        self.G.train()
        self.D.train()
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        while self.epoch < cfg.epochs:
            epoch = self.epoch + 1
            t0 = time.perf_counter()
            torch.manual_seed(cfg.seed * 100003 + epoch * 101 + self.rank)  # dropout noise of this epoch
            rng = np.random.default_rng([cfg.seed, epoch, self.rank])
            losses = self._epoch_steps(epoch, train, rng, t0)
            self.sched_g.step()
            self.sched_d.step()
            row = {"epoch": epoch, "lr": self.opt_g.param_groups[0]["lr"]}
            row.update({k: float(np.mean([l[k] for l in losses])) for k in losses[0]} if losses else {})
            if self.rank == 0 and (epoch % max(1, cfg.val_every) == 0 or epoch == cfg.epochs):
                row.update(self.validate(val))
                self._keep_if_best({"epoch": epoch, **row})
            row["seconds"] = round(time.perf_counter() - t0, 2)
            self.epoch = epoch
            self.history.append(row)
            if self.rank == 0:
                self._log(row, val)
            self.save_checkpoint()
            if self.distributed:
                dist.barrier()
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                return
        if self.rank == 0:
            self.export_model(train)

    def _log(self, row: dict, val) -> None:
        self.say(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        atomic_write_csv(self.out_dir / "training_log.csv", self.history)
        from ..measurement.figures import side_by_side, training_curves

        training_curves(self.history, self.out_dir / "curves.png")
        if "val_mae" in row and self.cfg.sample_every and row["epoch"] % self.cfg.sample_every == 0:
            source, target = self.validation_view(val[0])
            k = source.shape[0] // 2
            side_by_side(
                [source[k], self._last_val_pred[k], target[k]],
                ["NCCT (input)", "sCECT (SYNTHETIC)", "CECT (target)"],
                self.out_dir / f"samples_epoch{row['epoch']:03d}.png",
                f"{val[0].name}, epoch {row['epoch']}, slice {k}", pixel_mm=float(val[0].spacing[0]),
            )

    def export_model(self, train: list[PairedVolume] | None = None) -> Path:
        """Weights and card; the card keeps what the training inputs looked like, for out-of-distribution checks, and
        what their targets' enhancement was, for the output's plausibility checks."""
        from ..trust import ood, plausibility

        cfg = self.cfg
        import platform

        import numpy

        record = {"config": cfg.to_dict(), "final_epoch": self.epoch, "history": self.history[-3:],
                  "exported_epoch": self.epoch, "selected_by": "the last epoch (no validation pairs)", "best": self.best,
                  **self.run_record, "device": str(self.device), "ranks": self.world,
                  "wall_s": round(sum(row.get("seconds", 0.0) for row in self.history), 1),
                  "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}}
        if self.best is not None:
            record["selected_by"] = "the lowest validation MAE"
            if self.best["epoch"] != self.epoch:  # the last epoch stays in checkpoint.pt, for --resume
                self.G.load_state_dict(torch.load(self.best_path, map_location=self.device, weights_only=True))
                record["exported_epoch"] = self.best["epoch"]
            if self.best["val_mae"] >= self.best["input_mae"]:
                record["warning"] = (f"no better than its input on validation: MAE {self.best['val_mae']:.2f} HU against "
                                     f"{self.best['input_mae']:.2f} HU for the NCCT itself, at its best epoch {self.best['epoch']}")
                self.say(f"warning: the exported model is {record['warning']}")
        card = ModelCard(
            model_id=cfg.model_id, architecture={}, encoding=self.encoding,
            window={"z": cfg.window_z, "y": cfg.crop or 512, "x": cfg.crop or 512},
            default_stride=cfg.default_stride, intended_use=cfg.intended_use, training_data=cfg.training_data,
            weights_file="", training=record,
            input_statistics=ood.training_statistics([Volume(p.source, p.spacing, (0.0, 0.0, 0.0)) for p in train]) if train else {},
            enhancement_statistics=plausibility.training_statistics([(p.source, p.target, p.spacing) for p in train],
                                                                   self.encoding.output_range_hu) if train else {},
        )
        return save_model(self.G, card, self.out_dir / f"{cfg.model_id}.json")


def lowpass_l1(fake: torch.Tensor, target: torch.Tensor, block: tuple) -> torch.Tensor:
    """Mean absolute difference of the two volumes' block means (average pooling, blocks clipped to the volume)."""
    block = tuple(min(b, n) for b, n in zip(block, fake.shape[2:]))
    pool = nn.functional.avg_pool3d
    return nn.functional.l1_loss(pool(fake, block), pool(target, block))


def split_pairs(pairs: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic split by patient (each pair's group; its name where it has none): whole patients go to
    validation until it holds ``val_fraction`` of the pairs, at least one patient when there are two or more."""
    groups = list(dict.fromkeys(p.group or p.name for p in pairs))
    if val_fraction <= 0 or len(groups) < 2:
        return list(pairs), []
    order = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    wanted, chosen, held = max(1, int(round(val_fraction * len(pairs)))), set(), 0
    for group in order[:-1]:  # one patient at least stays for training
        if held >= wanted:
            break
        chosen.add(group)
        held += sum(1 for p in pairs if (p.group or p.name) == group)
    return [p for p in pairs if (p.group or p.name) not in chosen], [p for p in pairs if (p.group or p.name) in chosen]


def split_record(train: list, val: list, seed: int, source: str) -> dict:
    """What split.json keeps and the log prints: each side's pairs and patients."""
    def side(pairs):
        return {"pairs": [p.name for p in pairs], "patients": sorted({p.group or p.name for p in pairs})}

    return {"by": "patient_id, else study_uid, else case", "seed": seed, "source": source,
            "train": side(train), "validation": side(val)}
