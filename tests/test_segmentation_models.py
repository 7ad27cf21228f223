"""Segmentation models: ConvAutoencoder, FCN-32s/16s/8s (bilinear_kernel), UNet."""

import pytest
import torch
import torch.nn.functional as F

from course_lib.data.synthetic import SyntheticShapes
from course_lib.models.conv_autoencoder import ConvAutoencoder, pad_to_multiple
from course_lib.models.fcn import FCN, VARIANTS, bilinear_kernel, bilinear_upsampler
from course_lib.models.unet import UNet

SKIP_KEYS = ("upscore2.", "score_pool4.", "upscore_pool4.", "score_pool3.")


def models(k=4):
    return {"autoencoder": ConvAutoencoder(k, width=4, depth=3),
            **{f"fcn{v}": FCN(k, v, width=4) for v in VARIANTS},
            "unet": UNet(k, depth=3, width=4)}


def num_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["autoencoder", "fcn32s", "fcn16s", "fcn8s", "unet"])
@pytest.mark.parametrize("size", [(64, 64), (32, 48), (37, 50), (1, 1), (70, 33)])
def test_logits_have_the_input_size(name, size):
    model = models()[name].eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size))
    assert out.shape == (2, 4, *size) and out.dtype == torch.float32


@pytest.mark.parametrize("name", ["autoencoder", "fcn8s", "unet"])
def test_cropping_rule_padding_does_not_move_pixels(name):
    """Odd sizes: the output of a padded input, cropped, is the output of the input itself."""
    model = models()[name].eval()
    x = torch.rand(1, 3, 37, 50)
    with torch.no_grad():
        direct = model(x)
        padded = model(pad_to_multiple(x, model.stride))[..., :37, :50]
    torch.testing.assert_close(direct, padded)


def test_pad_to_multiple():
    x = torch.rand(2, 3, 17, 32)
    y = pad_to_multiple(x, 16)
    assert y.shape == (2, 3, 32, 32)
    assert torch.equal(y[..., :17, :], x) and y[..., 17:, :].abs().sum() == 0
    assert pad_to_multiple(x[..., :16, :], 16).shape == (2, 3, 16, 32)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_bilinear_kernel_equals_interpolate_in_the_interior(factor):
    """Oracle: a stride-s transposed conv with the bilinear kernel is F.interpolate bilinear."""
    x = torch.rand(2, 3, 9, 11, dtype=torch.float64)
    up = F.conv_transpose2d(x, bilinear_kernel(3, 2 * factor).double(), stride=factor,
                            padding=factor // 2)
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert up.shape == ref.shape == (2, 3, 9 * factor, 11 * factor)
    inner = (..., slice(factor, -factor), slice(factor, -factor))
    torch.testing.assert_close(up[inner], ref[inner])


def test_bilinear_kernel_by_hand_and_per_channel():
    w = bilinear_kernel(2, 4)
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25])  # the lecture's 1D tent for x2
    assert w.shape == (2, 2, 4, 4)
    torch.testing.assert_close(w[0, 0], taps[:, None] * taps[None, :])
    assert w[0, 1].abs().sum() == 0 and w[1, 0].abs().sum() == 0  # channels stay apart
    odd = bilinear_kernel(1, 3)[0, 0]  # factor 2, centre 1: [0.5, 1, 0.5]
    torch.testing.assert_close(odd, torch.tensor([0.5, 1.0, 0.5])[:, None]
                               * torch.tensor([0.5, 1.0, 0.5])[None, :])
    up = bilinear_upsampler(3, 4)
    assert up(torch.rand(1, 3, 5, 6)).shape == (1, 3, 20, 24)


def test_fcn_variants_differ_only_in_the_skips():
    states = {}
    for v in VARIANTS:
        torch.manual_seed(0)
        states[v] = FCN(4, v, width=4).state_dict()
    shared = {k for k in states["32s"] if not k.startswith("upscore.")}
    for v in ("16s", "8s"):
        extra = set(states[v]) - set(states["32s"])
        assert extra and all(k.startswith(SKIP_KEYS) for k in extra), extra
        assert shared <= set(states[v])
        for key in shared:  # same layers, same initial weights for the same seed
            assert torch.equal(states[v][key], states["32s"][key]), key
    assert {k.split(".")[0] for k in set(states["16s"]) - set(states["32s"])} == {
        "upscore2", "score_pool4"}
    assert {k.split(".")[0] for k in set(states["8s"]) - set(states["16s"])} == {
        "upscore_pool4", "score_pool3"}
    # the last upsampling: x32, x16, x8
    assert [states[v]["upscore.weight"].shape[-1] for v in VARIANTS] == [64, 32, 16]
    # skip scores start at zero (the paper), so FCN-16s starts from FCN-32s' coarse scores
    assert states["8s"]["score_pool3.weight"].abs().sum() == 0


