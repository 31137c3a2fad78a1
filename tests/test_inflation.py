"""Initializing the 3D-CNN by inflating a 2D-CNN's kernels over time (I3D)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mmsent.models import FrameCNNEncoder, Visual3DCNNEncoder
from mmsent.models.inflation import inflate_into, inflate_kernel


@pytest.fixture()
def frame_weights(tmp_path):
    torch.manual_seed(0)
    frame = FrameCNNEncoder(widths=[4, 8], dropout=0.0)
    for norm in frame.modules():
        if isinstance(norm, nn.BatchNorm2d):
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.data.uniform_(0.5, 1.5)
    state = {name: t.clone() for name, t in frame.state_dict().items()}
    torch.save(state, tmp_path / "frame.pt")
    save_file(state, tmp_path / "frame.safetensors")
    return frame, tmp_path


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_inflated_conv_reproduces_the_2d_conv_on_a_constant_clip(frame_weights, suffix):
    frame, folder = frame_weights
    encoder = Visual3DCNNEncoder(widths=[4, 8], dropout=0.0, inflate_from=str(folder / f"frame{suffix}"))
    conv3d, conv2d = encoder.backbone[0][0], frame.frame_net[0]
    image = torch.randn(2, 3, 16, 16)
    clip = image.unsqueeze(2).repeat(1, 1, 5, 1, 1)
    with torch.no_grad():
        per_frame, inflated = conv2d(image), conv3d(clip)
    for t in range(1, 4):
        torch.testing.assert_close(inflated[:, :, t], per_frame, atol=1e-5, rtol=1e-5)
    # At the clip's ends the zero padding hides one of the three time slices.
    torch.testing.assert_close(inflated[:, :, 0], per_frame * 2 / 3, atol=1e-5, rtol=1e-5)
    norm3d, norm2d = encoder.backbone[0][1], frame.frame_net[1]
    for field in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(norm3d, field), getattr(norm2d, field))
    # The record does not need the 2D file: a rebuilt encoder loads its own weights.
    assert "inflate_from" not in encoder.config


def test_inflate_kernel_averages_to_the_2d_kernel():
    kernel = torch.randn(5, 3, 3, 3)
    inflated = inflate_kernel(kernel, 4)
    assert inflated.shape == (5, 3, 4, 3, 3)
    torch.testing.assert_close(inflated.sum(2), kernel)


def test_mismatched_2d_weights_are_rejected_naming_the_key(frame_weights, tmp_path):
    _, folder = frame_weights
    with pytest.raises(ValueError, match="inflate_from: the 2D weights hold 2 convolution kernels, "
                                         "the 3D network has 3"):
        Visual3DCNNEncoder(widths=[4, 8, 16], inflate_from=str(folder / "frame.pt"))
    wider = FrameCNNEncoder(widths=[4, 6])
    torch.save(wider.state_dict(), tmp_path / "wider.pt")
    with pytest.raises(ValueError, match=r"does not fit a 3D kernel"):
        Visual3DCNNEncoder(widths=[4, 8], inflate_from=str(tmp_path / "wider.pt"))
    with pytest.raises(FileNotFoundError, match="inflate_from: weights file .* does not exist"):
        Visual3DCNNEncoder(inflate_from=str(tmp_path / "missing.pt"))


def test_resnet18_inflates_into_r3d_18():
    from torchvision.models import resnet18
    from torchvision.models.video import r3d_18

    torch.manual_seed(0)
    image_net, video_net = resnet18(weights=None), r3d_18(weights=None)
    assert inflate_into(video_net, image_net.state_dict(), "test") == 20
    torch.testing.assert_close(video_net.stem[0].weight.sum(2), image_net.conv1.weight)
    torch.testing.assert_close(video_net.layer4[1].conv2[0].weight.sum(2), image_net.layer4[1].conv2.weight)


@pytest.fixture()
def detector_weights(tmp_path):
    """A 2D network laid out like a face detector: more convolutions than the 3D
    network, biases, PReLU slopes and a dense head."""
    generator = torch.Generator().manual_seed(0)
    shapes = {"conv1.weight": (4, 3, 3, 3), "conv1.bias": (4,), "prelu1.weight": (4,),
              "conv2.weight": (8, 4, 3, 3), "conv2.bias": (8,), "conv3.weight": (16, 8, 2, 2),
              "dense4.weight": (2, 16)}
    state = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    torch.save(state, tmp_path / "detector.pt")
    return state, tmp_path / "detector.pt"


def test_named_kernels_inflate_and_serve_the_motion_channels_too(detector_weights):
    state, path = detector_weights
    encoder = Visual3DCNNEncoder(widths=[4, 8], motion_input=True, dropout=0.0, inflate_from=str(path),
                                 inflate_kernels=["conv1.weight", "conv2.weight"])
    first, second = encoder.backbone[0][0], encoder.backbone[1][0]
    assert first.weight.shape == (4, 6, 3, 3, 3)
    torch.testing.assert_close(first.weight[:, :3].sum(2), state["conv1.weight"])
    torch.testing.assert_close(first.weight[:, 3:].sum(2), state["conv1.weight"])
    torch.testing.assert_close(second.weight.sum(2), state["conv2.weight"])
    # A still clip has zero motion channels, so the inflated conv gives the 2D response.
    image = torch.randn(2, 3, 16, 16)
    clip = image.unsqueeze(2).repeat(1, 1, 5, 1, 1)
    with torch.no_grad():
        inflated = first(torch.cat([clip, clip - clip.mean(2, keepdim=True)], dim=1))
        per_frame = nn.functional.conv2d(image, state["conv1.weight"], padding=1)
    torch.testing.assert_close(inflated[:, :, 2], per_frame, atol=1e-5, rtol=1e-5)
    assert "inflate_kernels" not in encoder.config


def test_named_kernels_that_are_missing_or_not_kernels_are_rejected(detector_weights):
    _, path = detector_weights
    with pytest.raises(ValueError, match="inflate_from: the 2D weights hold 3 convolution kernels"):
        Visual3DCNNEncoder(widths=[4, 8], inflate_from=str(path))
    with pytest.raises(ValueError, match=r"inflate_from: the 2D weights hold no 'conv9.weight'"):
        Visual3DCNNEncoder(widths=[4, 8], inflate_from=str(path), inflate_kernels=["conv1.weight", "conv9.weight"])
    with pytest.raises(ValueError, match=r"dense4.weight \(2, 16\) is not a 2D convolution kernel"):
        Visual3DCNNEncoder(widths=[4, 8], inflate_from=str(path), inflate_kernels=["conv1.weight", "dense4.weight"])


def _relative_distance(features: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """Relative L2 distance and cosine similarity of two feature batches."""
    distance = float((features - reference).norm() / reference.norm())
    cosine = float(nn.functional.cosine_similarity(features.flatten(), reference.flatten(), dim=0))
    return distance, cosine


def _still_clip(size: int, frames: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.randn(1, 3, size, size)
    return image, image.unsqueeze(2).repeat(1, 1, frames, 1, 1)


@pytest.fixture()
def compact_frame_weights(tmp_path):
    """A FrameCNNEncoder with the compact C3D's default widths and non-trivial norms."""
    torch.manual_seed(0)
    frame = FrameCNNEncoder(widths=[16, 32, 64], dropout=0.0).eval()
    for norm in frame.modules():
        if isinstance(norm, nn.BatchNorm2d):
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.data.uniform_(0.5, 1.5)
    torch.save(frame.state_dict(), tmp_path / "frame.pt")
    return frame, tmp_path / "frame.pt"


