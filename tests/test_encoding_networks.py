"""Window encoding round trip and the shape rules of the paper's networks."""

import numpy as np
import pytest
import torch

from SyntheticContrastLib.engine.encoding import WindowEncoding
from SyntheticContrastLib.engine.networks import DiscriminatorConfig, GeneratorConfig, PatchDiscriminator3D, UNetGenerator3D


def test_encoding_round_trip_within_half_hu():
    enc = WindowEncoding()
    hu = torch.linspace(-1000, 1000, 20001).reshape(1, 1, -1)
    encoded = enc.encode(hu)
    assert encoded.shape == (3, 1, 1, 20001)
    assert encoded.min() >= -1 and encoded.max() <= 1
    back = enc.decode(encoded[0])
    assert torch.max(torch.abs(back - hu)) < 0.5


def test_encoding_channels_follow_each_window():
    enc = WindowEncoding()
    encoded = enc.encode(torch.tensor([[[-1000.0, 50.0, 300.0, 700.0]]]))[:, 0, 0]
    # W500/L50 spans -200..300, so 50 HU sits at its centre and 300 HU at its top.
    assert encoded[2].tolist() == pytest.approx([-1.0, 0.0, 1.0, 1.0], abs=1e-6)  # float32 rounding
    # W1000/L200 spans -300..700.
    assert encoded[1].tolist() == pytest.approx([-1.0, -0.3, 0.2, 1.0])
    assert enc.output_range_hu == (-1000.0, 1000.0)


def test_encoding_windows_are_parameters():
    enc = WindowEncoding(windows=((400, 40),), output_channel=0)
    assert enc.channels == 1
    assert WindowEncoding.from_dict(enc.to_dict()) == enc
    with pytest.raises(ValueError):
        WindowEncoding(windows=((0, 40),))


def test_paper_generator_configuration():
    cfg = GeneratorConfig.paper()
    assert cfg.ngf == 64 and cfg.levels == 9
    # z (16) halves 4 times; the remaining 5 levels stride in-plane only.
    assert cfg.strides() == [(2, 2, 2)] * 4 + [(1, 2, 2)] * 5
    assert cfg.channels() == [64, 128, 256, 512, 512, 512, 512, 512, 512]
    assert cfg.size_multiple() == (16, 512)


def test_generator_at_paper_input_size_keeps_shape_and_range():
    g = UNetGenerator3D(GeneratorConfig(ngf=1, max_multiplier=2)).eval()
    with torch.no_grad():
        y = g(torch.randn(1, 3, 16, 512, 512))
    assert y.shape == (1, 3, 16, 512, 512)
    assert y.abs().max() <= 1.0


def test_decoder_uses_resize_convolution_and_init_is_pix2pix():
    g = UNetGenerator3D(GeneratorConfig(ngf=8, levels=4, z_halvings=2))
    assert not any(isinstance(m, torch.nn.ConvTranspose3d) for m in g.modules())
    weights = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, torch.nn.Conv3d)])
    assert abs(weights.std().item() - 0.02) < 0.002
    assert abs(weights.mean().item()) < 0.002


def test_patchgan_sees_70x70x4():
    d = PatchDiscriminator3D(DiscriminatorConfig())
    assert d.receptive_field() == (4, 70, 70)
    # Empirically too: one logit's gradient reaches exactly 4 x 70 x 70 input voxels. InstanceNorm's
    # statistics couple every voxel, so the convolutional field is measured with the norms removed.
    d = PatchDiscriminator3D(DiscriminatorConfig(ndf=2)).eval()
    for block in d.body:
        for i, m in enumerate(block):
            if isinstance(m, torch.nn.InstanceNorm3d):
                block[i] = torch.nn.Identity()
    x = torch.randn(1, 3, 12, 160, 160, requires_grad=True)
    out = d(x, torch.zeros_like(x))
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2, out.shape[4] // 2].backward()
    nz = torch.nonzero(x.grad[0].abs().sum(0))
    extent = (nz.max(0).values - nz.min(0).values + 1).tolist()
    assert extent == [4, 70, 70]


def test_encoding_round_trips_through_its_dict_including_air():
    from SyntheticContrastLib.engine.encoding import WindowEncoding

    encoding = WindowEncoding(windows=((1500.0, -100.0), (400.0, 40.0)), output_channel=1, air_hu=-1024.0)
    assert WindowEncoding.from_dict(encoding.to_dict()) == encoding
    assert WindowEncoding.from_dict({"windows": [{"width": 2000, "level": 0}]}).air_hu == -1000.0  # older cards


def test_decode_uses_the_output_channels_own_window():
    from SyntheticContrastLib.engine.encoding import WindowEncoding

    encoding = WindowEncoding(windows=((2000.0, 0.0), (500.0, 50.0)), output_channel=1)
    assert encoding.decode(np.float32(-1.0)) == pytest.approx(-200.0)  # W500/L50 spans -200..300 HU
    assert encoding.decode(np.float32(1.0)) == pytest.approx(300.0)


@pytest.mark.parametrize("norm", ["instance", "none"])
def test_without_instance_norm_a_voxel_depends_on_its_receptive_field_alone_not_on_its_tile(norm):
    """The first demo model shifted whole tiles of lung by -40 to +50 HU with what else each tile held: InstanceNorm
    rescales every feature by its window's own statistics. With norm 'none' the centre of a 64-px tile is the same
    voxel for voxel as when it sits inside a 128-px tile; with InstanceNorm it is not."""
    torch.manual_seed(0)
    gen = UNetGenerator3D(GeneratorConfig(ngf=4, levels=3, z_halvings=2, dropout=0.0, norm=norm)).eval()
    for p in gen.parameters():  # biases too, so that the test is not passed by zero biases
        p.data.normal_(0, 0.3)
    big = torch.rand(1, 3, 8, 128, 128) * 2 - 1
    big[..., 80:, 80:] = 1.0  # content far from the small tile, which InstanceNorm's statistics see
    with torch.no_grad():
        whole = gen(big)[..., 32 + 24:32 + 40, 32 + 24:32 + 40]
        tile = gen(big[..., 32:96, 32:96])[..., 24:40, 24:40]
    if norm == "none":
        torch.testing.assert_close(tile, whole, atol=1e-5, rtol=1e-5)
    else:
        assert (tile - whole).abs().max() > 1e-2


def test_the_norm_is_part_of_the_card_and_an_unknown_one_is_refused():
    config = GeneratorConfig(ngf=2, levels=3, z_halvings=2, norm="none")
    assert GeneratorConfig.from_dict(config.to_dict()) == config
    assert GeneratorConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "norm"}).norm == "instance"
    # InstanceNorm holds no weights: both variants have the same tensors, so the card, not the file, says which.
    a = UNetGenerator3D(config).state_dict()
    b = UNetGenerator3D(GeneratorConfig(ngf=2, levels=3, z_halvings=2)).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    with pytest.raises(ValueError, match="norm 'batch' is not one of instance, none"):
        GeneratorConfig(norm="batch")
