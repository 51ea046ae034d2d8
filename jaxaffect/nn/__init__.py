"""Reusable Flax (linen) layers; no knowledge of tasks or data. Imports only jax/flax/numpy (and
`jaxaffect.errors` for bad arguments). `scan_utils` converts looped <-> scanned layer layouts."""
from jaxaffect.nn.attention import (FeedForward, MultiHeadAttention, TransformerDecoder,
                                    TransformerDecoderLayer, TransformerEncoder,
                                    TransformerEncoderLayer)
from jaxaffect.nn.layers import (ACTIVATIONS, BatchNorm, Dense, conv_kaiming_fan_out,
                                 get_activation, layer_norm, torch_linear_bias_init,
                                 torch_linear_kernel_init)
from jaxaffect.nn.resnet import BasicBlock, ResNet, ResNetStage, ResNetStem, resnet18, resnet34

__all__ = [
    "ACTIVATIONS", "BasicBlock", "BatchNorm", "Dense", "FeedForward", "MultiHeadAttention",
    "ResNet", "ResNetStage", "ResNetStem", "TransformerDecoder", "TransformerDecoderLayer",
    "TransformerEncoder", "TransformerEncoderLayer", "conv_kaiming_fan_out", "get_activation",
    "layer_norm", "resnet18", "resnet34", "torch_linear_bias_init", "torch_linear_kernel_init",
]
