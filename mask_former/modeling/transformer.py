# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Transformer building blocks of MaskFormer: sine position encoding, one encoder/decoder layer
(with a ``pre_norm`` flag), encoder and decoder stacks, and the transformer predictor that turns
learned queries into (class, mask embedding) pairs.

Shape shorthand in this module:

    B: batch size
    Q: number of queries
    K: number of classes (the classifier has K + 1 outputs, the last one is "no object")
    C: channels (hidden dimension of the transformer unless said otherwise)
    H, W: height and width of a feature map; S = H * W tokens
    L: number of decoder layers

Sequences follow ``nn.MultiheadAttention``'s default layout: (length, B, C).
Einsum subscripts use the same letters in lower case.
"""

import math
from typing import Dict, List, Optional

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d
from torch import nn

__all__ = [
    "PositionEmbeddingSine",
    "TransformerLayer",
    "TransformerEncoder",
    "TransformerDecoder",
    "TransformerPredictor",
    "MLP",
]


class PositionEmbeddingSine(nn.Module):
    """
    Sine/cosine position encoding of a 2-D feature map (as in "Attention is all you need",
    extended to images by DETR): half of the channels encode y, the other half x, each with
    interleaved sin/cos at geometrically spaced frequencies. Coordinates are the cumulative
    count of valid pixels, optionally normalised to (0, 2*pi].
    """

    def __init__(
        self,
        num_pos_feats: int = 64,
        temperature: float = 10000.0,
        normalize: bool = False,
        scale: Optional[float] = None,
    ):
        """
        Args:
            num_pos_feats: channels per coordinate; the output has 2 * num_pos_feats channels.
            temperature: base of the frequency progression.
            normalize: divide coordinates by the map extent and multiply by ``scale``.
            scale: defaults to 2 * pi; only allowed with ``normalize``.
        """
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: `scale` given but `normalize` is False")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x: (B, C, H, W); only its shape, device and dtype are used.
            mask: optional (B, H, W) bool, True on padded pixels.
        Returns:
            (B, 2 * num_pos_feats, H, W)
        """
        if mask is None:
            mask = torch.zeros((x.shape[0], x.shape[2], x.shape[3]), device=x.device, dtype=bool)
        valid = ~mask
        y_pos = valid.cumsum(1, dtype=torch.float32)
        x_pos = valid.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_pos = y_pos / (y_pos[:, -1:, :] + eps) * self.scale
            x_pos = x_pos / (x_pos[:, :, -1:] + eps) * self.scale

        # Frequencies come in pairs: channel 2i (sin) and 2i+1 (cos) share one frequency.
        idx = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        freqs = self.temperature ** (
            2 * torch.div(idx, 2, rounding_mode="floor") / self.num_pos_feats
        )
        pos_y = self._interleave(y_pos[:, :, :, None] / freqs)
        pos_x = self._interleave(x_pos[:, :, :, None] / freqs)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

    @staticmethod
    def _interleave(angles: torch.Tensor) -> torch.Tensor:
        """(B, H, W, F) angles -> (B, H, W, F) with sin on even channels, cos on odd ones."""
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=4).flatten(3)


def _with_pos(x: torch.Tensor, pos: Optional[torch.Tensor]) -> torch.Tensor:
    return x if pos is None else x + pos


