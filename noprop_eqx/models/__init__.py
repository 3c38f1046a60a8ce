"""Backbones: the paper's DT block and CT/FM network, SimpleCNN, and a ResNet wrapper."""

from ._base import (
    AbstractBackbone as AbstractBackbone,
    apply_batched as apply_batched,
    decode_batched as decode_batched,
    encode_batched as encode_batched,
)
from ._batch_norm import BATCH_AXIS as BATCH_AXIS, BatchNorm as BatchNorm
from ._factory import make_backbone as make_backbone
from ._paper import (
    PaperConvStack as PaperConvStack,
    PaperCTNet as PaperCTNet,
    PaperDTBlock as PaperDTBlock,
)
from ._resnet import ResNetWrapper as ResNetWrapper
from ._simple import SimpleCNN as SimpleCNN
from ._time_embedding import SinusoidalTimeEmbedding as SinusoidalTimeEmbedding

__all__ = [
    "AbstractBackbone",
    "BATCH_AXIS",
    "BatchNorm",
    "apply_batched",
    "decode_batched",
    "encode_batched",
    "make_backbone",
    "PaperCTNet",
    "PaperConvStack",
    "PaperDTBlock",
    "ResNetWrapper",
    "SimpleCNN",
    "SinusoidalTimeEmbedding",
]
