"""AMT-S, the frame-interpolation network VBench's motion smoothness uses (Li et al., "AMT: All-Pairs Multi-Field
Transforms for Efficient Frame Interpolation", CVPR 2023), with VBench's parameter names, so that its `amt-s.pth`
loads strictly.

VBench's package requires torchvision and other pinned packages that cannot be installed beside this project's
torch, so the network is written here; tests/test_amt.py compares it with VBench's own module on the same random
weights (tests/amt_reference.py says how the reference was made). Only the inference path VBench runs is here:
both frames at full resolution (scale factor 1), the middle frame's prediction clamped to [0, 1].

Shapes: frames (B, 3, H, W) in [0, 1] with H and W multiples of 16 (at least 64; `motion_smoothness` pads);
features at 1/2 .. 1/16 of the size; flows (B, 2, h, w) in pixels at their level.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

CHANNELS = (20, 32, 44, 56)   # the image pyramid's widths, 1/2 .. 1/16
SKIP_CHANNELS = 20
NUM_FLOWS = 3
CORR_RADIUS, CORR_LEVELS = 3, 4
FEATURE_DIM = 84              # correlation features, at 1/8


def resize(x: torch.Tensor, scale_factor: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale_factor, mode="bilinear", align_corners=False)


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: each output pixel samples `image` at its position plus `flow` (border values outside)."""
    batch, _, height, width = flow.shape
    xs = torch.linspace(-1.0, 1.0, width).view(1, 1, 1, width).expand(batch, -1, height, -1)
    ys = torch.linspace(-1.0, 1.0, height).view(1, 1, height, 1).expand(batch, -1, -1, width)
    grid = torch.cat([xs, ys], 1).to(image)
    shift = torch.cat([flow[:, 0:1] / ((width - 1.0) / 2.0), flow[:, 1:2] / ((height - 1.0) / 2.0)], 1)
    return F.grid_sample(image, (grid + shift).permute(0, 2, 3, 1), mode="bilinear", padding_mode="border",
                         align_corners=True)


def conv_prelu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
               padding: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding), nn.PReLU(out_channels))


def pixel_grid(batch: int, height: int, width: int, device) -> torch.Tensor:
    """(B, 2, h, w): each position's (x, y)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack([xs, ys], dim=0).float()[None].repeat(batch, 1, 1, 1)


class Bottleneck(nn.Module):
    """1x1 - 3x3 (stride) - 1x1 convolutions with instance norms and a residual (projected when strided)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels // 4, kernel_size=1, padding=0)
        self.conv2 = nn.Conv2d(channels // 4, channels // 4, kernel_size=3, padding=1, stride=stride)
        self.conv3 = nn.Conv2d(channels // 4, channels, kernel_size=1, padding=0)
        self.norm1, self.norm2 = nn.InstanceNorm2d(channels // 4), nn.InstanceNorm2d(channels // 4)
        self.norm3 = nn.InstanceNorm2d(channels)
        self.downsample = None if stride == 1 else nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride), nn.InstanceNorm2d(channels))

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = F.relu(self.norm3(self.conv3(y)))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y)


class CorrelationEncoder(nn.Module):
    """Features at 1/8 of the frame for the all-pairs correlation (RAFT's small encoder, instance norms)."""

    def __init__(self, output_dim: int = FEATURE_DIM):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=7, stride=2, padding=3)
        self.norm1 = nn.InstanceNorm2d(32)
        self.layer1 = nn.Sequential(Bottleneck(32, 32), Bottleneck(32, 32))
        self.layer2 = nn.Sequential(Bottleneck(32, 64, stride=2), Bottleneck(64, 64))
        self.layer3 = nn.Sequential(Bottleneck(64, 96, stride=2), Bottleneck(96, 96))
        self.conv2 = nn.Conv2d(96, output_dim, kernel_size=1)

    def forward(self, frames: list) -> tuple:
        x = F.relu(self.norm1(self.conv1(torch.cat(frames))))
        x = self.conv2(self.layer3(self.layer2(self.layer1(x))))
        return x.split([len(frames[0])] * len(frames))