@pytest.mark.parametrize("motion_input", [False, True])
def test_compact_c3d_with_replicated_time_padding_computes_the_2d_features_on_a_still_clip(
        compact_frame_weights, motion_input):
    frame, path = compact_frame_weights
    image, clip = _still_clip(32)
    encoder = Visual3DCNNEncoder(widths=[16, 32, 64], dropout=0.0, inflate_from=str(path), motion_input=motion_input,
                                 temporal_padding="replicate").eval()
    with torch.no_grad():
        reference = frame.frame_net(image)
        video = torch.cat([clip, clip - clip.mean(2, keepdim=True)], dim=1) if motion_input else clip
        features = encoder.backbone(video)
    torch.testing.assert_close(features, reference, atol=1e-5, rtol=1e-5)


def test_compact_c3d_with_zero_time_padding_differs_on_a_still_clip_by_the_documented_figure(compact_frame_weights):
    frame, path = compact_frame_weights
    image, clip = _still_clip(32)
    encoder = Visual3DCNNEncoder(widths=[16, 32, 64], dropout=0.0, inflate_from=str(path)).eval()
    with torch.no_grad():
        distance, _ = _relative_distance(encoder.backbone(clip), frame.frame_net(image))
    # docs/guides/toolkit.md: 0.18 % on this clip (16 frames, 32x32).
    assert distance == pytest.approx(0.0018, abs=0.0003)


def _inflated_r3d_18(temporal_padding: str, stem_pool: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """resnet18's and the inflated r3d_18's pooled features on one still 16-frame
    112x112 clip (seed 0, random weights, both in eval mode)."""
    from torchvision.models import resnet18

    from mmsent.models.visual import torchvision_backbone

    torch.manual_seed(0)
    image_net = resnet18(weights=None).eval()
    image_net.fc = nn.Identity()
    image, clip = _still_clip(112)
    video_net, features = torchvision_backbone("r3d_18", temporal_padding, stem_pool)
    assert features == 512
    inflate_into(video_net, image_net.state_dict(), "test")
    with torch.no_grad():
        return video_net.eval()(clip), image_net(image)


def test_r3d_18_with_the_stem_pool_and_replicated_time_padding_computes_resnet18s_features():
    features, reference = _inflated_r3d_18("replicate", stem_pool=True)
    torch.testing.assert_close(features, reference, atol=1e-4, rtol=1e-4)


def test_r3d_18_as_torchvision_builds_it_is_as_far_from_resnet18_as_documented():
    distance, cosine = _relative_distance(*_inflated_r3d_18("zeros", stem_pool=False))
    # docs/guides/toolkit.md and models/inflation.py: 76 % relative distance, cosine 0.958.
    assert distance == pytest.approx(0.760, abs=0.01)
    assert cosine == pytest.approx(0.958, abs=0.005)


def test_stem_pool_and_time_padding_keep_the_parameter_names_so_weights_load():
    plain = Visual3DCNNEncoder(backbone="r3d_18")
    restored = Visual3DCNNEncoder(backbone="r3d_18", temporal_padding="replicate", stem_pool=True)
    restored.load_state_dict(plain.state_dict())
    assert restored.config["temporal_padding"] == "replicate" and restored.config["stem_pool"] is True
    with pytest.raises(ValueError, match="temporal_padding must be one of"):
        Visual3DCNNEncoder(temporal_padding="reflect")
    with pytest.raises(ValueError, match="stem_pool applies to torchvision backbones only"):
        Visual3DCNNEncoder(stem_pool=True)
