"""Realistic degradations: how a camera, resizing software and a JPEG encoder damage a photo, in
the style of Real-ESRGAN's second-order model (Wang et al., ICCVW 2021), for training a model
that upscales real photos instead of clean bicubic shrinks.

The paper's protocol (and our default, degradation='bicubic') makes each LR image with one clean
bicubic downscale. Photos people bring have been blurred by a lens, resized, sharpened by noise
and compressed, often twice (a phone's JPEG, re-saved by a web site). A model trained only on
bicubic shrinks learns to sharpen whatever it sees, JPEG blocks and noise included. Here each LR
crop goes through that damage twice:

    stage 1: blur -> random resize -> Gaussian or Poisson noise -> JPEG
    stage 2: blur (sometimes) -> random resize -> noise -> then, in either order,
             [resize to HR / s + sinc filter] and [JPEG]

degradation='ladder' draws for each sample one level of damage from none to heavy (clean, light,
medium, heavy = the chain above, JPEG-only): LADDER_LEVELS, below. The last section reads damage
back from an image (its JPEG coarseness; the crops a damage classifier reads; the denoise value
super_resolve.py's denoise='auto' takes from the classifier's reading).

Every draw for a sample comes from a random.Random keyed by a string of the caller's (seed,
sample position) or the image's name, so the same key always gives the same LR bytes (exact
resume, and a fixed degraded test protocol). The blur, resize and noise run in tensor operations
on whatever device the images are on; JPEG is the real libjpeg codec through torchvision.io, on
the CPU, so every machine (GPU or not) gets the same bytes for the same input.

Importing this module picks no device, creates no tensor and reads no file.
"""
import functools
import math
import random
import warnings

import numpy as np
import torch
import torch.nn.functional as F

import utils

DEGRADATIONS = ('bicubic', 'realistic', 'ladder')  # 'bicubic': the paper's clean shrink (utils.ImageTransforms)

