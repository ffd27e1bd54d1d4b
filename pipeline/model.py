"""A UNet that loads OpenAI guided-diffusion checkpoints unchanged.

The module tree mirrors guided-diffusion's `UNetModel` (same attribute names, same
nesting, same parameter shapes) so that a published `.pt` state dict loads with
`load_state_dict(strict=True)` and no renaming. The code is our own; only the layout
(which is what a checkpoint file fixes) follows the original.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NUM_IMAGENET_CLASSES = 1000

# Default channel multipliers guided-diffusion picks from image_size when none is given.
_DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


@dataclass(frozen=True)
class UNetConfig:
    """The flags of guided-diffusion's `create_model`, with the same names and defaults."""

    image_size: int = 64
    num_channels: int = 128
    num_res_blocks: int = 2
    channel_mult: str = ""
    attention_resolutions: str = "16,8"
    num_heads: int = 4
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    learn_sigma: bool = False
    class_cond: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # Checked here, not when the model is built: a config that no UNet fits (image_size 15, no res blocks, dropout
        # 1) was taken and failed later, deep inside torch, or built a model that cannot run.
        for f in fields(self):
            value = _checked_flag(f.name, getattr(self, f.name), f.type)
            if value is not getattr(self, f.name):  # a list given for channel_mult / attention_resolutions
                object.__setattr__(self, f.name, value)
        self._check_values()

    def _check_values(self) -> None:
        for name in ("image_size", "num_channels", "num_res_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"UNet flag {name} must be at least 1, got {getattr(self, name)}")
        # -1 leaves num_head_channels / num_heads_upsample unset; the head counts are only read when
        # num_head_channels is unset (as in guided-diffusion), so only then must they be positive.
        if self.num_head_channels != -1 and self.num_head_channels < 1:
            raise ValueError(f"UNet flag num_head_channels must be -1 (unset) or at least 1, got {self.num_head_channels}")
        if self.num_head_channels == -1 and self.num_heads < 1:
            raise ValueError(f"UNet flag num_heads must be at least 1 when num_head_channels is -1, got {self.num_heads}")
        if self.num_head_channels == -1 and self.num_heads_upsample != -1 and self.num_heads_upsample < 1:
            raise ValueError(f"UNet flag num_heads_upsample must be -1 (unset) or at least 1, got {self.num_heads_upsample}")
        if not (math.isfinite(self.dropout) and 0 <= self.dropout < 1):
            raise ValueError(f"UNet flag dropout must be in [0, 1), got {self.dropout}")
        mults = self.channel_multipliers()
        widths = [int(m * self.num_channels) for m in mults]
        if any(w < 1 or w % 32 for w in widths):
            raise ValueError(
                f"num_channels {self.num_channels} x channel_mult {','.join(f'{m:g}' for m in mults)} gives level widths "
                f"{widths}; each must be a positive multiple of 32 (the UNet's GroupNorm has 32 groups)"
            )
        multiple = self.min_input_multiple
        if self.image_size % multiple:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by {multiple}: the UNet halves its input "
                f"{len(mults) - 1} times ({len(mults)} levels in channel_mult {','.join(f'{m:g}' for m in mults)}); "
                f"use a multiple of {multiple} (such as {max(multiple, round(self.image_size / multiple) * multiple)}) "
                "or fewer levels"
            )
        self.attention_downsample_rates()

    @classmethod
    def from_flags(cls, flags: dict[str, Any]) -> UNetConfig:
        """Build from a dict of `create_model` flags; unknown flags are an error, not ignored."""
        if not isinstance(flags, Mapping):
            raise TypeError(f"UNet flags must be a dict of create_model flags, got {type(flags).__name__}")
        known = {f.name for f in fields(cls)}
        # Flags that do not change the weights' layout are accepted and dropped.
        harmless = {"use_fp16", "use_checkpoint", "num_classes"}
        unknown = set(flags) - known - harmless
        if unknown:
            raise ValueError(f"unknown UNet flag(s) {sorted(unknown)}; known flags: {sorted(known)}"
                             + _diffusion_flags_advice(unknown))
        return cls(**{k: v for k, v in flags.items() if k in known})  # __post_init__ checks every value

    def to_flags(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> UNetConfig:
        return replace(self, **changes)

    def channel_multipliers(self) -> tuple[float, ...]:
        if self.channel_mult:
            try:
                mults = tuple(float(m) for m in str(self.channel_mult).split(","))
            except ValueError as err:
                raise ValueError(f"channel_mult must be comma-separated numbers, got {self.channel_mult!r}") from err
            if not all(math.isfinite(m) and m > 0 for m in mults):
                raise ValueError(f"channel_mult must be positive numbers, got {self.channel_mult!r}")
            return mults
        if self.image_size not in _DEFAULT_CHANNEL_MULT:
            raise ValueError(
                f"no default channel_mult for image_size {self.image_size}; pass channel_mult explicitly "
                f"(defaults exist for {sorted(_DEFAULT_CHANNEL_MULT)})"
            )
        return _DEFAULT_CHANNEL_MULT[self.image_size]

    def attention_downsample_rates(self) -> set[int]:
        """guided-diffusion gives attention resolutions in pixels; the model needs downsample rates."""
        if not str(self.attention_resolutions).strip():
            return set()
        rates = set()
        for res in str(self.attention_resolutions).split(","):
            try:
                res_px = int(res)
            except ValueError as err:
                raise ValueError(
                    f"attention_resolutions must be comma-separated pixel sizes, got {self.attention_resolutions!r}"
                ) from err
            if res_px <= 0 or self.image_size % res_px:
                raise ValueError(f"attention resolution {res_px} does not divide image_size {self.image_size}")
            rates.add(self.image_size // res_px)
        return rates

    @property
    def out_channels(self) -> int:
        return 6 if self.learn_sigma else 3

    @property
    def min_input_multiple(self) -> int:
        """Input sides must be divisible by this (one halving per level but the last)."""
        return 2 ** (len(self.channel_multipliers()) - 1)


# The diffusion settings among guided-diffusion's model_and_diffusion_defaults(): a user who passes that dict (or the
# README's MODEL_FLAGS and DIFFUSION_FLAGS together) gives them beside create_model's. Refused rather than dropped, as
# the sampler does not read them (a noise_schedule of cosine would be sampled as linear), but said for what they are.
_DIFFUSION_FLAGS = ("diffusion_steps", "noise_schedule", "timestep_respacing", "use_kl", "predict_xstart",
                    "rescale_timesteps", "rescale_learned_sigmas", "sigma_small")


def _diffusion_flags_advice(unknown: set[str]) -> str:
    given = [name for name in _DIFFUSION_FLAGS if name in unknown]
    if not given:
        return ""
    one = len(given) == 1
    return (f"; {', '.join(given)} {'is one of' if one else 'are'} guided-diffusion's diffusion settings, not "
            f"create_model's model flags: leave {'it' if one else 'them'} out (the job samples T = 1000 timesteps, as "
            "guided-diffusion's models were trained, in --steps steps, with the noise schedule of --schedule, else the "
            "prior's record, else linear)")


def _checked_flag(name: str, value: Any, kind: str) -> Any:
    """A flag's value of the type its field needs, or a ValueError naming the flag (JSON/YAML flags often carry
    "32" or "false" as strings, which would otherwise build a wrong model or fail deep inside torch).
    channel_mult and attention_resolutions may also be given as lists ([1, 2, 2] for "1,2,2")."""
    if name in ("channel_mult", "attention_resolutions"):
        if isinstance(value, list | tuple) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        ):
            return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        if isinstance(value, int) and not isinstance(value, bool) and name == "attention_resolutions":
            return str(value)
        if isinstance(value, str):
            return value
        raise ValueError(f"UNet flag {name} must be a comma-separated string or a list of numbers, got {value!r}")
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "str": isinstance(value, str),
    }[kind]
    if not ok:
        expected = {"int": "an integer", "bool": "true or false", "float": "a number", "str": "a string"}[kind]
        raise ValueError(f"UNet flag {name} must be {expected}, got {value!r} ({type(value).__name__})")
    return value


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, cosines first then sines (the order guided-diffusion's weights expect)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 whatever the input dtype (stable under fp16/bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> nn.Module:
    return GroupNorm32(32, channels)


def _cpu_inference(x: torch.Tensor) -> bool:
    """Whether the CPU inference paths below apply: a float32 tensor on the CPU, no autograd, no autocast (so no
    operation's output dtype can differ from its input's, and nothing needs the values an in-place operation
    overwrites). Training and GPUs run the plain operations."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu"))


class TimestepBlock(nn.Module):
    """A block whose forward also takes the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.out_channels = out_channels or channels
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, self.out_channels, 3, stride=2, padding=1)
        else:
            if self.out_channels != channels:
                raise ValueError("a pooling Downsample cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd: nn.Module = Upsample(channels, False)
            self.x_upd: nn.Module = Upsample(channels, False)
        elif down:
            self.h_upd = Downsample(channels, False)
            self.x_upd = Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if _cpu_inference(x):
            return self._forward_inference(x, emb)
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h

    def _forward_inference(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """`forward` on a CPU without autograd (`_cpu_inference`): the same operations in the same order, but the
        SiLUs, the scale-shift and the residual sum write into tensors this block made itself instead of allocating
        new ones (the same values bit for bit; about 5 % less CPU time for the CIFAR-10 prior)."""
        norm, _, conv = self.in_layers
        h = F.silu(norm(x), inplace=True)
        if self.updown:
            h = self.h_upd(h)
            x = self.x_upd(x)
        h = conv(h)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        out_norm, _, dropout, out_conv = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_norm(h).mul_(1 + scale).add_(shift)
        else:
            h = out_norm(h + emb_out)
        h = out_conv(dropout(F.silu(h, inplace=True)))
        return h.add_(self.skip_connection(x))


class AttentionBlock(nn.Module):
    """Spatial self-attention. `legacy_order` picks how the fused qkv channels are split into heads:
    guided-diffusion's legacy layout is [q,k,v] per head; the new layout is heads within each of q, k, v."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1, legacy_order: bool = True):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"channels {channels} not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {self.num_heads}")
        self.legacy_order = legacy_order
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length = qkv.shape[-1]
        head_ch = c // self.num_heads
        if self.legacy_order:
            q, k, v = qkv.reshape(b, self.num_heads, 3 * head_ch, length).split(head_ch, dim=2)
        else:
            q, k, v = (t.reshape(b, self.num_heads, head_ch, length) for t in qkv.chunk(3, dim=1))
        q, k, v = q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)  # (b, heads, length, head_ch)
        if _cpu_inference(x):
            a = _cpu_attention(q, k, v)
        else:
            # The fused kernel; its 1/sqrt(d) scaling equals the original's.
            a = F.scaled_dot_product_attention(q, k, v)
        h = a.transpose(-1, -2).reshape(b, c, length)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


# Bytes of attention weights (b, heads, length, length) computed at a time on a CPU: a few canvases' worth that stay
# in cache through the softmax and the second product, instead of all of a forward pass's (32 MiB for 64 canvases at
# 16x16 in the CIFAR-10 prior, which made attention about a third of its forward pass).
CPU_ATTENTION_CHUNK_BYTES = 2 * 2**20


def _cpu_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √d) v for (b, heads, length, d) views, computed exactly as the CPU `scaled_dot_product_attention`
    computes these inputs (its math kernel, chosen because their last dimension is strided): q and k each scaled by
    d^(-1/4) in the same order, the same two matrix products, the same softmax, so the same bits. It leaves out that
    kernel's check for rows that are entirely -inf (a masked-out row; there is no mask here), and runs a few samples
    at a time (`CPU_ATTENTION_CHUNK_BYTES`): each sample's products and softmax are its own, so the bits do not change
    (tests/test_cpu_speed_equivalence.py), and the forward pass of the CIFAR-10 prior takes about a quarter less time."""
    b, heads, length, _ = q.shape
    scale = math.sqrt(1.0 / math.sqrt(q.shape[-1]))
    step = max(1, CPU_ATTENTION_CHUNK_BYTES // (heads * length * length * q.element_size()))
    out = []
    for i in range(0, b, step):
        weights = torch.matmul(q[i : i + step] * scale, k[i : i + step].transpose(-2, -1) * scale)
        out.append(torch.matmul(torch.softmax(weights, dim=-1), v[i : i + step]))
    return out[0] if len(out) == 1 else torch.cat(out)


class UNetModel(nn.Module):
    """guided-diffusion's UNet: predicts ε (and, when learn_sigma, the variance interpolation)."""

    def __init__(self, config: UNetConfig | Mapping[str, Any]):
        super().__init__()
        self.config = config = as_config(config)
        ch_mult = config.channel_multipliers()
        attention_ds = config.attention_downsample_rates()
        mc = config.num_channels
        heads_up = config.num_heads if config.num_heads_upsample == -1 else config.num_heads_upsample
        emb_dim = mc * 4
        legacy = not config.use_new_attention_order

        def res(ch_in: int, ch_out: int, up: bool = False, down: bool = False) -> ResBlock:
            return ResBlock(ch_in, emb_dim, config.dropout, ch_out, config.use_scale_shift_norm, up=up, down=down)

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, config.num_head_channels, legacy_order=legacy)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if config.class_cond:
            self.label_emb = nn.Embedding(NUM_IMAGENET_CLASSES, emb_dim)

        ch = input_ch = int(ch_mult[0] * mc)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(3, ch, 3, padding=1))])
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(ch_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in attention_ds:
                    layers.append(attn(ch, config.num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(ch_mult) - 1:
                down = res(ch, ch, down=True) if config.resblock_updown else Downsample(ch, True, ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch, config.num_heads), res(ch, ch))

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(ch_mult))[::-1]:
            for i in range(config.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), int(mc * mult))]
                ch = int(mc * mult)
                if ds in attention_ds:
                    layers.append(attn(ch, heads_up))
                if level and i == config.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if config.resblock_updown else Upsample(ch, True, ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(input_ch, config.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if (y is not None) != self.config.class_cond:
            raise ValueError("class labels y must be given if and only if the model is class-conditional")
        emb = self.time_embed(timestep_embedding(timesteps, self.config.num_channels).to(x.dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


def as_config(config: UNetConfig | Mapping[str, Any]) -> UNetConfig:
    """A UNetConfig, or a dict of guided-diffusion `create_model` flags made into one; anything else is a TypeError
    that says what to pass (None or a preset's name gave an AttributeError from deep inside the model)."""
    if isinstance(config, UNetConfig):
        return config
    if isinstance(config, Mapping):
        return UNetConfig.from_flags(dict(config))
    from pipeline.presets import PRESETS, SHIPPED_PRIORS  # presets imports this module

    # The advice must run as printed: build_unet("cifar10") was told to call pipeline.preset_config('cifar10'), which
    # refuses that name (a shipped prior's, not a preset's), as it refuses any string that names no preset.
    if isinstance(config, str) and config in PRESETS:
        named = f"pipeline.preset_config({config!r})"
    elif isinstance(config, str) and config in SHIPPED_PRIORS:
        named = (f"pipeline.load_checkpoint(pipeline.shipped_prior({config!r})).config (the shipped prior's; its "
                 f"model with weights is .model)")
    elif isinstance(config, str | os.PathLike):
        named = (f"pipeline.preset_config(name), name one of {', '.join(PRESETS)}; a checkpoint's model is "
                 f"pipeline.load_checkpoint(path).model")
    else:
        named = "pipeline.preset_config('256x256_diffusion_uncond')"
    raise TypeError(
        f"expected a UNetConfig or a dict of guided-diffusion create_model flags (such as {{'image_size': 256, "
        f"'num_channels': 256, ...}}), got {type(config).__name__}; a named architecture's config is {named}"
    )


def build_unet(config: UNetConfig | Mapping[str, Any], device: torch.device | str | None = None) -> UNetModel:
    """Build the model from a UNetConfig or a dict of guided-diffusion flags; pass device="meta" to inspect keys and
    shapes without allocating weights."""
    config = as_config(config)
    if device is None:
        return UNetModel(config)
    with torch.device(device):
        return UNetModel(config)