class TransformerLayer(nn.Module):
    """
    One transformer layer: self-attention, optionally cross-attention to a memory, then a
    feed-forward network, each as a residual sub-block. With ``pre_norm`` each sub-block
    normalises its input (x + f(norm(x))); otherwise its output (norm(x + f(x))).
    Used as the encoder layer (``cross_attention=False``: self_attn, linear1/2, norm1/2) and as
    the decoder layer (``cross_attention=True``: adds multihead_attn and norm3), so the
    parameter names are those of DETR's layers.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        pre_norm: bool = False,
        cross_attention: bool = False,
    ):
        super().__init__()
        self.pre_norm = pre_norm
        self.cross_attention = cross_attention
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        if cross_attention:
            self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        # One norm and one residual dropout per sub-block, numbered in order of use.
        num_blocks = 3 if cross_attention else 2
        for i in range(1, num_blocks + 1):
            self.add_module(f"norm{i}", nn.LayerNorm(d_model))
            self.add_module(f"dropout{i}", nn.Dropout(dropout))

    def _residual(self, x: torch.Tensor, index: int, fn) -> torch.Tensor:
        norm = getattr(self, f"norm{index}")
        drop = getattr(self, f"dropout{index}")
        if self.pre_norm:
            return x + drop(fn(norm(x)))
        return norm(x + drop(fn(x)))

    def forward(
        self,
        x: torch.Tensor,
        pos: Optional[torch.Tensor] = None,
        memory: Optional[torch.Tensor] = None,
        memory_pos: Optional[torch.Tensor] = None,
        memory_key_padding_mask: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            x: (N, B, C) the sequence being transformed (image tokens or queries).
            pos: (N, B, C) position encoding added to queries and keys of self-attention
                (and to the queries of cross-attention), never to values.
            memory, memory_pos: (S, B, C) what cross-attention attends to, and its position
                encoding (added to keys only). Required with ``cross_attention``.
            memory_key_padding_mask, key_padding_mask: optional (B, S) / (B, N) bool masks.
        Returns:
            (N, B, C)
        """

        def self_attention(y):
            q = k = _with_pos(y, pos)
            return self.self_attn(q, k, value=y, key_padding_mask=key_padding_mask)[0]

        def cross_attention(y):
            return self.multihead_attn(
                query=_with_pos(y, pos),
                key=_with_pos(memory, memory_pos),
                value=memory,
                key_padding_mask=memory_key_padding_mask,
            )[0]

        def feed_forward(y):
            return self.linear2(self.dropout(F.relu(self.linear1(y))))

        x = self._residual(x, 1, self_attention)
        blocks = [cross_attention, feed_forward] if self.cross_attention else [feed_forward]
        for index, fn in enumerate(blocks, start=2):
            x = self._residual(x, index, fn)
        return x