# ----------------------------------------------------------------------------------------------
# The ranges and probabilities. Source: Real-ESRGAN's options/train_realesrnet_x4plus.yml and
# realesrgan/data/realesrgan_dataset.py (xinntao/Real-ESRGAN @ 0011624), the published options of
# its RealESRNet x4plus model. Sigmas, noise and sizes are in pixels of the image
# the stage works on; noise sigmas in grey levels of 255.
# ----------------------------------------------------------------------------------------------
KERNEL_SIZES = (7, 9, 11, 13, 15, 17, 19, 21)  # kernel_range: blur kernel sides, drawn uniformly
KERNEL_TYPES = ('iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso')
RESIZE_MODES = ('area', 'bilinear', 'bicubic')  # F.interpolate modes, drawn uniformly
FIRST_STAGE = {
    'blur_prob': 1.0,  # stage 1 always blurs
    'kernel_prob': (0.45, 0.25, 0.12, 0.03, 0.12, 0.03),  # of KERNEL_TYPES
    'sinc_prob': 0.1,  # a sinc (ringing) filter instead of a Gaussian-like kernel
    'blur_sigma': (0.2, 3.0),  # Gaussian sigma range
    'betag_range': (0.5, 4.0),  # generalised Gaussian shape
    'betap_range': (1.0, 2.0),  # plateau shape
    'resize_prob': (0.2, 0.7, 0.1),  # up, down, keep
    'resize_range': (0.15, 1.5),  # scale range of the whole image
    'gaussian_noise_prob': 0.5,  # Gaussian noise, else Poisson
    'noise_range': (1.0, 30.0),  # Gaussian sigma, grey levels
    'poisson_scale_range': (0.05, 3.0),
    'gray_noise_prob': 0.4,  # the same noise on R, G and B (luminance noise)
    'jpeg_range': (30, 95),  # JPEG quality
}
SECOND_STAGE = {
    'blur_prob': 0.8,  # second_blur_prob
    'kernel_prob': (0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
    'sinc_prob': 0.1,
    'blur_sigma': (0.2, 1.5),
    'betag_range': (0.5, 4.0),
    'betap_range': (1.0, 2.0),
    'resize_prob': (0.3, 0.4, 0.3),
    'resize_range': (0.3, 1.2),  # relative to the final LR size
    'gaussian_noise_prob': 0.5,
    'noise_range': (1.0, 25.0),
    'poisson_scale_range': (0.05, 2.5),
    'gray_noise_prob': 0.4,
    'jpeg_range': (30, 95),
}
FINAL_SINC_PROB = 0.8  # the last resize is followed by a sinc filter this often (else no filter)
# Not copied from Real-ESRGAN: it sharpens its HR targets (unsharp mask, gt_usm) and uses a
# differentiable JPEG approximation; our HR target is the clean crop and the JPEG is the real codec.


# ----------------------------------------------------------------------------------------------
# The ladder: damage from none to heavy. 'heavy' is the chain above; the lighter rungs are one
# stage each (blur, shrink, noise, JPEG) with narrower ranges, so a model trained on the ladder
# sees photos as they come, most of them far less damaged than Real-ESRGAN's distribution.
# 'ladder' draws one rung per sample (LADDER_WEIGHTS); 'ladder:<rung>' always takes that rung
# (eval.py's fixed levels). The ranges were set before any model was trained or scored on them.
# ----------------------------------------------------------------------------------------------
LADDER_LEVELS = ('clean', 'light', 'medium', 'heavy', 'jpeg')
LADDER_WEIGHTS = (0.15, 0.2, 0.25, 0.3, 0.1)  # how often training draws each rung
LIGHT = dict(FIRST_STAGE, blur_sigma=(0.2, 1.2), sinc_prob=0., noise_range=(1., 4.), poisson_scale_range=(0.05, 0.4),
             jpeg_range=(70, 95))  # a little blur, weak noise, a good JPEG; Pillow's bicubic shrink
MEDIUM = dict(FIRST_STAGE, blur_sigma=(0.5, 2.0), sinc_prob=0., noise_range=(3., 12.), poisson_scale_range=(0.3, 1.5),
              jpeg_range=(40, 75))  # a softer lens, a shrink by any filter, clear noise, a middling JPEG
JPEG_ONLY_RANGE = (20, 60)  # 'jpeg': Pillow's bicubic shrink, then one low-quality JPEG


def check_degradation(degradation):
    """Refuse an unknown degradation name before any work (a ValueError naming the choices)."""
    rungs = tuple(f'ladder:{level}' for level in LADDER_LEVELS)
    if degradation not in DEGRADATIONS + rungs:
        raise ValueError(f"degradation must be one of {DEGRADATIONS + rungs}, got {degradation!r}")


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _kernel_grid(size):
    """(size, size) float64 x and y pixel offsets from the kernel's centre (read-only: shared)."""
    steps = np.arange(size, dtype=np.float64) - (size - 1) / 2
    grid = np.meshgrid(steps, steps, indexing='xy')  # x varies along a row, y down a column
    for axis in grid:
        axis.flags.writeable = False
    return grid


def _finish_kernel(kernel):
    """kernel (size, size) float64 normalised to sum 1, as a torch tensor.

    A narrow Gaussian's far tail underflows to float32 denormals once the kernel is cast for
    the convolution, which makes a CPU convolution about 10x slower; weights below 1e-20 of the
    total change nothing, so they become zeros.
    """
    kernel = kernel / kernel.sum()
    kernel[np.abs(kernel) < 1e-20] = 0.
    return torch.from_numpy(kernel)


def gaussian_kernel(size, sigma_x, sigma_y, theta, beta=1.0, shape='gaussian'):
    """A (size, size) float64 blur kernel that sums to 1.

    The quadratic form q = x^T C^-1 x, with C the covariance of a Gaussian with standard
    deviations (sigma_x, sigma_y) turned by theta radians, gives three families:
    'gaussian' exp(-q / 2); 'generalized' exp(-(q ^ beta) / 2), flatter tops for beta > 1 and
    heavier tails below; 'plateau' 1 / (1 + q ^ beta), a flat top with long tails.
    The kernels are small, so they are built in numpy: a dozen torch calls on a 21 x 21 grid
    cost more in call overhead than the arithmetic.
    """
    if shape not in ('gaussian', 'generalized', 'plateau'):
        raise ValueError(f"shape must be 'gaussian', 'generalized' or 'plateau', got {shape!r}")
    # C^-1 = R diag(1 / sigma_x^2, 1 / sigma_y^2) R^T, with R the rotation by theta.
    cos, sin = math.cos(theta), math.sin(theta)
    inv_x, inv_y = 1 / sigma_x ** 2, 1 / sigma_y ** 2
    a, b, d = cos * cos * inv_x + sin * sin * inv_y, cos * sin * (inv_x - inv_y), sin * sin * inv_x + cos * cos * inv_y
    x, y = _kernel_grid(size)
    q = a * x * x + 2 * b * x * y + d * y * y  # (size, size), >= 0
    if shape == 'gaussian':
        kernel = np.exp(-0.5 * q)
    elif shape == 'generalized':
        kernel = np.exp(-0.5 * q ** beta)
    else:
        kernel = 1 / (1 + q ** beta)
    return _finish_kernel(kernel)


def sinc_kernel(size, cutoff):
    """A (size, size) float64 ideal circular low-pass filter (a 2-D sinc, cut off at `cutoff`
    radians per pixel, pi = Nyquist), cut to size; it rings like an over-sharpened photo."""
    x, y = _kernel_grid(size)
    r = np.hypot(x, y)  # (size, size), distance from the centre
    safe_r = np.where(r == 0, 1., r)
    kernel = cutoff * torch.special.bessel_j1(torch.from_numpy(cutoff * safe_r)).numpy() / (2 * math.pi * safe_r)
    kernel[r == 0] = cutoff ** 2 / (4 * math.pi)  # the limit at r = 0
    return _finish_kernel(kernel)


def random_blur_kernel(rng, stage):
    """A (k, k) float64 kernel drawn as Real-ESRGAN draws one: a size from KERNEL_SIZES, then a
    sinc filter (sinc_prob) or one of KERNEL_TYPES with its sigmas, angle and shape."""
    size = rng.choice(KERNEL_SIZES)
    if rng.random() < stage['sinc_prob']:
        # Small kernels cannot hold a low cut-off's wide ripples, so their cut-off stays higher.
        return sinc_kernel(size, rng.uniform(math.pi / 3 if size < 13 else math.pi / 5, math.pi))
    kind = rng.choices(KERNEL_TYPES, weights=stage['kernel_prob'])[0]
    sigma_x = rng.uniform(*stage['blur_sigma'])
    if kind.endswith('iso') and not kind.endswith('aniso'):
        sigma_y, theta = sigma_x, 0.
    else:
        sigma_y, theta = rng.uniform(*stage['blur_sigma']), rng.uniform(-math.pi, math.pi)
    shape, beta = 'gaussian', 1.
    if kind.startswith('generalized') or kind.startswith('plateau'):
        shape = kind.split('_')[0]
        low, high = stage['betag_range' if shape == 'generalized' else 'betap_range']
        beta = rng.uniform(low, 1.) if rng.random() < 0.5 else rng.uniform(1., high)  # as many below 1 as above
    return gaussian_kernel(size, sigma_x, sigma_y, theta, beta, shape)


# ----------------------------------------------------------------------------------------------
# The operations, on float images in [0, 1] (blur: a batch; the others: one (1, 3, H, W) image)
# ----------------------------------------------------------------------------------------------

def blur(img, kernel):
    """img (N, 3, H, W) filtered by a (k, k) kernel per image, kernels (N, k, k) or one (k, k),
    with reflected borders (replicated where the image is smaller than the kernel's reach)."""
    n, channels, height, width = img.shape
    size = kernel.shape[-1]
    pad = size // 2
    mode = 'reflect' if pad < min(height, width) else 'replicate'
    padded = F.pad(img, (pad, pad, pad, pad), mode=mode)  # (N, 3, H + 2p, W + 2p)
    # One grouped convolution: every plane is its own group, with its image's kernel. On the CPU,
    # oneDNN computes 16 planes at a time, so one image's 3 planes would leave 13 lanes idle: a
    # small batch is cut into horizontal strips (each with the rows its outputs read above and
    # below) that go through as planes of their own: the same sums, bit for bit, and 2 to 4.5
    # times faster for one image of 60-144 pixels on an AVX-512 Xeon.
    strips = max(1, min(height, 16 // (n * channels))) if img.device.type == 'cpu' else 1
    rows, extra_cols = -(-height // strips), 0  # output rows per strip; W' = width + extra_cols
    if strips > 1:
        # oneDNN also compiles a convolution for each new input shape (about 0.4 ms) and keeps
        # about a thousand; lone images of random sizes, each with one of 8 kernel sizes, would
        # miss that cache nearly every time. Rounding the strips' height and width up to
        # multiples of 8, with zeros read only by outputs that are cut off, makes shapes repeat.
        rows += -(rows + 2 * pad) % 8
        extra_cols = -(width + 2 * pad) % 8
        padded = F.pad(padded, (0, extra_cols, 0, strips * rows - height))  # zeros below and to the right
        padded = padded.unfold(2, rows + 2 * pad, rows).transpose(-1, -2)  # (N, 3, strips, rows + 2p, W' + 2p)
    planes = padded.reshape(1, n * channels * strips, rows + 2 * pad, width + extra_cols + 2 * pad)
    kernel = kernel.to(img)
    weight = kernel.expand(planes.shape[1], size, size) if kernel.dim() == 2 \
        else kernel.repeat_interleave(channels * strips, dim=0)  # (N * 3 * strips, k, k)
    out = F.conv2d(planes, weight.unsqueeze(1), groups=planes.shape[1])  # (1, N * 3 * strips, rows, W')
    return out.view(n, channels, strips * rows, width + extra_cols)[:, :, :height, :width]


def resize(img, size, mode):
    """img (1, 3, H, W) resized to size (h, w) by F.interpolate's `mode` (no antialiasing, as in
    Real-ESRGAN, so a shrink also aliases)."""
    size = (max(1, size[0]), max(1, size[1]))
    if mode == 'area':
        return F.interpolate(img, size=size, mode='area')
    return F.interpolate(img, size=size, mode=mode, align_corners=False)


def random_scale(rng, stage):
    """A resize factor: up, down or kept, with the stage's probabilities and range."""
    direction = rng.choices(('up', 'down', 'keep'), weights=stage['resize_prob'])[0]
    low, high = stage['resize_range']
    return rng.uniform(1., high) if direction == 'up' else rng.uniform(low, 1.) if direction == 'down' else 1.


def _levels(img):
    """img in [0, 1] as the 8-bit levels a saved image would have: floats 0., 1., ..., 255."""
    return img.mul(255.).round_().clamp_(0, 255)


def _quantise(img):
    """img rounded to 8-bit levels and clamped to [0, 1], as a saved image would be."""
    return _levels(img).div_(255.)


def add_noise(img, rng, stage):
    """img (1, 3, H, W) plus Gaussian (sigma in grey levels) or Poisson (shot) noise, in colour or
    the same on all channels, clamped to [0, 1]. The noise comes from a torch generator seeded by
    rng, so it too is a function of the key."""
    gaussian = rng.random() < stage['gaussian_noise_prob']
    amount = rng.uniform(*stage['noise_range'] if gaussian else stage['poisson_scale_range'])
    gray = rng.random() < stage['gray_noise_prob']
    generator = torch.Generator(device=img.device).manual_seed(rng.getrandbits(63))
    luma = img.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    plane = (img * luma).sum(1, keepdim=True) if gray else img  # (1, 1 or 3, H, W)
    if gaussian:
        noise = torch.randn(plane.shape, generator=generator, device=img.device, dtype=img.dtype) * amount / 255.
    else:
        # Shot noise: photon counts are Poisson. Real-ESRGAN counts 2^ceil(log2(distinct levels))
        # photons at full scale, so a flat image gets stronger noise than a detailed one.
        levels_255 = _levels(plane)  # (1, 1 or 3, H, W)
        plane = levels_255 / 255.
        distinct = int(torch.bincount(levels_255.long().flatten(), minlength=256).count_nonzero())
        levels = 2. ** math.ceil(math.log2(distinct))
        noise = (torch.poisson(plane * levels, generator=generator) / levels - plane) * amount
    return (img + noise).clamp(0., 1.)  # (1, 3, H, W): a (1, 1, H, W) noise broadcasts over R, G, B


def jpeg(img, quality):
    """img (1, 3, H, W) in [0, 1] encoded and decoded by libjpeg at `quality` (1..100), on the CPU.

    torchvision.io is 3.5x faster here than a round trip through Pillow, and gives the same bytes
    (tests/test_degradations.py holds it against Pillow). torchvision 0.29 marks its codecs as
    deprecated in favour of TorchCodec; until they go, its warning is silenced here only, and
    Pillow's JPEG is the drop-in replacement.
    """
    from torchvision.io import decode_jpeg, encode_jpeg  # here: importing the core stays fast (no torchvision)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        encoded = encode_jpeg(_levels(img[0]).to('cpu', torch.uint8), quality=quality)
        decoded = decode_jpeg(encoded)  # (3, H, W) uint8
    return decoded.to(img.device, img.dtype).div_(255.).unsqueeze(0)  # (1, 3, H, W)


# ----------------------------------------------------------------------------------------------
# The whole chain
# ----------------------------------------------------------------------------------------------

def degrade(hr_imgs, keys, scaling_factor):
    """LR images of HR images by the second-order realistic degradation.

    Args:
        hr_imgs: (N, 3, H, W) float in [0, 1], H and W divisible by scaling_factor, any device.
        keys: N strings (or ints); each decides every draw for its image.
        scaling_factor: how much smaller the LR images are.
    Returns (N, 3, H / s, W / s) float in [0, 1], on 8-bit levels, on hr_imgs' device.
    """
    n, _, height, width = hr_imgs.shape
    if len(keys) != n:
        raise ValueError(f"need one key per image: {n} images, {len(keys)} keys")
    if height % scaling_factor or width % scaling_factor:
        raise ValueError(f"HR size {width}x{height} must divide by scaling_factor {scaling_factor}")
    rngs = [random.Random(f'degrade:{key}') for key in keys]
    # Stage 1's blur works on images of one size: one grouped convolution for the batch.
    blurred = blur_each(hr_imgs.float(), [random_blur_kernel(rng, FIRST_STAGE) for rng in rngs])  # (N, 3, H, W)
    # From here to the last resize the sizes differ per image, so each image goes its own way.
    # (Running them on a pool of threads halved this function's time alone but made a CPU
    # training step slower, 300 against 212 ms at batch 16: each thread's OpenMP team competed
    # with the training's. Degrading the next batch on a thread while the model trains gained
    # nothing either: the model's two threads already fill a 2-core CPU.)
    lr_size = (height // scaling_factor, width // scaling_factor)
    lr_imgs, sincs, last_jpegs = zip(*[_degrade_to_lr_size(blurred[i:i + 1], rngs[i], lr_size) for i in range(n)])
    lr_imgs = torch.cat(lr_imgs)  # (N, 3, h, w)
    # The last sinc filters, on images of one size again: one convolution for the batch.
    with_sinc = [i for i in range(n) if sincs[i] is not None]
    if with_sinc:
        lr_imgs[with_sinc] = blur_each(lr_imgs[with_sinc], [sincs[i] for i in with_sinc])
    for i, quality in enumerate(last_jpegs):
        if quality is not None:
            lr_imgs[i:i + 1] = jpeg(lr_imgs[i:i + 1], quality)
    return _quantise(lr_imgs)  # (N, 3, h, w), 8-bit levels in [0, 1]


def degrade_by(degradation, hr_imgs, keys, scaling_factor):
    """LR images by a named degradation other than 'bicubic' ('realistic', 'ladder' or
    'ladder:<level>'): the same arguments and result as degrade(). Under 'ladder' each key draws
    its own rung, so one batch mixes clean, lightly and heavily damaged crops."""
    check_degradation(degradation)
    if degradation == 'realistic':
        return degrade(hr_imgs, keys, scaling_factor)
    if degradation == 'ladder':
        levels = [ladder_level(key) for key in keys]
    else:
        levels = [degradation.split(':')[1]] * len(keys)
    heavy = [i for i, level in enumerate(levels) if level == 'heavy']
    if len(heavy) == len(keys):
        return degrade(hr_imgs, keys, scaling_factor)
    n, _, height, width = hr_imgs.shape
    lr_imgs = hr_imgs.new_empty(n, 3, height // scaling_factor, width // scaling_factor, dtype=torch.float32)
    if heavy:  # the heavy rung is the realistic chain with the same key: the same bytes as 'realistic'
        lr_imgs[heavy] = degrade(hr_imgs[heavy], [keys[i] for i in heavy], scaling_factor)
    for i, level in enumerate(levels):
        if level != 'heavy':
            rng = random.Random(f'ladder:{level}:{keys[i]}')
            lr_imgs[i:i + 1] = _ladder_rung(hr_imgs[i:i + 1].float(), rng, level, scaling_factor)
    return lr_imgs  # (N, 3, H / s, W / s), 8-bit levels in [0, 1]


def ladder_level(key):
    """The rung of LADDER_LEVELS that degradation 'ladder' gives the sample of this key."""
    return random.Random(f'ladder:{key}').choices(LADDER_LEVELS, weights=LADDER_WEIGHTS)[0]


def _ladder_rung(img, rng, level, scaling_factor):
    """One (1, 3, H, W) image in [0, 1] through a light rung of the ladder: clean, light, medium, jpeg."""
    lr_size = (img.shape[-2] // scaling_factor, img.shape[-1] // scaling_factor)

    def pillow_shrink(img):  # the paper's clean shrink, as SRDataset makes it with Pillow
        levels = _levels(img).to(torch.uint8)  # (1, 3, H, W) uint8
        return utils.pillow_bicubic_resize(levels, lr_size[::-1]).float().div_(255.)  # (1, 3, h, w)

    if level == 'clean':
        return pillow_shrink(img)
    if level == 'jpeg':
        return jpeg(pillow_shrink(img), rng.randint(*JPEG_ONLY_RANGE))
    stage = LIGHT if level == 'light' else MEDIUM
    img = blur(img, random_blur_kernel(rng, stage))
    # Light: the clean shrink (antialiased). Medium: any of the realistic chain's resize filters.
    img = pillow_shrink(img) if level == 'light' else resize(img, lr_size, rng.choice(RESIZE_MODES))
    img = add_noise(img, rng, stage)
    return _quantise(jpeg(img, rng.randint(*stage['jpeg_range'])))  # (1, 3, h, w)


def blur_each(imgs, kernels):
    """imgs (N, 3, H, W), each filtered by its own kernel (a list of N (k, k) CPU tensors of any
    sizes) in one grouped convolution per border mode. The kernels are padded with zeros to the
    largest, which adds exact zeros to every sum: each image comes out as blur() alone makes it,
    so an image's LR does not depend on the batch it came in."""
    reach = min(imgs.shape[-2:])
    groups = [[i for i, kernel in enumerate(kernels) if (kernel.shape[-1] // 2 < reach) == reflect]
              for reflect in (True, False)]  # blur() reflects a border where the kernel's reach allows
    out = None if len(groups[0]) in (0, len(kernels)) else torch.empty_like(imgs)
    for group in groups:
        if not group:
            continue
        side = max(kernels[i].shape[-1] for i in group)
        padded = kernels[group[0]].new_zeros(len(group), side, side)  # (G, side, side)
        for row, i in enumerate(group):
            start = (side - kernels[i].shape[-1]) // 2
            padded[row, start:side - start, start:side - start] = kernels[i]
        if out is None:  # one group: no gathering and scattering of images
            return blur(imgs, padded)  # (N, 3, H, W); blur moves the kernels to the images
        out[group] = blur(imgs[group], padded)
    return out


def _degrade_to_lr_size(img, rng, lr_size):
    """Everything after stage 1's blur, for one (1, 3, H, W) image, up to the last sinc filter.

    Returns the (1, 3, h, w) image at the LR size, its last sinc kernel (or None) and the
    quality of the JPEG still to come after that filter (None if it came before the resize).
    """
    # Stage 1: resize, noise, JPEG.
    scale = random_scale(rng, FIRST_STAGE)
    img = resize(img, (int(img.shape[-2] * scale), int(img.shape[-1] * scale)), rng.choice(RESIZE_MODES))
    img = add_noise(img, rng, FIRST_STAGE)
    img = jpeg(img, rng.randint(*FIRST_STAGE['jpeg_range']))
    # Stage 2: a milder blur, a resize around the final size, noise.
    if rng.random() < SECOND_STAGE['blur_prob']:
        img = blur(img, random_blur_kernel(rng, SECOND_STAGE))
    scale = random_scale(rng, SECOND_STAGE)
    img = resize(img, (int(lr_size[0] * scale), int(lr_size[1] * scale)), rng.choice(RESIZE_MODES))
    img = add_noise(img, rng, SECOND_STAGE)
    # The last resize to the LR size with its sinc filter, and the last JPEG, in either order.
    mode, quality = rng.choice(RESIZE_MODES), rng.randint(*SECOND_STAGE['jpeg_range'])
    sinc = sinc_kernel(rng.choice(KERNEL_SIZES), rng.uniform(math.pi / 3, math.pi)) \
        if rng.random() < FINAL_SINC_PROB else None
    jpeg_first = rng.random() < 0.5
    if jpeg_first:
        img = jpeg(img, quality)
    return resize(img, lr_size, mode), sinc, None if jpeg_first else quality  # (1, 3, h, w)


# ----------------------------------------------------------------------------------------------
# Reading the damage back: how far toward the real-photo models an input should go
# ----------------------------------------------------------------------------------------------

# The JPEG standard's luminance quantisation table (ITU-T T.81, Annex K), rows = vertical frequency.
JPEG_LUMA_TABLE = ((16, 11, 10, 16, 24, 40, 51, 61), (12, 12, 14, 19, 26, 58, 60, 55),
                   (14, 13, 16, 24, 40, 57, 69, 56), (14, 17, 22, 29, 51, 87, 80, 62),
                   (18, 22, 37, 56, 68, 109, 103, 77), (24, 35, 55, 64, 81, 104, 113, 92),
                   (49, 64, 78, 87, 103, 121, 120, 101), (72, 92, 95, 98, 112, 100, 103, 99))
JPEG_PROBE = ((0, 1), (1, 0), (1, 1), (0, 2), (2, 0), (1, 2), (2, 1), (2, 2))  # the frequencies read
JPEG_MIN_COUNT = 16  # coefficients a step needs to be believed (16 random phases line up > 0.6 with p < 0.1%)
JPEG_MAX_STEP = 96  # the coarsest quantisation step looked for (quality 10 quantises these by 50-80)


def jpeg_scale_of_table(table):
    """How coarse a JPEG's luminance table is, as libjpeg's scale factor / 100: 0.1 at quality 95,
    0.5 at 75, 1 at 50, 2.5 at 20 (the median over the JPEG_PROBE frequencies of step / standard
    step). table: 64 steps in row-major order, as Pillow's `img.quantization[0]` gives them."""
    steps = [table[8 * row + col] / JPEG_LUMA_TABLE[row][col] for row, col in JPEG_PROBE]
    return float(np.median(steps))


def jpeg_scale_of_pixels(y):
    """jpeg_scale_of_table for an image decoded from a JPEG, read from its pixels: a decoded JPEG's
    8x8 DCT coefficients sit on multiples of the quantisation steps (up to the rounding of the
    pixels), so each probed frequency's step is the largest step its coefficients line up with.
    y: (h, w) JPEG luma (0.299 R + 0.587 G + 0.114 B) in [0, 255]. Returns 0. when no step of 2
    or more is found: never a JPEG, or a very fine one, or one resized since."""
    height, width = (y.shape[0] // 8) * 8, (y.shape[1] // 8) * 8
    if height == 0 or width == 0:
        return 0.
    blocks = (y[:height, :width] - 128.).reshape(height // 8, 8, width // 8, 8).permute(0, 2, 1, 3)  # (H/8, W/8, 8, 8)
    k = torch.arange(8, dtype=torch.float64)
    basis = torch.cos((2 * k.view(1, 8) + 1) * k.view(8, 1) * math.pi / 16) * torch.where(
        k == 0, math.sqrt(1 / 8), math.sqrt(2 / 8)).view(8, 1)  # (8, 8): the orthonormal DCT-II, JPEG's
    coefficients = basis @ blocks.double() @ basis.T  # (H/8, W/8, 8, 8)
    candidates = torch.arange(2, JPEG_MAX_STEP + 1, dtype=torch.float64).view(-1, 1)  # (S, 1)
    scales = []
    for row, col in JPEG_PROBE:
        values = coefficients[..., row, col].flatten().view(1, -1)  # (1, B)
        # Only coefficients at least half a step from 0 can say whether they sit on its nonzero
        # multiples: small ones line up with any large step. Too few of them (under
        # JPEG_MIN_COUNT) could line up by chance.
        counted = values.abs() >= candidates / 2  # (S, B)
        phase = 2 * math.pi * values / candidates  # (S, B)
        count = counted.sum(1).clamp_min(1)  # (S,)
        alignment = torch.hypot((torch.cos(phase) * counted).sum(1), (torch.sin(phase) * counted).sum(1)) / count
        aligned = candidates[(alignment > 0.6) & (counted.sum(1) >= JPEG_MIN_COUNT)]  # 1 on the grid, ~0 off it
        scales.append(float(aligned.max()) / JPEG_LUMA_TABLE[row][col] if aligned.numel() else 0.)
    return float(np.median(scales))


def jpeg_scale(img, jpeg_table=None):
    """How coarse an image's last JPEG was (jpeg_scale_of_table; 0: none found): from the file's
    table when given, else read from the pixels. img: (3, h, w) in [0, 1] on 8-bit levels."""
    if jpeg_table is not None:
        return jpeg_scale_of_table(jpeg_table)
    rgb = img.double().cpu() * 255.  # (3, h, w), levels 0..255
    luma = (rgb * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(3, 1, 1)).sum(0)  # (h, w), JPEG's Y
    return jpeg_scale_of_pixels(luma)


AUTO_CROP = 128  # LR pixels: a larger image is judged from crops of this side, so its size costs nothing
AUTO_CROPS = 4  # crops a side at most (16 in all), spread over the image


def damage_crops(img):
    """(K, 3, c, c) crops that stand for an image when the damage classifier reads it: the image
    itself when it is small, else up to AUTO_CROPS x AUTO_CROPS crops of AUTO_CROP pixels spread
    evenly, their corners on JPEG's 8-pixel grid. img: (3, h, w)."""
    height, width = img.shape[-2:]
    if height <= AUTO_CROP and width <= AUTO_CROP:
        return img.unsqueeze(0)  # (1, 3, h, w)

    def corners(size):
        side = min(size, AUTO_CROP)
        n = min(AUTO_CROPS, math.ceil(size / side))
        return [((size - side) * i // max(1, n - 1)) // 8 * 8 for i in range(n)], side

    (tops, crop_h), (lefts, crop_w) = corners(height), corners(width)
    return torch.stack([img[:, top:top + crop_h, left:left + crop_w] for top in tops for left in lefts])


@torch.no_grad()
def damage_levels(model, img, jpeg_table=None):
    """The damage classifier's reading of one LR image: (len(LADDER_LEVELS),) probabilities, the
    mean over damage_crops. model: a DamageNet in eval mode, on the CPU; img: (3, h, w) in [0, 1]."""
    crops = damage_crops(img.float().cpu())  # (K, 3, c, c)
    scales = torch.full((crops.shape[0],), jpeg_scale(img, jpeg_table))  # (K,): the whole image's
    return torch.softmax(model(crops, scales), dim=1).mean(0)  # (levels,)


def auto_denoise(probabilities, damage_map):
    """The denoise value of an image the classifier read as `probabilities`: the mean of each
    level's denoise value, weighted by its probability raised to a power (above 1, the likeliest
    level counts more: a clean photo half-read as damaged should stay near 0), rounded to steps of
    0.05 (so a folder of photos needs few distinct blends).

    damage_map: {'level_denoise': a value in [0, 1] per level, 'power': the power}, both fitted
    on the validation images (fit_denoise.py)."""
    # p ** power / sum(p ** power), in logarithms: a high power would underflow to 0 / 0.
    weights = torch.softmax(damage_map['power'] * probabilities.double().clamp_min(1e-30).log(), dim=0)  # (levels,)
    value = float(weights @ torch.tensor(damage_map['level_denoise'], dtype=torch.float64))
    return round(min(1., max(0., value)) * 20) / 20
