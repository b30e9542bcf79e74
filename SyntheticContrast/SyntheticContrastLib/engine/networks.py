"""The paper's 3D pix2pix networks: a U-Net generator with resize-convolution decoder and a 3D PatchGAN.

Every size is a parameter; ``GeneratorConfig.paper()`` gives the published 512 x 512 x 16, ngf 64 setup.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .cards import GENERATOR_ARCHITECTURE  # noqa: F401  (the name a card gives this network)
DISCRIMINATOR_ARCHITECTURE = "pix2pix3d-patchgan"


@dataclass(frozen=True)
class GeneratorConfig:
    """Shape of the U-Net. ``z_halvings`` levels stride 2 along z too; deeper levels stride (1, 2, 2)."""

    in_channels: int = 3
    out_channels: int = 3
    ngf: int = 64
    max_multiplier: int = 8
    levels: int = 9
    z_halvings: int = 4
    dropout: float = 0.5
    dropout_levels: int = 3
    residual: bool = False  # not in the paper: predict a correction added to the input (for small models)
    # "instance" (the paper's) or "none". InstanceNorm rescales every feature by its own window's statistics, so what
    # a voxel becomes depends on what else its window holds: the first demo model shifted whole tiles of lung by
    # -40 to +50 HU with the window's content. Without it the output depends on the receptive field alone.
    norm: str = "instance"

    @classmethod
    def paper(cls) -> "GeneratorConfig":
        """512 x 512 x 16 input: 9 in-plane halvings reach 1 x 1, z (16) allows 4."""
        return cls()

    NORMS = ("instance", "none")

    def __post_init__(self):
        if self.norm not in self.NORMS:
            raise ValueError(f"generator norm {self.norm!r} is not one of {', '.join(self.NORMS)}")

    def strides(self) -> list[tuple[int, int, int]]:
        return [(2 if i < self.z_halvings else 1, 2, 2) for i in range(self.levels)]

    def channels(self) -> list[int]:
        return [self.ngf * min(2**i, self.max_multiplier) for i in range(self.levels)]

    def size_multiple(self) -> tuple[int, int]:
        """(z, in-plane) sizes the generator accepts must be multiples of these."""
        return 2 ** min(self.z_halvings, self.levels), 2**self.levels

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GeneratorConfig":
        known = cls.__dataclass_fields__.keys()
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown generator parameters: {sorted(unknown)}")
        return cls(**data)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """pix2pix initialisation: conv weights from N(0, std), biases zero."""
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def encoder_block(in_ch: int, out_ch: int, stride, kernel, padding, norm: bool) -> nn.Sequential:
    """Strided conv, LeakyReLU(0.2), InstanceNorm: the unit shared by the generator and discriminator."""
    layers: list[nn.Module] = [nn.Conv3d(in_ch, out_ch, kernel, stride, padding), nn.LeakyReLU(0.2, inplace=True)]
    if norm:
        layers.append(nn.InstanceNorm3d(out_ch))
    return nn.Sequential(*layers)


def _down_kernel(stride: tuple[int, int, int]) -> tuple[int, int, int]:
    # A 4-wide kernel with padding 1 halves a stride-2 axis exactly; a stride-1 axis needs an odd kernel to keep its size.
    return tuple(4 if s == 2 else 3 for s in stride)


class DecoderBlock(nn.Module):
    """Nearest-neighbour upsample + conv (resize-convolution, no checkerboard), ReLU, InstanceNorm, dropout."""

    def __init__(self, in_ch: int, out_ch: int, scale, dropout: float, norm: bool = True):
        super().__init__()
        self.scale = tuple(float(s) for s in scale)
        self.conv = nn.Conv3d(in_ch, out_ch, 3, 1, 1)
        self.act = nn.ReLU(inplace=True)
        self.norm = nn.InstanceNorm3d(out_ch) if norm else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest")
        return self.dropout(self.norm(self.act(self.conv(x))))


class UNetGenerator3D(nn.Module):
    """pix2pix U-Net in 3D: skips concatenate each decoder output with its mirrored encoder output."""

    def __init__(self, config: GeneratorConfig = GeneratorConfig()):
        super().__init__()
        self.config = config
        if config.residual and config.in_channels < config.out_channels:
            raise ValueError("a residual generator needs at least as many input as output channels")
        strides, chans = config.strides(), config.channels()
        self.encoders = nn.ModuleList()
        prev = config.in_channels
        for i, (stride, ch) in enumerate(zip(strides, chans)):
            # pix2pix leaves the first and the innermost block unnormalised (the innermost may be 1 voxel).
            norm = 0 < i < config.levels - 1 and config.norm == "instance"
            self.encoders.append(encoder_block(prev, ch, stride, _down_kernel(stride), 1, norm))
            prev = ch
        self.decoders = nn.ModuleList()
        for depth, i in enumerate(range(config.levels - 1, 0, -1)):
            in_ch = chans[i] if i == config.levels - 1 else 2 * chans[i]
            dropout = config.dropout if depth < config.dropout_levels else 0.0
            self.decoders.append(DecoderBlock(in_ch, chans[i - 1], strides[i], dropout, config.norm == "instance"))
        self.head_scale = tuple(float(s) for s in strides[0])
        head_in = 2 * chans[0] if config.levels > 1 else chans[0]
        self.head = nn.Conv3d(head_in, config.out_channels, 3, 1, 1)
        if config.norm == "instance":
            init_weights(self)
        else:
            # pix2pix's N(0, 0.02) leans on the norms to restore each layer's scale; without them the signal fades
            # by about 4x a layer, and the first such run did not learn in two epochs. He init keeps the scale.
            for m in self.modules():
                if isinstance(m, nn.Conv3d):
                    nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity="leaky_relu")
                    nn.init.zeros_(m.bias)
        if config.residual:
            nn.init.zeros_(self.head.weight)  # start as the identity; training learns the enhancement

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        source = x
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
        skips.pop()
        for dec in self.decoders:
            x = torch.cat([dec(x), skips.pop()], dim=1)
        x = nn.functional.interpolate(x, scale_factor=self.head_scale, mode="nearest")
        if self.config.residual:
            # The encoded input is already in [-1, 1]; the correction keeps the output there too.
            return (source[:, : self.config.out_channels] + self.head(x)).clamp(-1.0, 1.0)
        return torch.tanh(self.head(x))


@dataclass(frozen=True)
class DiscriminatorConfig:
    """3D PatchGAN. The defaults see 70 x 70 in-plane and 4 slices per output, as in the paper."""

    in_channels: int = 6
    ndf: int = 64
    layers: int = 3
    z_kernel: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


class PatchDiscriminator3D(nn.Module):
    """Scores overlapping patches of (input, target) pairs as real or synthetic (logits)."""

    def __init__(self, config: DiscriminatorConfig = DiscriminatorConfig()):
        super().__init__()
        self.config = config
        # Only the first layer spans z (z_kernel slices); later layers are 1 slice deep, so the
        # z receptive field stays exactly z_kernel while in-plane follows pix2pix's 70 px.
        specs = [((config.z_kernel, 4, 4), (1, 2, 2), (1, 1, 1), False)]
        for _ in range(1, config.layers):
            specs.append(((1, 4, 4), (1, 2, 2), (0, 1, 1), True))
        specs.append(((1, 4, 4), (1, 1, 1), (0, 1, 1), True))
        blocks, prev = [], config.in_channels
        for n, (kernel, stride, pad, norm) in enumerate(specs):
            ch = config.ndf * min(2**n, 8)
            blocks.append(encoder_block(prev, ch, stride, kernel, pad, norm))
            prev = ch
        self.body = nn.Sequential(*blocks)
        self.head = nn.Conv3d(prev, 1, (1, 4, 4), 1, (0, 1, 1))
        self._specs = [(k, s) for k, s, _, _ in specs] + [((1, 4, 4), (1, 1, 1))]
        init_weights(self)

    def receptive_field(self) -> tuple[int, int, int]:
        """Voxels (z, y, x) that one output logit depends on."""
        rf, jump = [1, 1, 1], [1, 1, 1]
        for kernel, stride in self._specs:
            for a in range(3):
                rf[a] += (kernel[a] - 1) * jump[a]
                jump[a] *= stride[a]
        return tuple(rf)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(torch.cat([source, target], dim=1)))
