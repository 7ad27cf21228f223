"""BatchNorm folding and the deployment copy of a detector (course_lib.models.fusion).

Oracles: the two layers run one after the other, PyTorch's own ``fuse_conv_bn_eval``, and the
original detectors' outputs in eval mode.
"""

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from course_lib.models.fusion import fold_batchnorm, fuse_conv_bn, inference_copy
from course_lib.recipes.detection import QUICK, build_model


def trained_batchnorm(channels: int, affine: bool = True) -> nn.BatchNorm2d:
    """A BatchNorm with running statistics and affine parameters far from their defaults."""
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(channels, affine=affine, momentum=1.0)
    bn.train()(torch.randn(8, channels, 5, 5) * 3 + 2)  # running stats := this batch's
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
    return bn.eval()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(("stride", "groups"), [(1, 1), (2, 1), (1, 2)])
def test_folded_conv_equals_conv_then_batchnorm(bias, affine, stride, groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=stride, padding=1, groups=groups, bias=bias).eval()
    bn = trained_batchnorm(6, affine)
    x = torch.randn(2, 4, 9, 9)
    fused = fold_batchnorm(conv, bn)
    with torch.no_grad():
        expected = bn(conv(x))
        torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused(x), fuse_conv_bn_eval(conv, bn)(x), rtol=1e-5,
                                   atol=1e-5)
    assert fused is not conv and (conv.bias is None) == (not bias)  # the original is untouched


def test_fold_batchnorm_rejects_what_cannot_be_folded():
    conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="BatchNorm over 5 channels"):
        fold_batchnorm(conv, nn.BatchNorm2d(5))
    with pytest.raises(ValueError, match="running statistics"):
        fold_batchnorm(conv, nn.BatchNorm2d(4, track_running_stats=False))


def test_fuse_conv_bn_replaces_the_pairs_of_a_sequential():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), trained_batchnorm(4), nn.ReLU(),
                          nn.Sequential(nn.Conv2d(4, 4, 1), trained_batchnorm(4)),
                          nn.BatchNorm2d(4).eval())  # a BatchNorm after a non-conv: kept
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model.eval()(x)
        fused = fuse_conv_bn(model)
        torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)
    kinds = [type(m).__name__ for m in fused.modules()]
    assert kinds.count("BatchNorm2d") == 1 and kinds.count("Identity") == 2


RAW_OUTPUTS = {  # the network part of each detector: (B, 3, S, S) -> tensors
    "faster_rcnn": lambda model, x: (model.backbone(x),),
    "ssd": lambda model, x: model._outputs(x),
    "yolo": lambda model, x: (model._grid(x),),
}


@pytest.mark.parametrize("detector", sorted(RAW_OUTPUTS))
def test_inference_copy_of_a_detector_computes_the_same(detector):
    torch.manual_seed(0)
    model = build_model(QUICK[detector])
    for module in model.modules():  # running statistics that are not the defaults
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 1.0
    with torch.no_grad():
        RAW_OUTPUTS[detector](model.train(), torch.rand(4, 3, 128, 128) * 2)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = inference_copy(model)
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        for out, expected in zip(RAW_OUTPUTS[detector](fast, images),
                                 RAW_OUTPUTS[detector](model, images), strict=True):
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
        detections = fast(list(images))
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "scores", "labels"}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original stays
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
