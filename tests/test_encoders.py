"""Every network used as a plain nn.Module, without Lightning."""

import pytest
import torch

from mmsent.models import (
    AcousticMLPEncoder,
    ConcatFusion,
    FrameCNNEncoder,
    LateFusionModel,
    LowRankFusion,
    RegressionHead,
    TensorFusion,
    TextLSTMEncoder,
    Visual3DCNNEncoder,
    VisualSequenceEncoder,
)


def lengths_mask(lengths, total):
    return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]


def test_text_lstm_ignores_padding():
    torch.manual_seed(0)
    encoder = TextLSTMEncoder(input_dim=50, embed_dim=8, hidden_dim=8, out_dim=6).eval()
    tokens = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 0, 0, 0]])
    mask = tokens != 0
    out = encoder(tokens, mask)
    assert out.shape == (2, 6)
    changed = tokens.clone()
    changed[0, 3:] = 11  # padding content must not matter
    assert torch.allclose(encoder(changed, mask), out, atol=1e-6)


def test_text_lstm_is_order_sensitive():
    torch.manual_seed(0)
    encoder = TextLSTMEncoder(input_dim=50, embed_dim=8, hidden_dim=8, out_dim=4).eval()
    forward = torch.tensor([[5, 6, 7]])
    backward = torch.tensor([[7, 6, 5]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert not torch.allclose(encoder(forward, mask), encoder(backward, mask))


@pytest.mark.parametrize("pooling", ["mean", "max", "last"])
def test_text_lstm_vectors_and_poolings(pooling):
    encoder = VisualSequenceEncoder(input_dim=12, pooling=pooling, out_dim=5)
    x = torch.randn(3, 7, 12)
    out = encoder(x, lengths_mask([7, 3, 1], 7))
    assert out.shape == (3, 5)
    out.sum().backward()
    assert encoder.lstm.weight_ih_l0.grad is not None


def test_text_lstm_from_pretrained_embeddings():
    encoder = TextLSTMEncoder(input_dim=30522, pretrained_embeddings="minilm", hidden_dim=8, out_dim=4,
                              freeze_embeddings=True)
    assert encoder.embed.weight.shape == (30522, 384)
    assert not encoder.embed.weight.requires_grad
    with pytest.raises(ValueError, match="tokenize with the same model"):
        TextLSTMEncoder(input_dim=100, pretrained_embeddings="minilm")
    # A frozen copy of the language model's table is rebuilt from the config, not saved;
    # a trained one is saved.
    assert encoder.rebuilt_state_keys() == ["embed.weight"]
    encoder.embed.weight.requires_grad_(True)
    assert encoder.rebuilt_state_keys() == []
    assert TextLSTMEncoder(input_dim=50, freeze_embeddings=True).rebuilt_state_keys() == []


def test_acoustic_mlp_pools_valid_frames_only():
    torch.manual_seed(0)
    encoder = AcousticMLPEncoder(input_dim=4, hidden_dims=[16], out_dim=3).eval()
    audio = torch.randn(2, 6, 4)
    mask = lengths_mask([6, 2], 6)
    out = encoder(audio, mask)
    audio[1, 2:] = 100.0
    assert out.shape == (2, 3)
    assert torch.allclose(encoder(audio, mask), out, atol=1e-5)


@pytest.mark.parametrize("make_encoder, inputs", [
    (lambda: TextLSTMEncoder(input_dim=50, embed_dim=8, hidden_dim=8, out_dim=4), lambda: torch.randint(1, 50, (2, 5))),
    (lambda: VisualSequenceEncoder(input_dim=6, out_dim=4), lambda: torch.randn(2, 5, 6)),
    (lambda: AcousticMLPEncoder(input_dim=6, hidden_dims=[8], out_dim=4), lambda: torch.randn(2, 5, 6)),
    (lambda: Visual3DCNNEncoder(out_dim=4), lambda: torch.randn(2, 3, 8, 32, 32)),
    (lambda: FrameCNNEncoder(out_dim=4), lambda: torch.randn(2, 3, 4, 32, 32)),
], ids=["text", "visual-sequence", "audio", "c3d", "frames"])
def test_every_encoder_takes_no_mask_as_every_position_valid(make_encoder, inputs):
    torch.manual_seed(0)
    encoder, x = make_encoder().eval(), inputs()
    assert torch.allclose(encoder(x), encoder(x, torch.ones(x.shape[:2], dtype=torch.bool)), atol=1e-6)


def test_c3d_encoder_and_frame_baseline_shapes():
    video = torch.randn(2, 3, 8, 32, 32)
    for encoder in (Visual3DCNNEncoder(out_dim=7), FrameCNNEncoder(out_dim=7)):
        out = encoder(video)
        assert out.shape == (2, 7)
        out.sum().backward()


def test_frame_baseline_is_blind_to_frame_order_and_c3d_is_not():
    torch.manual_seed(0)
    video = torch.randn(1, 3, 8, 32, 32)
    reversed_video = video.flip(2)
    frame = FrameCNNEncoder(out_dim=4).eval()
    c3d = Visual3DCNNEncoder(out_dim=4).eval()
    assert torch.allclose(frame(video), frame(reversed_video), atol=1e-5)
    assert not torch.allclose(c3d(video), c3d(reversed_video), atol=1e-5)


def test_c3d_temporal_bins_keep_the_order_of_events():
    torch.manual_seed(0)
    encoder = Visual3DCNNEncoder(widths=[4, 8], temporal_bins=2, out_dim=3).eval()
    assert encoder.project.in_features == 8 * 2

    def bins(video):  # (channels, bin): the backbone flattens channel-major
        return encoder.backbone(video).view(8, 2)

    # A bright blob early in the clip shows in the first bin only, late in the second only.
    empty, early, late = (torch.zeros(1, 3, 8, 16, 16) for _ in range(3))
    early[:, :, 1, 6:10, 6:10] = 3.0
    late[:, :, 6, 6:10, 6:10] = 3.0
    assert torch.allclose(bins(early)[:, 1], bins(empty)[:, 1])
    assert not torch.allclose(bins(early)[:, 0], bins(empty)[:, 0])
    assert torch.allclose(bins(late)[:, 0], bins(empty)[:, 0])
    assert not torch.allclose(bins(late)[:, 1], bins(empty)[:, 1])
    assert encoder(torch.randn(2, 3, 8, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="temporal_bins"):
        Visual3DCNNEncoder(temporal_bins=0)
    with pytest.raises(ValueError, match="c3d"):
        Visual3DCNNEncoder(backbone="r3d_18", temporal_bins=2)


def test_c3d_motion_input_ignores_what_stands_still():
    torch.manual_seed(0)
    encoder = Visual3DCNNEncoder(widths=[4, 8], motion_input=True, out_dim=3).eval()
    first_conv = encoder.backbone[0][0]
    assert first_conv.in_channels == 6
    with torch.no_grad():
        first_conv.weight[:, :3] = 0.0  # only the motion channels are left
    still = torch.randn(2, 3, 1, 16, 16).expand(2, 3, 8, 16, 16)
    moving = still.clone()
    moving[:, :, 4:, 4:8, 4:8] += 1.0
    # Two different still clips look alike once the frames themselves are ignored.
    assert torch.allclose(encoder(still[:1]), encoder(still[1:]), atol=1e-5)
    assert not torch.allclose(encoder(moving[:1]), encoder(still[:1]), atol=1e-5)
    with pytest.raises(ValueError, match="c3d"):
        Visual3DCNNEncoder(backbone="r3d_18", motion_input=True)


def test_torchvision_backbone_is_selectable():
    encoder = Visual3DCNNEncoder(backbone="r2plus1d_18", out_dim=5).eval()
    assert encoder(torch.randn(1, 3, 4, 32, 32)).shape == (1, 5)
    with pytest.raises(ValueError, match="backbone"):
        Visual3DCNNEncoder(backbone="resnet9000")


@pytest.mark.parametrize("fusion_class", [ConcatFusion, TensorFusion, LowRankFusion])
def test_fusion_modules(fusion_class):
    dims = {"text": 6, "audio": 4, "video": 5}
    fusion = fusion_class(dims, out_dim=8)
    embeddings = {m: torch.randn(3, d) for m, d in dims.items()}
    out = fusion(embeddings)
    assert out.shape == (3, 8)
    out.sum().backward()


def test_late_fusion_model_masks_absent_modalities():
    torch.manual_seed(0)
    encoders = torch.nn.ModuleDict({
        "text": TextLSTMEncoder(input_dim=20, embed_dim=4, hidden_dim=4, out_dim=4),
        "audio": AcousticMLPEncoder(input_dim=3, hidden_dims=[8], out_dim=4),
    })
    model = LateFusionModel(encoders, ConcatFusion({"text": 4, "audio": 4}, out_dim=4),
                            RegressionHead(4)).eval()
    batch = {
        "text": torch.tensor([[1, 2, 3], [4, 5, 0]]),
        "text_mask": lengths_mask([3, 2], 3),
        "text_present": torch.tensor([True, True]),
        "audio": torch.randn(2, 5, 3),
        "audio_mask": torch.ones(2, 5, dtype=torch.bool),
        "audio_present": torch.tensor([True, False]),
    }
    scores = model(batch)
    assert scores.shape == (2,)
    batch["audio"][1] = 50.0  # an absent modality's content must not matter
    assert torch.allclose(model(batch), scores, atol=1e-6)


def test_modality_dropout_keeps_at_least_one_modality():
    encoders = torch.nn.ModuleDict({"text": torch.nn.Identity(), "audio": torch.nn.Identity()})
    model = LateFusionModel(encoders, torch.nn.Identity(), torch.nn.Identity(), modality_dropout=0.9)
    model.train()
    batch = {"text_present": torch.ones(500, dtype=torch.bool),
             "audio_present": torch.ones(500, dtype=torch.bool)}
    present = model.presence(batch)
    kept = torch.stack([present["text"], present["audio"]], 1)
    assert kept.any(1).all()
    assert (~kept).any()