class ResBlock(nn.Module):
    """Five 3x3 convolutions; the 2nd and 4th refine only the last `side_channels` channels."""

    def __init__(self, channels: int, side_channels: int):
        super().__init__()
        self.side_channels = side_channels
        self.conv1 = conv_prelu(channels, channels)
        self.conv2 = conv_prelu(side_channels, side_channels)
        self.conv3 = conv_prelu(channels, channels)
        self.conv4 = conv_prelu(side_channels, side_channels)
        self.conv5 = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)
        self.prelu = nn.PReLU(channels)

    def _refine_side(self, x, conv):
        side = self.side_channels
        return torch.cat([x[:, :-side], conv(x[:, -side:])], 1)

    def forward(self, x):
        out = self.conv3(self._refine_side(self.conv1(x), self.conv2))
        out = self.conv5(self._refine_side(out, self.conv4))
        return self.prelu(x + out)


class ImagePyramid(nn.Module):
    """Features of one frame at 1/2, 1/4, 1/8 and 1/16 (`pyramid1` .. `pyramid4`)."""

    def __init__(self, channels=CHANNELS):
        super().__init__()
        previous = 3
        for level, width in enumerate(channels, 1):
            self.register_module(f"pyramid{level}", nn.Sequential(conv_prelu(previous, width, 3, 2, 1),
                                                                  conv_prelu(width, width, 3, 1, 1)))
            previous = width
        self.levels = len(channels)

    def forward(self, x) -> list:
        features = []
        for level in range(1, self.levels + 1):
            x = getattr(self, f"pyramid{level}")(x)
            features.append(x)
        return features


def decoder_block(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    """conv + PReLU, a ResBlock, then a transposed convolution to twice the size."""
    return nn.Sequential(conv_prelu(in_channels, hidden), ResBlock(hidden, SKIP_CHANNELS),
                         nn.ConvTranspose2d(hidden, out_channels, 4, 2, 1, bias=True))


class InitDecoder(nn.Module):
    """The coarsest level: both frames' features and the time -> flows (t to frame 0, t to frame 1) and features
    of the middle frame, at twice the size."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.convblock = decoder_block(in_channels * 2 + 1, in_channels * 2, out_channels + 4)

    def forward(self, f0, f1, embt):
        height, width = f0.shape[2:]
        out = self.convblock(torch.cat([f0, f1, embt.repeat(1, 1, height, width)], 1))
        flow0, flow1 = torch.chunk(out[:, :4], 2, 1)
        return flow0, flow1, out[:, 4:]


class IntermediateDecoder(nn.Module):
    """A finer level: the middle frame's features, both frames' features warped by the coarser flows, and those
    flows -> refined flows and features at twice the size."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.convblock = decoder_block(in_channels * 3 + 4, in_channels * 3, out_channels + 4)

    def forward(self, ft, f0, f1, flow0, flow1):
        out = self.convblock(torch.cat([ft, warp(f0, flow0), warp(f1, flow1), flow0, flow1], 1))
        delta0, delta1 = torch.chunk(out[:, :4], 2, 1)
        return delta0 + 2.0 * resize(flow0, 2.0), delta1 + 2.0 * resize(flow1, 2.0), out[:, 4:]


class MultiFlowDecoder(nn.Module):
    """The finest level: NUM_FLOWS flow pairs at full size, their blending masks and residual images."""

    def __init__(self, in_channels: int, num_flows: int = NUM_FLOWS):
        super().__init__()
        self.num_flows = num_flows
        self.convblock = decoder_block(in_channels * 3 + 4, in_channels * 3, 8 * num_flows)

    def forward(self, ft, f0, f1, flow0, flow1):
        n = self.num_flows
        out = self.convblock(torch.cat([ft, warp(f0, flow0), warp(f1, flow1), flow0, flow1], 1))
        delta0, delta1, mask, residual = torch.split(out, [2 * n, 2 * n, n, 3 * n], 1)
        flow0 = delta0 + 2.0 * resize(flow0, 2.0).repeat(1, n, 1, 1)
        flow1 = delta1 + 2.0 * resize(flow1, 2.0).repeat(1, n, 1, 1)
        return flow0, flow1, torch.sigmoid(mask), residual


class UpdateBlock(nn.Module):
    """Residual updates of a level's features and flows from their correlation lookups (AMT-S's small block);
    `scale_factor`: the level's size relative to the 1/8 correlation grid."""

    def __init__(self, cdim: int, scale_factor: int | None = None, hidden_dim: int = 76, flow_dim: int = 20,
                 corr_dim: int = 64, fc_dim: int = 68):
        super().__init__()
        corr_planes = CORR_LEVELS * (2 * CORR_RADIUS + 1) ** 2
        self.scale_factor = scale_factor
        self.convc1 = nn.Conv2d(2 * corr_planes, corr_dim, 1, padding=0)
        self.convf1 = nn.Conv2d(4, flow_dim * 2, 7, padding=3)
        self.convf2 = nn.Conv2d(flow_dim * 2, flow_dim, 3, padding=1)
        self.conv = nn.Conv2d(corr_dim + flow_dim, fc_dim, 3, padding=1)
        self.gru = self._head(fc_dim + 4 + cdim, hidden_dim, hidden_dim)
        self.feat_head = self._head(hidden_dim, hidden_dim, cdim)
        self.flow_head = self._head(hidden_dim, hidden_dim, 4)

    @staticmethod
    def _head(in_channels, hidden, out_channels):
        return nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.LeakyReLU(negative_slope=0.1),
                             nn.Conv2d(hidden, out_channels, 3, padding=1))

    def forward(self, features, flow, corr):
        scale = self.scale_factor
        features = features if scale is None else resize(features, 1 / scale)
        motion = torch.cat([F.leaky_relu(self.convc1(corr), 0.1),
                            F.leaky_relu(self.convf2(F.leaky_relu(self.convf1(flow), 0.1)), 0.1)], dim=1)
        out = self.gru(torch.cat([F.leaky_relu(self.conv(motion), 0.1), flow, features], dim=1))
        delta_features, delta_flow = self.feat_head(out), self.flow_head(out)
        if scale is not None:
            delta_features = resize(delta_features, scale)
            delta_flow = scale * resize(delta_flow, scale)
        return delta_features, delta_flow


def bilinear_sample(image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """grid_sample at pixel coordinates (..., 2) = (x, y); zeros outside."""
    height, width = image.shape[-2:]
    x, y = coords.split([1, 1], dim=-1)
    grid = torch.cat([2 * x / (width - 1) - 1, 2 * y / (height - 1) - 1], dim=-1)
    return F.grid_sample(image, grid, align_corners=True)


class BidirectionalCorrelation:
    """All-pairs correlation of two 1/8 feature maps and its pyramid, looked up around positions in both
    directions (frame 0's pixels in frame 1's map and the reverse)."""

    def __init__(self, fmap0: torch.Tensor, fmap1: torch.Tensor, num_levels: int = CORR_LEVELS,
                 radius: int = CORR_RADIUS):
        self.num_levels, self.radius = num_levels, radius
        batch, dim, height, width = fmap0.shape
        corr = torch.matmul(fmap0.view(batch, dim, -1).transpose(1, 2), fmap1.view(batch, dim, -1))
        corr = corr.view(batch, height, width, 1, height, width) / torch.sqrt(torch.tensor(dim).float())
        corr_t = corr.clone().permute(0, 4, 5, 3, 1, 2)
        self.pyramid = [corr.reshape(batch * height * width, 1, height, width)]
        self.pyramid_t = [corr_t.reshape(batch * height * width, 1, height, width)]
        for _ in range(num_levels - 1):
            self.pyramid.append(F.avg_pool2d(self.pyramid[-1], 2, stride=2))
            self.pyramid_t.append(F.avg_pool2d(self.pyramid_t[-1], 2, stride=2))

    def __call__(self, coords0: torch.Tensor, coords1: torch.Tensor) -> tuple:
        """Positions (B, 2, h, w) in frame 1's and frame 0's maps -> (B, levels·(2r+1)², h, w) lookups of each."""
        r = self.radius
        coords0, coords1 = coords0.permute(0, 2, 3, 1), coords1.permute(0, 2, 3, 1)
        batch, height, width, _ = coords0.shape
        steps = torch.linspace(-r, r, 2 * r + 1, device=coords0.device)
        # RAFT's window: (dy grid, dx grid) added to (x, y); the window is symmetric, so it covers the same offsets
        delta = torch.stack(torch.meshgrid(steps, steps, indexing="ij"), dim=-1).view(1, 2 * r + 1, 2 * r + 1, 2)
        lookups, lookups_t = [], []
        for level in range(self.num_levels):
            centre0 = coords0.reshape(batch * height * width, 1, 1, 2) / 2 ** level
            centre1 = coords1.reshape(batch * height * width, 1, 1, 2) / 2 ** level
            lookups.append(bilinear_sample(self.pyramid[level], centre0 + delta).view(batch, height, width, -1))
            lookups_t.append(bilinear_sample(self.pyramid_t[level], centre1 + delta).view(batch, height, width, -1))
        return tuple(torch.cat(found, dim=-1).permute(0, 3, 1, 2).contiguous().float()
                     for found in (lookups, lookups_t))


def combine_flows(comb_block: nn.Module, img0, img1, flow0, flow1, mask, residual, mean) -> torch.Tensor:
    """Warp both frames by each of the NUM_FLOWS flow pairs, blend by the masks, add the residuals and the mean
    back; the average of the candidates plus a learned correction of them."""
    batch, channels, height, width = flow0.shape
    n = channels // 2
    flow0 = flow0.reshape(batch, n, 2, height, width).reshape(-1, 2, height, width)
    flow1 = flow1.reshape(batch, n, 2, height, width).reshape(-1, 2, height, width)
    mask = mask.reshape(batch, n, 1, height, width).reshape(-1, 1, height, width)
    residual = residual.reshape(batch, n, 3, height, width).reshape(-1, 3, height, width)
    img0 = torch.stack([img0] * n, 1).reshape(-1, 3, height, width)
    img1 = torch.stack([img1] * n, 1).reshape(-1, 3, height, width)
    mean = torch.stack([mean] * n, 1).reshape(-1, 1, 1, 1)
    candidates = mask * warp(img0, flow0) + (1 - mask) * warp(img1, flow1) + mean + residual
    candidates = candidates.reshape(batch, n, 3, height, width)
    return candidates.mean(1) + comb_block(candidates.view(batch, -1, height, width))


class AMTS(nn.Module):
    """AMT-S: (img0, img1, embt) -> the frame at time embt between them (B, 3, H, W), clamped to [0, 1]."""

    def __init__(self, channels=CHANNELS, num_flows: int = NUM_FLOWS):
        super().__init__()
        self.feat_encoder = CorrelationEncoder()
        self.encoder = ImagePyramid(channels)
        self.decoder4 = InitDecoder(channels[3], channels[2])
        self.decoder3 = IntermediateDecoder(channels[2], channels[1])
        self.decoder2 = IntermediateDecoder(channels[1], channels[0])
        self.decoder1 = MultiFlowDecoder(channels[0], num_flows)
        self.update4 = UpdateBlock(channels[2])
        self.update3 = UpdateBlock(channels[1], 2)
        self.update2 = UpdateBlock(channels[0], 4)
        self.comb_block = nn.Sequential(nn.Conv2d(3 * num_flows, 6 * num_flows, 3, 1, 1), nn.PReLU(6 * num_flows),
                                        nn.Conv2d(6 * num_flows, 3, 3, 1, 1))

    @staticmethod
    def _lookup(correlation, grid, flow0, flow1, embt, downsample: int) -> tuple:
        """Correlation lookups at the positions the flows reach when extended linearly from t to each frame."""
        if downsample != 1:
            inverse = 1 / downsample
            flow0, flow1 = inverse * resize(flow0, inverse), inverse * resize(flow1, inverse)
        corr0, corr1 = correlation(grid + flow1 * (1.0 / embt), grid + flow0 * (1.0 / (1.0 - embt)))
        return torch.cat([corr0, corr1], dim=1), torch.cat([flow0, flow1], dim=1)

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, embt: torch.Tensor) -> torch.Tensor:
        """img0, img1: (B, 3, H, W) in [0, 1]; embt: (B, 1, 1, 1) time of the wanted frame (VBench: 0.5)."""
        mean = torch.cat([img0, img1], 2).mean(1, keepdim=True).mean(2, keepdim=True).mean(3, keepdim=True)
        img0, img1 = img0 - mean, img1 - mean
        batch, _, height, width = img0.shape
        grid = pixel_grid(batch, height // 8, width // 8, img0.device)
        correlation = BidirectionalCorrelation(*self.feat_encoder([img0, img1]))
        f0, f1 = self.encoder(img0), self.encoder(img1)  # 1/2, 1/4, 1/8, 1/16
        flow0, flow1, ft = self.decoder4(f0[3], f1[3], embt)
        stages = ((self.update4, 1, self.decoder3), (self.update3, 2, self.decoder2), (self.update2, 4, self.decoder1))
        for level, (update, downsample, decoder) in zip((2, 1, 0), stages):
            corr, flow = self._lookup(correlation, grid, flow0, flow1, embt, downsample)
            delta_ft, delta_flow = update(ft, flow, corr)
            delta0, delta1 = torch.chunk(delta_flow, 2, 1)
            decoded = decoder(ft + delta_ft, f0[level], f1[level], flow0 + delta0, flow1 + delta1)
            flow0, flow1, ft = decoded[:3]
        mask, residual = decoded[2:]
        return torch.clamp(combine_flows(self.comb_block, img0, img1, flow0, flow1, mask, residual, mean), 0, 1)
