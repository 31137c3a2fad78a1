"""Plain ``nn.Module`` networks, usable without Lightning."""

from mmsent.models.audio import AcousticMLPEncoder
from mmsent.models.fusion import ConcatFusion, LowRankFusion, RegressionHead, TensorFusion
from mmsent.models.generative import BiGAN, ConditionalAutoencoder, ConditionalGAN, ConditionalVAE
from mmsent.models.late_fusion import LateFusionModel
from mmsent.models.text import TextLSTMEncoder
from mmsent.models.transformer_text import TransformerTextEncoder
from mmsent.models.transformer_top import TransformerTopEncoder
from mmsent.models.visual import FrameCNNEncoder, Visual3DCNNEncoder, VisualSequenceEncoder

__all__ = [
    "AcousticMLPEncoder",
    "BiGAN",
    "ConcatFusion",
    "ConditionalAutoencoder",
    "ConditionalGAN",
    "ConditionalVAE",
    "FrameCNNEncoder",
    "LateFusionModel",
    "LowRankFusion",
    "RegressionHead",
    "TensorFusion",
    "TextLSTMEncoder",
    "TransformerTextEncoder",
    "TransformerTopEncoder",
    "Visual3DCNNEncoder",
    "VisualSequenceEncoder",
]