class TransformerEncoder(nn.Module):
    """A stack of encoder layers (``layers.i``) and, for pre-norm stacks, a final ``norm``."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        num_layers: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        pre_norm: bool = False,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(d_model, nhead, dim_feedforward, dropout, pre_norm)
            for _ in range(num_layers)
        )
        # Pre-norm layers leave their output un-normalised: one final norm closes the stack.
        self.norm = nn.LayerNorm(d_model) if pre_norm else None

    def forward(
        self,
        src: torch.Tensor,
        pos: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """src, pos: (S, B, C) -> (S, B, C)."""
        for layer in self.layers:
            src = layer(src, pos=pos, key_padding_mask=key_padding_mask)
        if self.norm is not None:
            src = self.norm(src)
        return src


class TransformerDecoder(nn.Module):
    """
    A stack of decoder layers (``layers.i``) followed by a shared ``norm``. With
    ``return_intermediate`` the normalised output of every layer is returned (deep supervision).
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        num_layers: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        pre_norm: bool = False,
        return_intermediate: bool = False,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(d_model, nhead, dim_feedforward, dropout, pre_norm, True)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.return_intermediate = return_intermediate

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        query_pos: Optional[torch.Tensor] = None,
        pos: Optional[torch.Tensor] = None,
        memory_key_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            tgt, query_pos: (Q, B, C) query contents and query positions.
            memory, pos: (S, B, C) image tokens and their position encoding.
        Returns:
            (L, Q, B, C) normalised outputs of every layer if ``return_intermediate``,
            else (1, Q, B, C) of the last layer.
        """
        outputs = []
        for layer in self.layers:
            tgt = layer(
                tgt,
                pos=query_pos,
                memory=memory,
                memory_pos=pos,
                memory_key_padding_mask=memory_key_padding_mask,
            )
            if self.return_intermediate:
                outputs.append(self.norm(tgt))
        if not self.return_intermediate:
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


def _xavier_init_matrices(module: nn.Module) -> None:
    """Xavier-uniform init of every parameter with more than one dimension (DETR's init)."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class Transformer(nn.Module):
    """
    DETR's encoder-decoder transformer: ``encoder`` over image tokens, ``decoder`` from zero
    query contents with learned query positions. Parameters with more than one dimension get
    Xavier-uniform init.
    """

    def __init__(
        self,
        d_model: int = 512,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        pre_norm: bool = False,
        return_intermediate_dec: bool = False,
    ):
        super().__init__()
        self.encoder = TransformerEncoder(
            d_model, nhead, num_encoder_layers, dim_feedforward, dropout, pre_norm
        )
        self.decoder = TransformerDecoder(
            d_model,
            nhead,
            num_decoder_layers,
            dim_feedforward,
            dropout,
            pre_norm,
            return_intermediate_dec,
        )
        _xavier_init_matrices(self)

    def forward(
        self, src: torch.Tensor, query_embed: torch.Tensor, pos_embed: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            src: (B, C, H, W) projected image features.
            query_embed: (Q, C) learned query positions.
            pos_embed: (B, C, H, W) position encoding of ``src``.
        Returns:
            (L, B, Q, C) decoder outputs (L = 1 without intermediate outputs).
        """
        batch = src.shape[0]
        src = src.flatten(2).permute(2, 0, 1)
        pos_embed = pos_embed.flatten(2).permute(2, 0, 1)
        query_pos = query_embed.unsqueeze(1).repeat(1, batch, 1)
        memory = self.encoder(src, pos=pos_embed)
        hs = self.decoder(torch.zeros_like(query_pos), memory, query_pos=query_pos, pos=pos_embed)
        return hs.transpose(1, 2)


class TransformerEncoderOnly(nn.Module):
    """The encoder half of :class:`Transformer`, mapping a feature map to a feature map."""

    def __init__(
        self,
        d_model: int = 512,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        pre_norm: bool = False,
    ):
        super().__init__()
        self.encoder = TransformerEncoder(
            d_model, nhead, num_encoder_layers, dim_feedforward, dropout, pre_norm
        )
        _xavier_init_matrices(self)

    def forward(self, src: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
        """src, pos_embed: (B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = src.shape
        memory = self.encoder(
            src.flatten(2).permute(2, 0, 1), pos=pos_embed.flatten(2).permute(2, 0, 1)
        )
        return memory.permute(1, 2, 0).reshape(b, c, h, w)


class MLP(nn.Module):
    """A multi-layer perceptron (``layers.i`` linear layers) with ReLU between layers."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class TransformerPredictor(nn.Module):
    """
    MaskFormer's transformer predictor: Q learned queries attend to an image feature map
    through a DETR decoder; each decoder output gives class logits (K + 1) and a mask
    embedding whose dot product with the per-pixel embeddings gives the mask logits.
    """

    @configurable
    def __init__(
        self,
        in_channels: int,
        mask_classification: bool = True,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dropout: float,
        dim_feedforward: int,
        enc_layers: int,
        dec_layers: int,
        pre_norm: bool,
        deep_supervision: bool,
        mask_dim: int,
        enforce_input_project: bool,
    ):
        """
        Args:
            in_channels: channels of the feature map the queries attend to.
            mask_classification: add the class head (False for PerPixelBaselinePlusHead).
            num_classes: K.
            hidden_dim, nheads, dropout, dim_feedforward, enc_layers, dec_layers, pre_norm:
                transformer hyper-parameters.
            num_queries: Q.
            deep_supervision: also return the predictions of every earlier decoder layer.
            mask_dim: channels of the per-pixel embeddings (output of the mask MLP).
            enforce_input_project: use a 1x1 input projection even if
                ``in_channels == hidden_dim``.
        """
        super().__init__()
        self.mask_classification = mask_classification
        self.deep_supervision = deep_supervision
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.transformer = Transformer(
            d_model=hidden_dim,
            nhead=nheads,
            num_encoder_layers=enc_layers,
            num_decoder_layers=dec_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            pre_norm=pre_norm,
            return_intermediate_dec=deep_supervision,
        )
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        if in_channels != hidden_dim or enforce_input_project:
            self.input_proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
            weight_init.c2_xavier_fill(self.input_proj)
        else:
            self.input_proj = nn.Sequential()
        if mask_classification:
            self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels: int, mask_classification: bool = True):
        mf = cfg.MODEL.MASK_FORMER
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dropout": mf.DROPOUT,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            "enc_layers": mf.ENC_LAYERS,
            "dec_layers": mf.DEC_LAYERS,
            "pre_norm": mf.PRE_NORM,
            "deep_supervision": mf.DEEP_SUPERVISION,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
        }

    def forward(self, x: torch.Tensor, mask_features: torch.Tensor) -> Dict:
        """
        Args:
            x: (B, C_in, h, w) feature map attended to.
            mask_features: (B, C_mask, H, W) per-pixel embeddings (stride 4).
        Returns:
            dict with "pred_logits" (B, Q, K + 1) (only with mask classification),
            "pred_masks" (B, Q, H, W) of the last layer and, with deep supervision,
            "aux_outputs": a list of L - 1 dicts with the same keys for the earlier layers.
        """
        pos = self.pe_layer(x)
        hs = self.transformer(self.input_proj(x), self.query_embed.weight, pos)  # (L, B, Q, C)
        masks = torch.einsum("lbqc,bchw->lbqhw", self.mask_embed(hs), mask_features)
        per_layer: List[Dict[str, torch.Tensor]] = [{"pred_masks": m} for m in masks]
        if self.mask_classification:
            for out, logits in zip(per_layer, self.class_embed(hs)):
                out["pred_logits"] = logits
        out = dict(per_layer[-1])
        if self.deep_supervision:
            out["aux_outputs"] = per_layer[:-1]
        return out
