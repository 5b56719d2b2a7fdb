"""CogVideoX 3-D causal VAE with the parameter layout of SAT's ``3d-vae.pt`` (docs/model.md, "VAE").

Tensors are (B, C, T, H, W). The encoder compresses ×8 in space and ×4 in time with frame 0 kept
on its own, so F = 4(T-1)+1 frames map to T latent frames. ``decode`` takes latents already divided
by the model config's ``scale_factor`` and, like SAT's ``sample_video.py``, decodes them in chunks
[0:3], [3:5], [5:7], ... while every causal conv carries its last two input frames to the next chunk.
``encode`` works the same way over frame chunks [0:9], [9:17], ... (diffusers' frame batching).
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GROUPS = 32
EPS = 1e-6
LOGVAR_RANGE = (-30.0, 20.0)
SLICE_ELEMENTS = 2**30  # inputs above this many elements are convolved in time slices (SAT's SafeConv3d)
ENCODE_CHUNK_FRAMES = 8  # video frames per encoder chunk after the first (diffusers' num_sample_frames_batch_size)


def _conv_in_time_slices(conv, x: Tensor, kernel_t: int) -> Tensor:
    """Apply `conv` (no time padding, time stride 1) to x, in overlapping time slices when x is large.

    Slices overlap by kernel_t - 1 input frames, so the result equals a single call.
    """
    parts = x.numel() // SLICE_ELEMENTS + 1
    if parts == 1:
        return conv(x)
    out_frames = x.shape[2] - kernel_t + 1
    step = math.ceil(out_frames / parts)
    return torch.cat(
        [conv(x[:, :, start:start + step + kernel_t - 1]) for start in range(0, out_frames, step)], dim=2
    )


def _per_frame_conv2d(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """Apply a Conv2d to every frame of x (B, C, T, H, W), as a (1, k, k) Conv3d to avoid a permuted copy."""
    weight = conv.weight.unsqueeze(2)
    stride, padding = (1, *conv.stride), (0, *conv.padding)
    return _conv_in_time_slices(lambda part: F.conv3d(part, weight, conv.bias, stride, padding), x, 1)


def _resize_latent(zq: Tensor, size) -> Tensor:
    """Nearest resize of zq (B, Cz, t, h, w) to size (T, H, W); for odd T > 1 frame 0 maps to frame 0 alone."""
    frames = size[0]
    if frames > 1 and frames % 2 == 1:
        first = F.interpolate(zq[:, :, :1], size=(1, *size[1:]))
        rest = F.interpolate(zq[:, :, 1:], size=(frames - 1, *size[1:]))
        return torch.cat([first, rest], dim=2)
    return F.interpolate(zq, size=tuple(size))


def _halve_time(x: Tensor) -> Tensor:
    """Average frame pairs; for odd T frame 0 stays alone, so 2k+1 -> k+1 and 2k -> k frames."""
    keep = x.shape[2] % 2
    first, rest = x[:, :, :keep], x[:, :, keep:]
    b, c, t, h, w = rest.shape
    pairs = rest.reshape(b, c, t // 2, 2, h, w).mean(dim=3)
    return torch.cat([first, pairs], dim=2)


class CausalConv3d(nn.Module):
    """3×3×3 conv, causal in time: the front is padded with the carried context or two copies of frame 0.

    H and W are zero-padded by 1, so T, H and W are unchanged. When `carry_context` is set, the last two
    frames of the padded input are kept (on the input's device) for the next call; otherwise dropped.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=(0, 1, 1))
        self.carry_context = False
        self.context: Tensor | None = None  # (B, Cin, 2, H, W)

    def forward(self, x: Tensor) -> Tensor:
        front = self.context if self.context is not None else x[:, :, :1].expand(-1, -1, 2, -1, -1)
        padded = torch.cat([front, x], dim=2)
        self.context = padded[:, :, -2:].clone() if self.carry_context else None
        return _conv_in_time_slices(self.conv, padded, 3)


class PointwiseConv3d(nn.Module):
    """1×1×1 conv; a module of its own only because SAT stores it as `<name>.conv`."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=EPS)


class SpatialNorm3D(nn.Module):
    """GroupNorm(f) · conv_y(zq) + conv_b(zq), with zq resized to f's (T, H, W) by nearest interpolation."""

    def __init__(self, channels: int, zq_channels: int):
        super().__init__()
        self.norm_layer = _group_norm(channels)
        self.conv_y = PointwiseConv3d(zq_channels, channels)
        self.conv_b = PointwiseConv3d(zq_channels, channels)

    def forward(self, f: Tensor, zq: Tensor) -> Tensor:
        zq = _resize_latent(zq, f.shape[2:])
        return self.norm_layer(f).mul_(self.conv_y(zq)).add_(self.conv_b(zq))


class ResnetBlock3D(nn.Module):
    """(norm, SiLU, causal conv) twice, plus a shortcut (1×1×1 conv when the width changes).

    Norms are GroupNorms when `zq_channels` is None (encoder), else spatial norms on zq (decoder).
    """

    def __init__(self, in_channels: int, out_channels: int, zq_channels: int | None = None):
        super().__init__()
        if zq_channels is None:
            self.norm1, self.norm2 = _group_norm(in_channels), _group_norm(out_channels)
        else:
            self.norm1 = SpatialNorm3D(in_channels, zq_channels)
            self.norm2 = SpatialNorm3D(out_channels, zq_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        self.nin_shortcut = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        cond = () if zq is None else (zq,)
        h = self.conv1(F.silu(self.norm1(x, *cond), inplace=True))
        h = self.conv2(F.silu(self.norm2(h, *cond), inplace=True))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return h.add_(shortcut)


class DownSample3D(nn.Module):
    """Halve T (if `compress_time` and T > 1), then halve H and W with a per-frame 3×3 stride-2 conv.

    The conv sees one zero row and column padded at the bottom and right.
    """

    def __init__(self, channels: int, compress_time: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)
        self.compress_time = compress_time

    def forward(self, x: Tensor) -> Tensor:
        if self.compress_time and x.shape[2] > 1:
            x = _halve_time(x)
        return _per_frame_conv2d(self.conv, F.pad(x, (0, 1, 0, 1)))


class Upsample3D(nn.Module):
    """Nearest ×2 in H and W, and in T (except frame 0 of an odd T) if `compress_time`; then a per-frame 3×3 conv."""

    def __init__(self, channels: int, compress_time: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.compress_time = compress_time

    def forward(self, x: Tensor) -> Tensor:
        frames = x.shape[2]
        if not self.compress_time or frames == 1:
            x = F.interpolate(x, scale_factor=(1, 2, 2))
        elif frames % 2 == 1:
            first = F.interpolate(x[:, :, :1], scale_factor=(1, 2, 2))
            x = torch.cat([first, F.interpolate(x[:, :, 1:], scale_factor=2)], dim=2)
        else:
            x = F.interpolate(x, scale_factor=2)
        return _per_frame_conv2d(self.conv, x)


class MidBlock(nn.Module):
    """SAT's `mid`: two resnet blocks at constant width."""

    def __init__(self, channels: int, zq_channels: int | None = None):
        super().__init__()
        self.block_1 = ResnetBlock3D(channels, channels, zq_channels)
        self.block_2 = ResnetBlock3D(channels, channels, zq_channels)

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        return self.block_2(self.block_1(x, zq), zq)


class EncoderLevel(nn.Module):
    """SAT's `down.{i}`: resnet blocks (the first changes the width), then an optional downsample."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, downsample: DownSample3D | None):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList(ResnetBlock3D(c_in, c_out) for c_in, c_out in zip(widths, widths[1:]))
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class DecoderLevel(nn.Module):
    """SAT's `up.{i}`: resnet blocks with spatial norms (the first changes the width), then an optional upsample."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, zq_channels: int,
                 upsample: Upsample3D | None):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList(
            ResnetBlock3D(c_in, c_out, zq_channels) for c_in, c_out in zip(widths, widths[1:])
        )
        self.upsample = upsample

    def forward(self, x: Tensor, zq: Tensor) -> Tensor:
        for block in self.block:
            x = block(x, zq)
        return x if self.upsample is None else self.upsample(x)


class Encoder3D(nn.Module):
    """Video (B, Cin, F, H, W) -> moments (B, 2·z_channels, T, H/8, W/8): mean, then log-variance."""

    def __init__(self, ch: int, ch_mult, num_res_blocks: int, z_channels: int, in_channels: int,
                 temporal_levels: int):
        super().__init__()
        widths = [ch * m for m in ch_mult]
        self.conv_in = CausalConv3d(in_channels, ch)
        self.down = nn.ModuleList()
        level_in = ch
        for i, level_out in enumerate(widths):
            last = i == len(widths) - 1
            downsample = None if last else DownSample3D(level_out, compress_time=i < temporal_levels)
            self.down.append(EncoderLevel(level_in, level_out, num_res_blocks, downsample))
            level_in = level_out
        self.mid = MidBlock(level_in)
        self.norm_out = _group_norm(level_in)
        self.conv_out = CausalConv3d(level_in, 2 * z_channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=True))


class Decoder3D(nn.Module):
    """Latent chunk (B, z_channels, t, h, w) -> frames (B, out_ch, t', 8h, 8w); the chunk is also zq.

    t' = 4(t-1)+1 for a first chunk (odd t) and 4t for a continuation chunk (even t).
    """

    def __init__(self, ch: int, ch_mult, num_res_blocks: int, z_channels: int, out_ch: int,
                 temporal_levels: int):
        super().__init__()
        widths = [ch * m for m in ch_mult]
        level_in = widths[-1]
        self.conv_in = CausalConv3d(z_channels, level_in)
        self.mid = MidBlock(level_in, z_channels)
        levels = []
        for i in reversed(range(len(widths))):
            compress_time = len(widths) - 1 - i < temporal_levels
            upsample = None if i == 0 else Upsample3D(widths[i], compress_time)
            levels.append(DecoderLevel(level_in, widths[i], num_res_blocks + 1, z_channels, upsample))
            level_in = widths[i]
        self.up = nn.ModuleList(reversed(levels))  # indexed by resolution: up[-1] is the lowest and runs first
        self.norm_out = SpatialNorm3D(level_in, z_channels)
        self.conv_out = CausalConv3d(level_in, out_ch)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z), z)
        for level in reversed(self.up):
            h = level(h, z)
        return self.conv_out(F.silu(self.norm_out(h, z), inplace=True))