def test_unet_has_depth_skips_with_the_documented_shapes():
    for depth in (1, 2, 4):
        model = UNet(3, depth=depth, width=4)
        bottleneck, skips = model.encode(torch.rand(2, 3, 32, 32))
        assert len(skips) == depth == len(model.up)
        for i, skip in enumerate(skips):
            assert skip.shape == (2, 4 * 2**i, 32 // 2**i, 32 // 2**i)
        assert bottleneck.shape == (2, 4 * 2**depth, 32 // 2**depth, 32 // 2**depth)
        # each expanding level concatenates: its convs see twice the channels of the skip
        for level in model.up:
            assert level.convs[0][0].in_channels == 2 * level.up.out_channels


def test_parameter_counts():
    counts = {name: num_params(m) for name, m in models().items()}
    assert counts == {"autoencoder": 14496, "fcn32s": 125712, "fcn16s": 76948, "fcn8s": 64984,
                      "unet": 30556}

    # U-Net counted by hand: conv 3x3 (no bias) + BatchNorm = 9 i o + 2 o
    def double(i, o):
        return 9 * i * o + 2 * o + 9 * o * o + 2 * o

    down = double(3, 4) + double(4, 8) + double(8, 16) + double(16, 32)  # + the bottleneck
    up = sum(4 * 2 * o * o + o + double(2 * o, o) for o in (16, 8, 4))  # 2x2 up-conv + convs
    assert counts["unet"] == down + up + 4 * 4 + 4  # + the 1x1 classifier
    # FCN-32s > FCN-16s > FCN-8s: the last upsampling's K x K x 2s x 2s kernel shrinks
    # K = 4: x32 kernel - x16 kernel - upscore2 (4x4) - score_pool4 (1x1 from 32 channels)
    kk = 4 * 4
    diff = kk * (64 * 64 - 32 * 32) - kk * 4 * 4 - (32 * 4 + 4)
    assert counts["fcn32s"] - counts["fcn16s"] == diff
    # U-Net with depth 4 and width 16 (the paper's layout with a quarter of its width)
    assert num_params(UNet(6, depth=4, width=16)) == 1942662


@pytest.mark.parametrize("bad", [
    lambda: UNet(1), lambda: UNet(3, depth=0), lambda: UNet(3, width=0),
    lambda: UNet(3, depth=2.0), lambda: UNet(3, in_channels=True),
    lambda: FCN(3, "4s"), lambda: FCN(1), lambda: FCN(3, width=-1),
    lambda: ConvAutoencoder(3, depth=0), lambda: ConvAutoencoder(0),
    lambda: bilinear_kernel(0, 4), lambda: bilinear_kernel(2, 0),
])
def test_bad_arguments_raise_value_error(bad):
    with pytest.raises(ValueError):
        bad()


@pytest.mark.parametrize("name", ["autoencoder", "fcn32s", "fcn16s", "fcn8s", "unet"])
def test_bad_images_raise_value_error(name):
    model = models()[name]
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.rand(1, 1, 32, 32))


@pytest.fixture(scope="module")
def tiny_scenes(tmp_path_factory):
    data = SyntheticShapes("train", 4, kind="segmentation", image_size=64, num_classes=3,
                           cache=False, progress=False)
    images = torch.stack([data[i][0] for i in range(4)])
    labels = torch.stack([data[i][1]["semantic"] for i in range(4)])
    return images, labels


@pytest.mark.parametrize("name", ["autoencoder", "fcn32s", "fcn16s", "fcn8s", "unet"])
def test_a_few_steps_lower_the_loss(name, tiny_scenes):
    images, labels = tiny_scenes
    torch.manual_seed(0)
    model = models()[name]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses
