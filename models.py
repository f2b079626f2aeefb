"""The networks of SRResNet and SRGAN (Ledig et al., CVPR 2017), and nothing else.

    SRResNet / Generator  LR image (ImageNet-normed) -> SR image in [-1, 1], `scaling_factor` x larger
    Discriminator         HR or SR image (ImageNet-normed) -> one logit per image ("is it natural?")
    TruncatedVGG19        image (ImageNet-normed) -> VGG19 feature map phi_{i,j}, for the content loss
    DamageNet             LR image in [0, 1] + its JPEG coarseness -> one logit per level of damage

Importing this module builds nothing, loads nothing and touches no device.
"""
import itertools
import math
import os

import torch
import torch.nn.functional as F
from torch import nn


class ConvolutionalBlock(nn.Module):
    """Convolution, then optional batch norm, then an optional activation.

    Args:
        in_channels, out_channels: channels in and out.
        kernel_size: square kernel side; padding keeps the size when stride is 1.
        stride: 1, or 2 to halve the height and width.
        batch_norm: add a BatchNorm2d after the convolution.
        activation: None, 'prelu', 'leakyrelu' or 'tanh'.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, batch_norm=False, activation=None):
        super().__init__()
        activations = {'prelu': nn.PReLU, 'leakyrelu': lambda: nn.LeakyReLU(0.2), 'tanh': nn.Tanh}
        if activation is not None and activation not in activations:
            raise ValueError(f"activation must be None or one of {sorted(activations)}, got {activation!r}")
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        if activation is not None:
            layers.append(activations[activation]())
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        """(N, in_channels, H, W) -> (N, out_channels, H / stride, W / stride)."""
        return self.conv_block(x)


class SubPixelConvolutionalBlock(nn.Module):
    """Upscale x2 by sub-pixel convolution: a convolution makes 4 times the channels, and a
    pixel shuffle rearranges each group of 4 channels into a 2x2 patch of new pixels.

    All the learned work happens at the low resolution, which is why it is cheap.
    """

    def __init__(self, kernel_size=3, n_channels=64, scaling_factor=2):
        super().__init__()
        self.conv = nn.Conv2d(n_channels, n_channels * scaling_factor ** 2, kernel_size, padding=kernel_size // 2)
        self.pixel_shuffle = nn.PixelShuffle(upscale_factor=scaling_factor)
        self.prelu = nn.PReLU()

    def forward(self, x):
        """(N, C, H, W) -> (N, C, H * s, W * s)."""
        x = self.conv(x)  # (N, C * s * s, H, W)
        x = self.pixel_shuffle(x)  # (N, C, H * s, W * s)
        return self.prelu(x)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutional blocks (BN + PReLU, then BN alone) with a skip connection across
    them, so the block only has to learn a correction to its input."""

    def __init__(self, kernel_size=3, n_channels=64):
        super().__init__()
        self.conv_block1 = ConvolutionalBlock(n_channels, n_channels, kernel_size, batch_norm=True, activation='prelu')
        self.conv_block2 = ConvolutionalBlock(n_channels, n_channels, kernel_size, batch_norm=True, activation=None)

    def forward(self, x):
        """(N, C, H, W) -> (N, C, H, W)."""
        return x + self.conv_block2(self.conv_block1(x))


class SRResNet(nn.Module):
    """The super-resolution residual network.

    Args:
        large_kernel_size: kernel of the first and last convolutions (paper: 9).
        small_kernel_size: kernel of every other convolution (paper: 3).
        n_channels: feature channels throughout (paper: 64).
        n_blocks: residual blocks (paper: 16).
        scaling_factor: 2, 4 or 8; made of log2(scaling_factor) x2 sub-pixel blocks.

    Input: LR images, ImageNet-normed, (N, 3, h, w). Output: (N, 3, h * s, w * s) in [-1, 1].
    """

    def __init__(self, large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=16, scaling_factor=4):
        super().__init__()
        if scaling_factor not in (2, 4, 8):
            raise ValueError(f"scaling_factor must be 2, 4 or 8, got {scaling_factor}")
        self.conv_block1 = ConvolutionalBlock(3, n_channels, large_kernel_size, activation='prelu')
        self.residual_blocks = nn.Sequential(*[ResidualBlock(small_kernel_size, n_channels) for _ in range(n_blocks)])
        self.conv_block2 = ConvolutionalBlock(n_channels, n_channels, small_kernel_size, batch_norm=True)
        n_upscales = int(math.log2(scaling_factor))
        self.subpixel_convolutional_blocks = nn.Sequential(
            *[SubPixelConvolutionalBlock(small_kernel_size, n_channels, 2) for _ in range(n_upscales)])
        self.conv_block3 = ConvolutionalBlock(n_channels, 3, large_kernel_size, activation='tanh')
        # Feature columns that one column of the output depends on, each side: every layer of the
        # upsampling end reads kernel_size // 2 pixels at its own resolution; +1 for the sub-pixel
        # phases. Column strips (in_column_strips) read this much more on each inner side.
        reach = sum(small_kernel_size // 2 / 2 ** i for i in range(n_upscales)) + large_kernel_size // 2 / scaling_factor
        self.upsampling_margin = math.ceil(reach) + 1
        self.strip_width = 0  # > 0: upsample in column strips of about this many columns (inference on a CPU)

    def forward(self, lr_imgs):
        """(N, 3, h, w) ImageNet-normed -> (N, 3, h * s, w * s) in [-1, 1]."""
        output = self.features(lr_imgs)  # (N, 64, h, w)
        if self.strip_width:  # the same numbers, faster on a CPU (in_column_strips)
            return in_column_strips(self.upsample, output, self.strip_width, self.upsampling_margin)
        return self.upsample(output)

    def features(self, lr_imgs):
        """The low-resolution trunk: (N, 3, h, w) ImageNet-normed -> (N, 64, h, w)."""
        output = self.conv_block1(lr_imgs)  # (N, 64, h, w)
        residual = output
        output = self.residual_blocks(output)  # (N, 64, h, w)
        return self.conv_block2(output) + residual  # (N, 64, h, w): the long skip connection

    def upsample(self, features):
        """The high-resolution end: (N, 64, h, w) -> (N, 3, h * s, w * s) in [-1, 1]."""
        output = self.subpixel_convolutional_blocks(features)  # (N, 64, h * s, w * s)
        return self.conv_block3(output)  # (N, 3, h * s, w * s), in [-1, 1]


class Generator(SRResNet):
    """The SRGAN generator. It is an SRResNet, so a trained SRResNet's state_dict loads into it
    as it is, which gives adversarial training a good start."""


class DamageNet(nn.Module):
    """A small classifier of how damaged an LR image is: one logit per level of damage (clean,
    light, medium, heavy, JPEG-only: degradations.LADDER_LEVELS), so that super_resolve.py can
    choose how far to blend toward the real-photo models (denoise='auto').

    Noise, JPEG blocks and blur live in the finest pixels, so the first convolutions keep the full
    resolution; the features are then averaged over the whole image (any size works). The JPEG
    coarseness (degradations.jpeg_scale_of_pixels, or a JPEG file's own table) joins them before
    the last layer: the 8x8 grid of a JPEG is a fact the pixels show only faintly to small kernels.

    Input: (N, 3, h, w) in [0, 1] and (N,) JPEG scales. Output: (N, n_levels) logits.
    """

    def __init__(self, n_levels=5, n_channels=32):
        super().__init__()
        c = n_channels
        self.features = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(4 * c + 1, n_levels)

    def forward(self, lr_imgs, jpeg_scales):
        """(N, 3, h, w) in [0, 1], (N,) -> (N, n_levels) logits."""
        features = self.features(lr_imgs - 0.5)  # (N, 2c, h / 4, w / 4)
        pooled = torch.cat([features.mean((2, 3)), features.std((2, 3)),  # (N, 2c) each: how much, how uneven
                            jpeg_scales.view(-1, 1).to(features.dtype)], dim=1)  # (N, 4c + 1)
        return self.classifier(pooled)  # (N, n_levels)


class Discriminator(nn.Module):
    """The SRGAN discriminator: a binary classifier of natural (HR) against super-resolved images.

    Args:
        kernel_size: kernel of every convolution (paper: 3).
        n_channels: channels of the first block, doubled every second block (paper: 64).
        n_blocks: convolutional blocks (paper: 8); every other one halves the size (stride 2).
        fc_size: width of the hidden linear layer (paper: 1024).

    Input: (N, 3, H, W) ImageNet-normed, H and W at least 96. Output: (N,) logits.
    """

    def __init__(self, kernel_size=3, n_channels=64, n_blocks=8, fc_size=1024):
        super().__init__()
        blocks = []
        in_channels = 3
        for i in range(n_blocks):
            out_channels = (n_channels if i == 0 else in_channels * 2) if i % 2 == 0 else in_channels
            blocks.append(ConvolutionalBlock(in_channels, out_channels, kernel_size, stride=1 + i % 2,
                                             batch_norm=i != 0, activation='leakyrelu'))
            in_channels = out_channels
        self.conv_blocks = nn.Sequential(*blocks)
        # A fixed 6x6 grid (96 / 2**4) whatever the input size, so the linear layer always fits.
        self.adaptive_pool = nn.AdaptiveAvgPool2d((6, 6))
        self.fc1 = nn.Linear(out_channels * 6 * 6, fc_size)
        self.leaky_relu = nn.LeakyReLU(0.2)
        self.fc2 = nn.Linear(fc_size, 1)

    def forward(self, imgs):
        """(N, 3, H, W) ImageNet-normed -> (N,) logits; sigmoid(logit) = P(natural)."""
        output = self.conv_blocks(imgs)  # (N, 512, H / 16, W / 16)
        output = self.adaptive_pool(output)  # (N, 512, 6, 6)
        output = self.leaky_relu(self.fc1(output.flatten(1)))  # (N, fc_size)
        return self.fc2(output).squeeze(1)  # (N,)


class TruncatedVGG19(nn.Module):
    """VGG19 cut after the j-th convolution (and its ReLU) before the i-th max-pool: the paper's
    phi_{i,j} feature space, where the SRGAN's content loss is measured. Its weights are frozen.

    Args:
        i, j: which feature map (paper: i=5, j=4, the last convolution of VGG19).
        weights: 'imagenet' for torchvision's ImageNet weights (from its cache, or downloaded),
            a path to a local VGG19 state_dict file, or '' for random weights (tests, offline).

    Input: (N, 3, H, W) ImageNet-normed. Output: (N, 512, H / 16, W / 16) for i=5, j=4.
    """

    def __init__(self, i=5, j=4, weights='imagenet'):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers  # imported here: `import models` stays light
        # Find the weights before building VGG19 (seconds of random initialisation), so that
        # missing weights are reported at once.
        state_dict = None
        if weights == 'imagenet':
            state_dict = _imagenet_vgg19_state_dict()
        elif weights:
            if not os.path.isfile(weights):
                raise FileNotFoundError(f"VGG19 weights file not found: {weights}")
            try:
                state_dict = torch.load(weights, map_location='cpu', weights_only=True)
            except Exception as error:  # a text file, a torn download: pickle's many errors, one message
                raise ValueError(f"{weights} is not a VGG19 state_dict file that torch.load can read "
                                 f"({type(error).__name__}: {error})") from None
            if not isinstance(state_dict, dict) or not any(key.startswith('features.') for key in state_dict):
                raise ValueError(f"{weights} is not a VGG19 state_dict: it has no 'features.*' weights")
        # VGG19's convolutional part alone: its 120M-parameter classifier is never used here.
        features = make_layers(cfgs['E'])
        if state_dict is not None:
            features.load_state_dict({key[len('features.'):]: value for key, value in state_dict.items()
                                      if key.startswith('features.')})

        # Walk the feature layers, counting max-pools and the convolutions since the last one.
        maxpool_counter, conv_counter, end = 0, 0, None
        for index, layer in enumerate(features):
            if isinstance(layer, nn.Conv2d):
                conv_counter += 1
            if isinstance(layer, nn.MaxPool2d):
                maxpool_counter += 1
                conv_counter = 0
            if maxpool_counter == i - 1 and conv_counter == j:
                end = index + 2  # keep the ReLU that follows this convolution
                break
        if end is None:
            raise ValueError(f"VGG19 has no convolution j={j} before max-pool i={i}")
        self.truncated_vgg19 = nn.Sequential(*list(features.children())[:end])
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        """Stay in eval mode: VGG19 has no BatchNorm or dropout, but a frozen net should say so."""
        return super().train(False)

    def forward(self, imgs):
        """(N, 3, H, W) ImageNet-normed -> (N, 512, H / 16, W / 16) features."""
        return self.truncated_vgg19(imgs)


def _imagenet_vgg19_state_dict():
    """torchvision's ImageNet VGG19 weights, through its own weights API and cache, with a clear
    error instead of a download traceback when they are neither cached nor reachable."""
    from torchvision.models import VGG19_Weights
    weights = VGG19_Weights.IMAGENET1K_V1
    file_name = os.path.basename(weights.url)
    cache_dir = os.path.join(torch.hub.get_dir(), 'checkpoints')
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as error:  # URLError, socket errors, HTTP errors: all mean "not available here"
        raise RuntimeError(
            f"The ImageNet VGG19 weights are not in torchvision's cache and could not be downloaded "
            f"({type(error).__name__}). Download {weights.url} on a machine with internet access and "
            f"put {file_name} in {cache_dir} (the TORCH_HOME cache), or pass a local VGG19 state_dict "
            f"file as the weights (vgg19_weights='/path/to/{file_name}' in train_srgan.py).") from None


def fold_batchnorm(model):
    """Fold every eval-mode BatchNorm2d into the convolution before it, for inference.

    A BatchNorm in eval mode is a fixed per-channel affine map, y = a * x + b, so it can be
    merged into the preceding convolution's weights and bias: one layer less to run, the same
    output up to float rounding. Works in place on ConvolutionalBlocks and returns the model.
    """
    for module in model.modules():
        if isinstance(module, ConvolutionalBlock) and len(module.conv_block) > 1 \
                and isinstance(module.conv_block[1], nn.BatchNorm2d):
            conv, bn = module.conv_block[0], module.conv_block[1]
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
            with torch.no_grad():
                fused.weight.copy_(conv.weight * scale[:, None, None, None])
                fused.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
            fused.to(device=conv.weight.device, dtype=conv.weight.dtype)
            module.conv_block = nn.Sequential(fused, *list(module.conv_block)[2:])
    return model


def column_strips(width, margin, strip_width, step=8):
    """Column strips that cover `width` columns, for in_column_strips.

    Returns boxes (start, stop, keep_from, keep_to): a strip reads the columns [start, stop), and its
    output is kept for [keep_from, keep_to), at least `margin` columns inside its inner edges, so
    the zero padding there changes nothing kept. There are ceil(width / strip_width) strips, each a
    multiple of `step` columns wide (convolutions run faster at such widths, as
    super_resolve.TILE_WIDTH_STEP found), their widths at most one step apart: as few columns in all
    as that allows (256 columns, margin 4, strips of about 96: 88 + 88 + 96 = 272, not 3 x 96 = 288).
    """
    n = math.ceil(width / strip_width) if strip_width > 0 else 1
    needed = width + 2 * margin * (n - 1)  # neighbours overlap by at least 2 * margin
    steps = -(-needed // step)  # the columns read, in steps, shared out below
    widths = [(steps // n + (i >= n - steps % n)) * step for i in range(n)]  # the wider ones last
    if n == 1 or widths[-1] >= width:
        return [(0, width, 0, width)]
    # The columns read beyond what is needed are shared among the n - 1 overlaps.
    extra = sum(widths) - needed
    starts = [0]
    for i in range(n - 1):
        starts.append(starts[-1] + widths[i] - 2 * margin - extra * (i + 1) // (n - 1) + extra * i // (n - 1))
    # Each neighbour keeps up to the middle of the overlap.
    edges = [0] + [(starts[i] + widths[i] + starts[i + 1]) // 2 for i in range(n - 1)] + [width]
    return [(start, start + w, edges[i], edges[i + 1]) for i, (start, w) in enumerate(zip(starts, widths))]


def in_column_strips(upsample, features, strip_width, margin):
    """upsample(features), computed on narrow column strips of the features and put together.

    The upsampling end's layers run at 2x and 4x the trunk's resolution, on maps 4-16 times its
    size; on a CPU a convolution slows down when a few rows of its input no longer fit in the
    core's cache (a 256-column tile: 512 columns of 256 channels at 2x). Narrow strips keep them
    there (in bf16 on a CPU with AMX: super_resolve.STRIP_WIDTHS has the widths and what they
    gained, results/README.md the runs). Strips read `margin` more columns than they keep, so the
    output equals upsample(features) up to float rounding.

    upsample: (N, C, h, w) features -> (N, 3, h * s, w * s); features: (N, C, h, w), a tensor.
    """
    boxes = column_strips(features.shape[-1], margin, strip_width)
    if len(boxes) == 1:
        return upsample(features)
    pieces = []
    for start, stop, keep_from, keep_to in boxes:
        output = upsample(features[..., start:stop])  # (N, 3, h * s, (stop - start) * s)
        scale = output.shape[-1] // (stop - start)
        pieces.append(output[..., (keep_from - start) * scale:(keep_to - start) * scale])
    return torch.cat(pieces, -1)  # (N, 3, h * s, w * s)


class ShuffledConv2d(nn.Module):
    """A convolution of a pixel-shuffled image, computed before the shuffle instead.

    conv(pixel_shuffle(x, r)) equals pixel_shuffle(conv'(x), r), where conv' works on the
    r*r-times-smaller image and its kernel is conv's kernel rearranged by phase: each output phase
    reads each input phase at fixed offsets. For the SRResNet's last layer (64 -> 3 channels, 9x9,
    on the largest image) conv' is 256 -> 12 channels, 5x5, on a quarter of the pixels: about 1.2x
    the arithmetic, in a shape that convolution libraries run much faster. Its output channels are
    padded with zero filters to a multiple of `pad_to` (CPU libraries run 16 far better than 12),
    which are cut off again.

    The module keeps conv's own weight and bias Parameters and rearranges them at every call, which
    is differentiable and cheap (a gather of ~100k numbers). So a model trains through it, the
    optimizer keeps updating the same tensors, and the state_dict keys do not change.

    Args:
        conv: the nn.Conv2d to replace: stride 1, odd square kernel, padding kernel_size // 2.
        upscale_factor: r, of the pixel shuffle that conv reads.
        pad_to: round the output channels (conv's x r*r) up to a multiple of this.
    """

    def __init__(self, conv, upscale_factor, pad_to=16):
        super().__init__()
        r, k = upscale_factor, conv.kernel_size[0]
        if conv.stride != (1, 1) or conv.padding != (k // 2, k // 2) or conv.kernel_size != (k, k) \
                or k % 2 == 0 or conv.groups != 1 or conv.dilation != (1, 1):
            raise ValueError("ShuffledConv2d takes a stride-1, 'same'-padded, odd square kernel, ungrouped convolution")
        self.weight, self.bias = conv.weight, conv.bias  # the same Parameters, under the same names
        c_out, c_in = conv.out_channels, conv.in_channels
        # HR tap ky of output phase py reads the HR offset d = py + ky - k // 2, which is
        # LR offset d // r of input phase d % r.
        offsets = [p + tap - k // 2 for p in range(r) for tap in range(k)]
        low, high = min(d // r for d in offsets), max(d // r for d in offsets)
        side = high - low + 1  # the small kernel's side: 5 for k = 9, r = 2
        # index[o, py, px, i, qy, qx, sy, sx]: where in weight.flatten() that tap of conv' comes
        # from; the extra slot weight.numel() holds a zero (taps that read nothing).
        zero_slot = conv.weight.numel()
        index = torch.full((c_out, r, r, c_in, r, r, side, side), zero_slot, dtype=torch.long)
        # (c_out, c_in): where weight[o, i, 0, 0] is in weight.flatten()
        channel_base = (torch.arange(c_out)[:, None] * c_in + torch.arange(c_in)[None, :]) * k * k
        for py, ky, px, kx in itertools.product(range(r), range(k), range(r), range(k)):
            dy, dx = py + ky - k // 2, px + kx - k // 2
            index[:, py, px, :, dy % r, dx % r, dy // r - low, dx // r - low] = channel_base + ky * k + kx
        self.n_out = c_out * r * r
        n_padded = -(-self.n_out // pad_to) * pad_to
        index = torch.cat([index.reshape(self.n_out, c_in * r * r, side, side),
                           torch.full((n_padded - self.n_out, c_in * r * r, side, side), zero_slot)])
        bias_index = torch.cat([torch.arange(c_out).repeat_interleave(r * r),
                                torch.full((n_padded - self.n_out,), c_out)])  # slot c_out: a zero
        # Not persistent: derived from the weights' shape, so the state_dict stays conv's.
        self.register_buffer('kernel_index', index.to(conv.weight.device), persistent=False)
        self.register_buffer('bias_index', bias_index.to(conv.weight.device), persistent=False)
        # Odd kernels and r = 2 (the SRResNet) pad alike on both sides, in the convolution; else F.pad.
        self.conv_padding = high if -low == high else 0
        self.padding = (0, 0, 0, 0) if -low == high else (-low, high, -low, high)  # left, right, top, bottom
        self.upscale_factor = r

    def forward(self, x):
        """(N, C_in * r * r, h, w), before the shuffle -> (N, C_out, h * r, w * r)."""
        zero = self.weight.new_zeros(1)
        # (padded C_out * r * r, C_in * r * r, 5, 5): gathered, so gradients flow back to self.weight
        kernel = torch.cat([self.weight.reshape(-1), zero])[self.kernel_index]
        bias = None if self.bias is None else torch.cat([self.bias, zero])[self.bias_index]  # (padded C_out * r * r,)
        if x.is_contiguous(memory_format=torch.channels_last):
            kernel = kernel.contiguous(memory_format=torch.channels_last)
        x = F.pad(x, self.padding) if any(self.padding) else x
        output = F.conv2d(x, kernel, bias, padding=self.conv_padding)  # (N, padded C_out * r * r, h, w)
        return F.pixel_shuffle(output[:, :self.n_out], self.upscale_factor)  # (N, C_out, h * r, w * r)


def shuffle_last_convolution(model):
    """Make an SRResNet's last convolution read the last sub-pixel block's output before its pixel
    shuffle: the same function up to float rounding, and on a CPU about 2x faster for that layer
    (a fifth of the whole model's time). Used for inference and, since it is differentiable and
    keeps the same parameters and state_dict keys, for training too.

    The block's PReLU has a single parameter, so it commutes with the shuffle: the block keeps its
    convolution and PReLU, and conv_block3's convolution becomes a ShuffledConv2d that shuffles
    after it convolves. Works in place and returns the model; leaves a model whose PReLU is
    per-channel, or that was converted already, as it is.
    """
    last_block = model.subpixel_convolutional_blocks[-1]
    if last_block.prelu.num_parameters != 1 or not isinstance(last_block.pixel_shuffle, nn.PixelShuffle):
        return model
    upscale_factor = last_block.pixel_shuffle.upscale_factor
    last_block.pixel_shuffle = nn.Identity()
    model.conv_block3.conv_block[0] = ShuffledConv2d(model.conv_block3.conv_block[0], upscale_factor)
    return model


def freeze_shuffled_convolutions(model):
    """Replace every ShuffledConv2d by a plain Conv2d holding the kernel it gathers, then the pixel
    shuffle: the same numbers, with no gather of the weights at every run (for export and
    inference only: the Conv2d's weights are copies). Works in place and returns the model."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, ShuffledConv2d):
                zero = child.weight.new_zeros(1)
                kernel = torch.cat([child.weight.detach().reshape(-1), zero])[child.kernel_index][:child.n_out]
                bias = torch.cat([child.bias.detach(), zero])[child.bias_index][:child.n_out]  # the padding cut off
                conv = nn.Conv2d(kernel.shape[1], child.n_out, kernel.shape[-1], padding=child.conv_padding)
                with torch.no_grad():
                    conv.weight.copy_(kernel)  # (C_out * r * r, C_in * r * r, 5, 5) for the SRResNet's last layer
                    conv.bias.copy_(bias)
                layers = [nn.ZeroPad2d(child.padding)] if any(child.padding) else []
                setattr(module, name, nn.Sequential(*layers, conv, nn.PixelShuffle(child.upscale_factor)))
    return model


def activation_before_shuffle(model):
    """Apply each sub-pixel block's activation before its pixel shuffle instead of after: the same
    numbers where it has a single slope (it acts on each value alone; a shuffle only moves values).
    An inference runtime then joins it to the convolution before it: in OpenVINO bf16, 480x270 ran
    3-5% faster (best of 7; 1-4% by the median) on a 2-core Xeon with AMX. Works in place and
    returns the model; a block whose shuffle moved into the next layer (shuffle_last_convolution),
    or whose PReLU is per-channel, stays as it is.
    """
    for block in model.subpixel_convolutional_blocks:
        single_slope = isinstance(block.prelu, nn.LeakyReLU) or getattr(block.prelu, 'num_parameters', 0) == 1
        if single_slope and isinstance(block.pixel_shuffle, nn.PixelShuffle):
            block.prelu = nn.Sequential(block.prelu, block.pixel_shuffle)  # the state_dict keys stay
            block.pixel_shuffle = nn.Identity()
    return model


class _SingleSlopePReLU(torch.autograd.Function):
    """prelu(x, slope) for one slope, whose backward is written with a leaky ReLU's backward."""

    @staticmethod
    def forward(ctx, x, slope):
        ctx.save_for_backward(x, slope)
        return F.prelu(x, slope)

    @staticmethod
    def backward(ctx, grad):
        x, slope = ctx.saved_tensors
        # d/dx: grad where x > 0, else slope * grad; the same numbers as aten's prelu backward.
        grad_x = torch.ops.aten.leaky_relu_backward(grad, x, slope.item(), False)
        # d/d slope: the sum of grad * min(x, 0) (torch accumulates a bf16 sum in float32).
        grad_slope = (grad * x.clamp(max=0)).sum()
        return grad_x, grad_slope.reshape(slope.shape)


class CPUFastPReLU(nn.PReLU):
    """nn.PReLU with one slope, the same parameter and state_dict, whose backward runs 2.6-6x
    faster on a CPU.

    On a CPU, aten's PReLU backward works element by element without vectorising: in an SRResNet
    training step under bf16 autocast it took a third of the whole step (a 2-core Xeon with AMX).
    The leaky ReLU's backward and a sum compute the same derivatives with vectorised kernels. It
    reads the slope as a Python number, a host sync that a GPU should not pay, so on other
    devices, and for per-channel slopes, this is nn.PReLU unchanged.
    """

    def forward(self, x):
        if x.device.type != 'cpu' or self.num_parameters != 1:
            return super().forward(x)
        # What autocast would do to prelu (it computes prelu in the autocast dtype), done here,
        # since autocast does not look inside a custom autograd Function's inputs.
        dtype = torch.get_autocast_dtype('cpu') if torch.is_autocast_enabled('cpu') else x.dtype
        with torch.autocast('cpu', enabled=False):
            return _SingleSlopePReLU.apply(x.to(dtype), self.weight.to(dtype))


def fast_prelu_backward(model):
    """Turn every single-slope nn.PReLU of a model into a CPUFastPReLU, for training on a CPU: the
    same function, parameters and state_dict keys, and the same gradients (the slope's up to the
    order of a sum). Works in place and returns the model."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is nn.PReLU and child.num_parameters == 1:
                fast = CPUFastPReLU(1)
                fast.weight = child.weight  # the same Parameter, so an optimizer made before still updates it
                setattr(module, name, fast)
    return model


def inplace_activations(model):
    """Replace every single-parameter PReLU by a LeakyReLU of the same slope that works in place,
    for inference: the same numbers, without allocating a second copy of each activation (on a
    CPU, a fresh buffer of the largest sizes costs more in page faults than the activation itself).
    A model converted this way can no longer be trained. Works in place and returns the model."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.PReLU) and child.num_parameters == 1:
                setattr(module, name, nn.LeakyReLU(child.weight.item(), inplace=True))
    return model