def encode_chunks(num_frames: int, chunk: int = ENCODE_CHUNK_FRAMES) -> list[tuple[int, int]]:
    """Video frame chunks for encoding, as diffusers' `AutoencoderKLCogVideoX` batches them: `chunk` frames each,
    the first also taking the remainder ([0:9], [9:17], ... for 49 frames); one chunk below 2·chunk frames."""
    first = num_frames - chunk * (max(num_frames // chunk, 1) - 1)
    return [(0, first)] + [(start, start + chunk) for start in range(first, num_frames, chunk)]


def _run_in_chunks(module: nn.Module, x: Tensor, spans) -> Tensor:
    """`module` over the time spans of x, each causal conv carrying its context from one span to the next;
    the context is cleared afterwards, even on error."""
    convs = [m for m in module.modules() if isinstance(m, CausalConv3d)]
    try:
        outputs = []
        for i, (start, stop) in enumerate(spans):
            for conv in convs:
                conv.carry_context = i < len(spans) - 1
            outputs.append(module(x[:, :, start:stop]))
        return torch.cat(outputs, dim=2)
    finally:
        for conv in convs:
            conv.carry_context, conv.context = False, None


def decode_chunks(num_frames: int) -> list[tuple[int, int]]:
    """SAT's latent chunks for decoding: [0:3], [3:5], [5:7], ...; [0:1] for a single frame."""
    if num_frames == 1:
        return [(0, 1)]
    return [(0, 3)] + [(start, start + 2) for start in range(3, num_frames, 2)]


class CogVideoXVAE(nn.Module):
    """CogVideoX's causal video VAE; `state_dict()` keys are exactly SAT's `3d-vae.pt` `encoder.*`/`decoder.*`.

    Runs in the dtype and on the device of its parameters; inputs are cast to them.
    """

    def __init__(self, ch: int = 128, ch_mult=(1, 2, 2, 4), num_res_blocks: int = 3, z_channels: int = 16,
                 in_channels: int = 3, out_ch: int = 3, temporal_compress_times: int = 4):
        super().__init__()
        if ch % GROUPS:
            raise ValueError(f"ch={ch} must be a multiple of {GROUPS} (GroupNorm groups)")
        temporal_levels = int(math.log2(temporal_compress_times))
        if 2**temporal_levels != temporal_compress_times or temporal_levels > len(ch_mult) - 1:
            raise ValueError(f"temporal_compress_times={temporal_compress_times} must be 2**k with "
                             f"k <= {len(ch_mult) - 1} (one per downsampling level)")
        self.in_channels, self.z_channels = in_channels, z_channels
        self.spatial_factor = 2 ** (len(ch_mult) - 1)
        self.temporal_factor = temporal_compress_times
        self.encoder = Encoder3D(ch, ch_mult, num_res_blocks, z_channels, in_channels, temporal_levels)
        self.decoder = Decoder3D(ch, ch_mult, num_res_blocks, z_channels, out_ch, temporal_levels)

    @classmethod
    def tiny(cls) -> "CogVideoXVAE":
        """Small random-weight configuration for tests and CPU runs (widths 32, 64, 64, 128; 1 block per level)."""
        return cls(ch=32, num_res_blocks=1)

    def _cast(self, x: Tensor) -> Tensor:
        param = next(self.parameters())
        return x.to(device=param.device, dtype=param.dtype)

    @torch.no_grad()
    def encode(self, x: Tensor, sample: bool = False, generator: torch.Generator | None = None,
               chunked: bool = True) -> Tensor:
        """Video x (B, 3, F, H, W) in [-1, 1], F = 4k+1 -> latent (B, 16, k+1, H/8, W/8).

        `chunked` encodes the `encode_chunks` (GroupNorm statistics per chunk, one chunk's activations in memory:
        a 49-frame clip in about a fifth of one call's memory), as diffusers' default encode does; otherwise all
        frames in one call, like SAT. Returns the posterior mean, or with `sample` a draw mean + exp(logvar/2)·ε
        (ε from `generator`, which must live on the module's device).
        """
        self._check_video(x)
        spans = encode_chunks(x.shape[2]) if chunked else [(0, x.shape[2])]
        mean, logvar = _run_in_chunks(self.encoder, self._cast(x), spans).chunk(2, dim=1)
        if not sample:
            return mean
        std = torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE))
        return mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)

    @torch.no_grad()
    def decode(self, z: Tensor, chunked: bool = True) -> Tensor:
        """Latent z (B, 16, T, h, w), already divided by the scale factor, T odd -> (B, 3, 4(T-1)+1, 8h, 8w).

        `chunked` decodes SAT's chunks (GroupNorm statistics per chunk, one chunk's activations in memory);
        otherwise all frames in one call. The carried context is cleared afterwards, even on error.
        """
        self._check_latent(z)
        spans = decode_chunks(z.shape[2]) if chunked else [(0, z.shape[2])]
        return _run_in_chunks(self.decoder, self._cast(z), spans)

    def _check_video(self, x: Tensor) -> None:
        s, t = self.spatial_factor, self.temporal_factor
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"video must be (B, {self.in_channels}, F, H, W), got {tuple(x.shape)}")
        if (x.shape[2] - 1) % t or x.shape[3] % s or x.shape[4] % s:
            raise ValueError(f"video of shape {tuple(x.shape)} needs F = {t}k+1 frames and H, W multiples of {s}")

    def _check_latent(self, z: Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.z_channels:
            raise ValueError(f"latent must be (B, {self.z_channels}, T, h, w), got {tuple(z.shape)}")
        if z.shape[2] % 2 == 0:
            raise ValueError(f"latent frame count T={z.shape[2]} must be odd: frame 0 decodes to 1 frame and "
                             f"the chunks after [0:3] take 2 frames each (SAT would drop the last frame)")
