# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Swin Transformer backbone (Liu et al., ICCV 2021) for detectron2, with the parameter names of the
MaskFormer model-zoo checkpoints (``patch_embed``, ``layers.i.blocks.j``, ``norm0..3``).

Shape shorthand in this module:

    B: batch size
    C: channels of a stage
    H, W: height and width of a stage's token grid
    N: tokens per window (window_size ** 2); nW: windows per image
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

__all__ = ["SwinTransformer", "D2SwinTransformer", "DropPath"]


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability p."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        # Rescale kept samples so the expectation is unchanged.
        return x * x.new_empty(shape).bernoulli_(keep) / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Two-layer feed-forward network (``fc1``, GELU, ``fc2``) with dropout."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of the window -> (B * nW, window_size**2, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, c)


def window_reverse(windows: torch.Tensor, window_size: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, N, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window_size, w // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(window_size: int) -> torch.Tensor:
    """
    (N, N) index into the (2 * window_size - 1)**2 relative-position bias table: the
    (dy, dx) offset between two tokens of a window, both shifted to be >= 0, row-major.
    """
    ys, xs = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, N)
    delta = coords[:, :, None] - coords[:, None, :] + (window_size - 1)  # (2, N, N)
    return delta[0] * (2 * window_size - 1) + delta[1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative-position bias."""

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x: (B * nW, N, C) window tokens.
            mask: (nW, N, N) additive mask (0 or -100) of shifted windows, or None.
        Returns:
            (B * nW, N, C)
        """
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B * nW, heads, N, C / heads)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(x))


class SwinBlock(nn.Module):
    """Swin block: (shifted-)window attention and MLP, pre-norm residuals with stochastic depth."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: Optional[float],
        drop: float,
        attn_drop: float,
        drop_path: float,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, h: int, w: int, attn_mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, H * W, C) tokens.
            attn_mask: (nW, N, N) mask for shifted windows of the padded grid.
        Returns:
            (B, H * W, C)
        """
        b, _, c = x.shape
        ws = self.window_size
        y = self.norm1(x).view(b, h, w, c)
        # Pad right/bottom so the grid splits into whole windows.
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        if self.shift_size > 0:
            y = torch.roll(y, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        y = self.attn(window_partition(y, ws), mask=attn_mask if self.shift_size > 0 else None)
        y = window_reverse(y, ws, hp, wp)
        if self.shift_size > 0:
            y = torch.roll(y, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        y = y[:, :h, :w, :].reshape(b, h * w, c)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Halve the token grid: concatenate each 2x2 neighbourhood (4C), normalise, project to 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, H * W, C) -> (B, ceil(H/2) * ceil(W/2), 2C); odd sizes are zero-padded."""
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # Order (even row, even col), (odd, even), (even, odd), (odd, odd) as in the checkpoints.
        parts = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        x = torch.cat(parts, dim=-1).view(b, -1, 4 * c)
        return self.reduction(self.norm(x))


def shifted_window_mask(
    h: int, w: int, window_size: int, shift_size: int, device: torch.device
) -> torch.Tensor:
    """
    (nW, N, N) additive attention mask for the shifted windows of an (h, w) padded grid:
    -100 between tokens that come from different regions of the cyclically shifted image.
    """
    region = torch.zeros((1, h, w, 1), device=device)
    bounds = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    label = 0
    for hs in bounds:
        for wsl in bounds:
            region[:, hs, wsl, :] = label
            label += 1
    windows = window_partition(region, window_size).squeeze(-1)  # (nW, N)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class SwinStage(nn.Module):
    """Swin blocks of one resolution (alternating regular/shifted windows) and a downsample."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: Optional[float],
        drop: float,
        attn_drop: float,
        drop_path: List[float],
        downsample: bool,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                num_heads,
                window_size,
                0 if i % 2 == 0 else self.shift_size,
                mlp_ratio,
                qkv_bias,
                qk_scale,
                drop,
                attn_drop,
                drop_path[i],
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(
        self, x: torch.Tensor, h: int, w: int
    ) -> Tuple[torch.Tensor, torch.Tensor, int, int]:
        """
        Returns:
            the stage output (B, H * W, C), the downsampled tokens (or the output again for the
            last stage) and their grid size.
        """
        ws = self.window_size
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        mask = shifted_window_mask(hp, wp, ws, self.shift_size, x.device)
        for block in self.blocks:
            x = block(x, h, w, mask)
        if self.downsample is None:
            return x, x, h, w
        return x, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: a strided conv (``proj``) and optional LayerNorm."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm: bool):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, ceil(H / p), ceil(W / p)); sizes are zero-padded first."""
        p = self.patch_size
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p))
        x = self.proj(x)
        if self.norm is not None:
            gh, gw = x.shape[-2:]
            x = self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).view(-1, x.shape[1], gh, gw)
        return x


