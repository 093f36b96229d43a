# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Pixel decoders: they turn the multi-scale backbone features into per-pixel embeddings at
stride 4 (the "mask features") and, optionally, a transformer-encoded coarsest feature map.

Shape shorthand in this module:

    B: batch size
    C: channels (CONVS_DIM inside the decoder, MASK_DIM for the mask features)
    H, W: height and width of the padded input image
"""

from typing import Callable, Dict, List, Optional, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.utils.registry import Registry
from torch import nn

from .transformer import PositionEmbeddingSine, TransformerEncoderOnly

__all__ = [
    "PIXEL_DECODER_REGISTRY",
    "build_pixel_decoder",
    "BasePixelDecoder",
    "TransformerEncoderPixelDecoder",
]

PIXEL_DECODER_REGISTRY = Registry("PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = """
Registry for pixel decoders, which map backbone features to per-pixel embeddings.

The registered object is called with `obj(cfg, input_shape)`, where `input_shape` is a
dict[str, ShapeSpec] of the backbone outputs. It must provide
`forward_features(features) -> (mask_features (B, MASK_DIM, H/4, W/4),
transformer_encoder_features (B, CONVS_DIM, H/32, W/32) or None)`.
"""


def build_pixel_decoder(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """
    Build the pixel decoder named by ``cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME``: from
    ``PIXEL_DECODER_REGISTRY`` or, for decoders registered the original MaskFormer's way, from
    detectron2's ``SEM_SEG_HEADS_REGISTRY``, called as ``(cfg, input_shape)``; the result must
    then have ``forward_features``.
    """
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    if name in PIXEL_DECODER_REGISTRY:
        return PIXEL_DECODER_REGISTRY.get(name)(cfg, input_shape)
    if name not in SEM_SEG_HEADS_REGISTRY:
        raise KeyError(
            f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = {name!r} is registered neither in "
            f"PIXEL_DECODER_REGISTRY ({sorted(k for k, _ in PIXEL_DECODER_REGISTRY)}) nor in "
            "SEM_SEG_HEADS_REGISTRY"
        )
    builder = SEM_SEG_HEADS_REGISTRY.get(name)
    not_a_decoder = TypeError(
        f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = {name!r}: {name} from SEM_SEG_HEADS_REGISTRY "
        "is not a pixel decoder, as it has no forward_features(features)"
    )
    # A head class is rejected before it is built: a MaskFormer head would build itself again.
    if isinstance(builder, type) and not hasattr(builder, "forward_features"):
        raise not_a_decoder
    decoder = builder(cfg, input_shape)
    if not callable(getattr(decoder, "forward_features", None)):
        raise not_a_decoder
    return decoder


def _conv(in_channels: int, out_channels: int, kernel_size: int, norm: str, relu: bool) -> Conv2d:
    """A conv with optional norm and ReLU; bias only without norm; c2_xavier_fill init."""
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        padding=kernel_size // 2,
        bias=norm == "",
        norm=get_norm(norm, out_channels),
        activation=F.relu if relu else None,
    )
    weight_init.c2_xavier_fill(conv)
    return conv


@PIXEL_DECODER_REGISTRY.register()
class BasePixelDecoder(nn.Module):
    """
    The light-weight FPN-like pixel decoder of MaskFormer. The coarsest feature goes through a
    3x3 conv (``layer_{n}``); every finer level i adds its 1x1-projected feature
    (``adapter_i``) to the nearest-upsampled coarser output and applies a 3x3 conv
    (``layer_i``). A final 3x3 conv (``mask_features``) maps the stride-4 output to MASK_DIM.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        conv_dim: int,
        mask_dim: int,
        norm: str = "",
        encodes_coarsest: bool = False,
    ):
        """
        Args:
            input_shape: shapes of the features used, e.g. res2..res5.
            conv_dim: channels inside the decoder.
            mask_dim: channels of the output per-pixel embeddings.
            norm: detectron2 norm name ("GN", "" for none).
            encodes_coarsest: set by subclasses that transform the coarsest feature before
                ``layer_{n}``: ``layer_{n}`` is then not built here, and the subclass registers
                it itself, after its own modules (the order of the reference state_dict).
        """
        super().__init__()
        shapes = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        # Backbone feature names, finest (stride 4) first.
        self.in_features: List[str] = [name for name, _ in shapes]
        # Whether the coarsest feature is transformed (by a subclass) before layer_{n}.
        self.encodes_coarsest = encodes_coarsest
        channels = [s.channels for _, s in shapes]
        # Registration order (adapter_1, layer_1, ..., layer_n, mask_features) is the order of
        # the reference state_dict.
        for i, in_ch in enumerate(channels[:-1], start=1):
            self.add_module(f"adapter_{i}", _conv(in_ch, conv_dim, 1, norm, relu=False))
            self.add_module(f"layer_{i}", _conv(conv_dim, conv_dim, 3, norm, relu=True))
        if not encodes_coarsest:
            self.add_module(f"layer_{len(channels)}", _conv(channels[-1], conv_dim, 3, norm, True))
        self.mask_features = _conv(conv_dim, mask_dim, 3, "", relu=False)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
        }

    def _top_down(
        self, features: Dict[str, torch.Tensor], coarsest: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Run the top-down path; ``coarsest`` maps the coarsest feature to its output."""
        n = len(self.in_features)
        y = coarsest(features[self.in_features[-1]])
        for i in range(n - 1, 0, -1):
            lateral = getattr(self, f"adapter_{i}")(features[self.in_features[i - 1]])
            # FPN-style nearest upsampling of the coarser output.
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = getattr(self, f"layer_{i}")(y)
        return self.mask_features(y)

    def forward_features(
        self, features: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            features: backbone outputs by name, e.g. "res2" (B, C2, H/4, W/4) .. "res5".
        Returns:
            mask_features (B, MASK_DIM, H/4, W/4) and None (no transformer encoder here).
        """
        coarsest = getattr(self, f"layer_{len(self.in_features)}")
        return self._top_down(features, coarsest), None

    def forward(self, features: Dict[str, torch.Tensor]):
        return self.forward_features(features)


@PIXEL_DECODER_REGISTRY.register()
class TransformerEncoderPixelDecoder(BasePixelDecoder):
    """
    BasePixelDecoder whose coarsest level first goes through a 1x1 projection
    (``input_proj``) and a transformer encoder (``transformer``) with sine position encoding;
    the encoder output is also returned for the transformer predictor, and ``layer_{n}`` maps
    it (CONVS_DIM channels) into the top-down path.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        transformer_pre_norm: bool,
        conv_dim: int,
        mask_dim: int,
        norm: str = "",
    ):
        """
        Args:
            input_shape, conv_dim, mask_dim, norm: as in :class:`BasePixelDecoder`.
            transformer_*: hyper-parameters of the encoder (d_model = conv_dim).
        """
        super().__init__(
            input_shape, conv_dim=conv_dim, mask_dim=mask_dim, norm=norm, encodes_coarsest=True
        )
        coarsest_channels = max(input_shape.values(), key=lambda s: s.stride).channels
        self.input_proj = Conv2d(coarsest_channels, conv_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.input_proj)
        self.transformer = TransformerEncoderOnly(
            d_model=conv_dim,
            nhead=transformer_nheads,
            num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward,
            dropout=transformer_dropout,
            pre_norm=transformer_pre_norm,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        # The coarsest layer reads the encoder output, which has conv_dim channels.
        n = len(self.in_features)
        self.add_module(f"layer_{n}", _conv(conv_dim, conv_dim, 3, norm, relu=True))

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        mf = cfg.MODEL.MASK_FORMER
        ret.update(
            transformer_dropout=mf.DROPOUT,
            transformer_nheads=mf.NHEADS,
            transformer_dim_feedforward=mf.DIM_FEEDFORWARD,
            transformer_enc_layers=cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS,
            transformer_pre_norm=mf.PRE_NORM,
        )
        return ret

    def forward_features(
        self, features: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Returns:
            mask_features (B, MASK_DIM, H/4, W/4) and the encoder output
            (B, CONVS_DIM, H/32, W/32).
        """
        encoded: List[torch.Tensor] = []

        def coarsest(x: torch.Tensor) -> torch.Tensor:
            encoded.append(self.transformer(self.input_proj(x), self.pe_layer(x)))
            return getattr(self, f"layer_{len(self.in_features)}")(encoded[0])

        mask_features = self._top_down(features, coarsest)
        return mask_features, encoded[0]