class SwinTransformer(nn.Module):
    """
    Swin Transformer returning the normalised output of every stage (``norm{i}`` per stage),
    at strides 4, 8, 16, 32 with C, 2C, 4C, 8C channels.
    """

    def __init__(
        self,
        pretrain_img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Tuple[int, ...] = (2, 2, 6, 2),
        num_heads: Tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        ape: bool = False,
        patch_norm: bool = True,
    ):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"Swin: DEPTHS {depths} and NUM_HEADS {num_heads} differ in length")
        self.num_layers = len(depths)
        self.num_features = [embed_dim * 2**i for i in range(self.num_layers)]
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)
        self.ape = ape
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)

        # Stochastic depth rises linearly over all blocks of all stages.
        n = sum(depths)
        rates = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        starts = [sum(depths[:i]) for i in range(self.num_layers)]
        self.layers = nn.ModuleList(
            SwinStage(
                self.num_features[i],
                depths[i],
                num_heads[i],
                window_size,
                mlp_ratio,
                qkv_bias,
                qk_scale,
                drop_rate,
                attn_drop_rate,
                rates[starts[i] : starts[i] + depths[i]],
                downsample=i < self.num_layers - 1,
            )
            for i in range(self.num_layers)
        )
        for i, channels in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(channels))
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """(B, 3, H, W) -> list of (B, C * 2**i, ceil(H / 2**(i+2)), ...) for each stage i."""
        x = self.patch_embed(x)
        h, w = x.shape[-2:]
        if self.ape:
            pos = F.interpolate(self.absolute_pos_embed, size=(h, w), mode="bicubic")
            x = x + pos
        x = self.pos_drop(x.flatten(2).transpose(1, 2))
        outs = []
        for i, stage in enumerate(self.layers):
            out, x, next_h, next_w = stage(x, h, w)
            out = getattr(self, f"norm{i}")(out)
            outs.append(out.view(-1, h, w, self.num_features[i]).permute(0, 3, 1, 2).contiguous())
            h, w = next_h, next_w
        return outs


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


@BACKBONE_REGISTRY.register()
class D2SwinTransformer(SwinTransformer, Backbone):
    """
    :class:`SwinTransformer` as a detectron2 backbone with outputs "res2".."res5" (strides 4,
    8, 16, 32). Any input size works (padded internally); ``size_divisibility`` is 32.
    """

    # Its one convolution gains nothing from a channels-last input, and the token layout after
    # it costs a copy (backbone at 512x704, 2 threads: 0.58 s channels-last vs 0.51 s).
    channels_last_input = False

    @configurable
    def __init__(self, *, out_features: List[str], **swin_kwargs):
        """
        Args:
            out_features: subset of "res2".."res5" to return.
            swin_kwargs: arguments of :class:`SwinTransformer`.
        """
        super().__init__(**swin_kwargs)
        names = [f"res{i + 2}" for i in range(self.num_layers)]
        unknown = [f for f in out_features if f not in names]
        if unknown:
            raise ValueError(f"MODEL.SWIN.OUT_FEATURES: unknown {unknown}; choose from {names}")
        self._out_features = list(out_features)
        self._out_feature_strides = {n: 4 * 2**i for i, n in enumerate(names)}
        self._out_feature_channels = dict(zip(names, self.num_features))

    @classmethod
    def from_config(cls, cfg, input_shape: Optional[ShapeSpec] = None):
        swin = cfg.MODEL.SWIN
        return {
            "out_features": swin.OUT_FEATURES,
            "pretrain_img_size": swin.PRETRAIN_IMG_SIZE,
            "patch_size": swin.PATCH_SIZE,
            "in_chans": 3 if input_shape is None else input_shape.channels,
            "embed_dim": swin.EMBED_DIM,
            "depths": tuple(swin.DEPTHS),
            "num_heads": tuple(swin.NUM_HEADS),
            "window_size": swin.WINDOW_SIZE,
            "mlp_ratio": swin.MLP_RATIO,
            "qkv_bias": swin.QKV_BIAS,
            "qk_scale": swin.QK_SCALE,
            "drop_rate": swin.DROP_RATE,
            "attn_drop_rate": swin.ATTN_DROP_RATE,
            "drop_path_rate": swin.DROP_PATH_RATE,
            "ape": swin.APE,
            "patch_norm": swin.PATCH_NORM,
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(B, 3, H, W) -> {"res2": (B, C, H/4, W/4), ...} for the requested outputs."""
        if x.dim() != 4:
            raise ValueError(f"D2SwinTransformer takes (B, C, H, W) inputs, got {tuple(x.shape)}")
        outs = super().forward(x)
        return {f"res{i + 2}": o for i, o in enumerate(outs) if f"res{i + 2}" in self._out_features}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    @property
    def size_divisibility(self) -> int:
        return 32
