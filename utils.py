"""The shared core: image conversions, transforms, data lists, metrics, and the small helpers
every script needs (config overrides, device, seeding, checkpoints, training bookkeeping).

Importing this module picks no device, creates no tensor and reads no file.
"""
import ast
import contextlib
import csv
import functools
import json
import math
import os
import random
import sys
import tempfile
import time
import types
import warnings

import numpy as np
import torch
from PIL import Image

# ImageNet statistics, as plain lists so that importing this module creates no tensor.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# ITU-R BT.601 luma for R, G, B in [0, 1], giving Y in [16, 235]: the SR literature's convention.
RGB_WEIGHTS_Y = [65.481, 128.553, 24.966]
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


# ----------------------------------------------------------------------------------------------
# Image conversions
# ----------------------------------------------------------------------------------------------

def pil_to_rgb(img):
    """A PIL image as 8-bit RGB.

    Integer and float greyscale (modes 'I;16*', 'I', 'F') is scaled to 8 bits first: Pillow's own
    conversion clips it at 255, and takes floats as 0..255. The scale comes from what the values
    can mean, as the mode alone does not say it ('I' holds 16-bit PNGs in older Pillow, and 8-bit
    pictures saved as 32-bit TIFFs):
      - 'I;16*', and 'I' with values in 0..65535 reaching above 255: 16-bit, 65535 is white (/ 257);
      - 'F' with values in [0, 1]: 1 is white (x 255);
      - 'I' or 'F' with values in [0, 255]: 8-bit values in a wider type, kept as they are;
      - anything else (negative values, 'I' above 65535, 'F' above 255): stretched from its own
        minimum (black) to its maximum (white), the one reading that shows the picture.
    NaN and infinite floats become black. So a 16-bit image opened as 'I' whose values all lie in
    0..255 (nearly black as 16 bits) is shown as 8-bit.
    """
    if img.mode not in ('I', 'F') and not img.mode.startswith('I;16'):
        return img.convert('RGB')
    values = np.asarray(img).astype(np.float64)  # (H, W), in the mode's own range
    values[~np.isfinite(values)] = 0.
    low, high = (values.min(), values.max()) if values.size else (0., 0.)
    if low >= 0 and (img.mode.startswith('I;16') or (img.mode == 'I' and 255 < high <= 65535)):
        black, white = 0., 65535.  # 16-bit samples
    elif low >= 0 and img.mode == 'F' and high <= 1:
        black, white = 0., 1.
    elif low >= 0 and high <= 255:
        black, white = 0., 255.
    else:
        black, white = low, max(high, low + 1.)  # a constant image becomes black, not a division by 0
    grey = (values - black) * (255. / (white - black))  # (H, W), in [0, 255]
    return Image.fromarray(np.clip(np.round(grey), 0, 255).astype(np.uint8)).convert('RGB')


def _channel_view(values, img):
    """A per-channel constant shaped to broadcast over a (3, H, W) or (N, 3, H, W) image."""
    shape = (3, 1, 1) if img.dim() == 3 else (1, 3, 1, 1)
    return torch.tensor(values, device=img.device, dtype=img.dtype).view(shape)


def convert_image(img, source, target):
    """Convert an image between the representations this project uses.

    Args:
        img: a PIL image (source 'pil'), or a float tensor (3, H, W) or (N, 3, H, W).
        source: 'pil', '[0, 1]' or '[-1, 1]'.
        target: 'pil', '[0, 255]', '[0, 1]', '[-1, 1]', 'imagenet-norm' or 'y-channel'.

    Every conversion goes through [0, 1]. Tensors stay on their device and dtype ('pil' gives
    float32). Float to PIL rounds to the nearest grey level, then clamps to [0, 255].
    'y-channel' gives the unrounded luma Y = 16 + 65.481 R + 128.553 G + 24.966 B, shape
    (H, W) or (N, H, W), in [16, 235].
    """
    sources = ('pil', '[0, 1]', '[-1, 1]')
    targets = ('pil', '[0, 255]', '[0, 1]', '[-1, 1]', 'imagenet-norm', 'y-channel')
    if source not in sources:
        raise ValueError(f"source must be one of {sources}, got {source!r}")
    if target not in targets:
        raise ValueError(f"target must be one of {targets}, got {target!r}")

    if source == 'pil':
        array = np.asarray(pil_to_rgb(img), dtype=np.float32) / 255.  # (H, W, 3), in [0, 1]
        img = torch.from_numpy(array).permute(2, 0, 1)  # (3, H, W), in [0, 1]
    elif source == '[-1, 1]':
        img = (img + 1.) / 2.  # in [0, 1]

    if target == 'pil':
        if img.dim() != 3:
            raise ValueError(f"only a single (3, H, W) image converts to PIL, got shape {tuple(img.shape)}")
        array = (img.detach().float() * 255.).round().clamp(0, 255).to(torch.uint8)  # (3, H, W)
        return Image.fromarray(array.permute(1, 2, 0).cpu().numpy(), mode='RGB')
    if target == '[0, 255]':
        return img * 255.
    if target == '[0, 1]':
        return img
    if target == '[-1, 1]':
        return img * 2. - 1.
    if target == 'imagenet-norm':
        return (img - _channel_view(IMAGENET_MEAN, img)) / _channel_view(IMAGENET_STD, img)
    # 'y-channel'
    return (img * _channel_view(RGB_WEIGHTS_Y, img)).sum(dim=-3) + 16.


# ----------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------

class ImageTransforms:
    """Make the (LR, HR) pair of tensors from one image.

    Args:
        split: 'train' (a random crop_size crop) or 'test' (the largest centred crop whose sides
            divide by scaling_factor).
        crop_size: HR crop side for training; must divide by scaling_factor.
        scaling_factor: how much smaller the LR image is.
        lr_img_type, hr_img_type: convert_image targets for the LR and HR tensors.

    LR images come from Pillow's bicubic downscale of the HR crop, which low-pass filters
    (antialiases) on its own.
    """

    def __init__(self, split, crop_size, scaling_factor, lr_img_type, hr_img_type):
        if split not in ('train', 'test'):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if split == 'train' and crop_size % scaling_factor != 0:
            raise ValueError(f"crop_size {crop_size} must divide by scaling_factor {scaling_factor}")
        self.split = split
        self.crop_size = crop_size
        self.scaling_factor = scaling_factor
        self.lr_img_type = lr_img_type
        self.hr_img_type = hr_img_type

    def crop_box(self, width, height, rng=random):
        """(left, top, right, bottom) of the HR crop for an image of this size.

        rng: anything with randint(a, b), inclusive of both ends (random, or a random.Random).
        """
        if self.split == 'train':
            if width < self.crop_size or height < self.crop_size:
                raise ValueError(f"image of {width}x{height} is smaller than crop_size {self.crop_size}")
            # Inclusive bounds: row and column 0 can be picked, and an image exactly crop_size wide works.
            left = rng.randint(0, width - self.crop_size)
            top = rng.randint(0, height - self.crop_size)
            return left, top, left + self.crop_size, top + self.crop_size
        new_width = width - width % self.scaling_factor
        new_height = height - height % self.scaling_factor
        left, top = (width - new_width) // 2, (height - new_height) // 2
        return left, top, left + new_width, top + new_height

    def __call__(self, img, rng=random):
        """PIL image -> (lr_img, hr_img) tensors, (3, h, w) and (3, h * s, w * s)."""
        # Crop first, convert after: only the crop's pixels are converted to RGB.
        return self.to_pair(img.crop(self.crop_box(img.width, img.height, rng)))

    def to_pair(self, hr_img):
        """An already-cropped HR PIL image -> (lr_img, hr_img) tensors."""
        hr_img = pil_to_rgb(hr_img)
        lr_img = hr_img.resize((hr_img.width // self.scaling_factor, hr_img.height // self.scaling_factor),
                               Image.BICUBIC)
        lr_img = convert_image(lr_img, source='pil', target=self.lr_img_type)  # (3, h, w)
        hr_img = convert_image(hr_img, source='pil', target=self.hr_img_type)  # (3, h * s, w * s)
        return lr_img, hr_img


# ----------------------------------------------------------------------------------------------
# Pillow's bicubic resize, in tensor operations
# ----------------------------------------------------------------------------------------------

_PILLOW_PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images: 32 - 8 - 2 fractional bits


def _pillow_bicubic_filter(x):
    """Pillow's bicubic kernel (Keys, a = -0.5)."""
    a = -0.5
    x = abs(x)
    if x < 1.:
        return ((a + 2.) * x - (a + 3.)) * x * x + 1.
    if x < 2.:
        return (((x - 5.) * x + 8.) * x - 4.) * a
    return 0.


@functools.lru_cache(maxsize=64)
def pillow_bicubic_weights(in_size, out_size):
    """The (out_size, in_size) matrix of Pillow's fixed-point bicubic weights for one axis.

    A line-by-line transcription of Pillow's precompute_coeffs and normalize_coeffs_8bpc
    (src/libImaging/Resample.c), in the same double-precision arithmetic: when shrinking, the
    kernel is stretched by the scale factor (support 2 x scale: that is the antialiasing), each
    output pixel's weights are normalised to sum to 1, then rounded half away from zero to
    integers with 22 fractional bits. Returns a float64 numpy array of those integers.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.)
    support = 2. * filterscale
    weights = np.zeros((out_size, in_size))
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as C's cast does
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [_pillow_bicubic_filter((x + xmin - center + 0.5) * (1. / filterscale)) for x in range(xmax)]
        total = sum(k)  # summed in order, as Pillow does
        k = [w / total if total != 0. else w for w in k]
        one = 1 << _PILLOW_PRECISION_BITS
        weights[xx, xmin:xmin + xmax] = [int(-0.5 + w * one) if w < 0 else int(0.5 + w * one) for w in k]
    return weights


def _pillow_pass(imgs, weights, dim):
    """One separable pass along `dim` (-1: width, -2: height) with fixed-point weights, rounded
    and clipped to 8 bits as Pillow's clip8 does. imgs: float64 holding integers 0..255."""
    one = 1 << _PILLOW_PRECISION_BITS
    weights = torch.as_tensor(weights, device=imgs.device)  # (out, in), float64 integers
    if dim == -1:
        acc = imgs @ weights.T  # (..., H, out): exact, every partial sum is an integer below 2^53
    else:
        acc = weights @ imgs  # (..., out, W)
    return torch.floor((acc + one // 2) / one).clamp_(0, 255)  # round half up, then clip to 8 bits


def pillow_bicubic_resize(imgs, size):
    """Resize uint8 images exactly as Pillow's `Image.resize(size, Image.BICUBIC)` does, byte for byte.

    Args:
        imgs: uint8 tensor (..., H, W), on any device (for RGB, (N, 3, H, W)).
        size: (width, height) of the result, Pillow's order.

    Pillow resizes in two passes, rounding to 8 bits after each; this runs the width first, as
    Pillow always did. (Pillow 13 sometimes runs the height first when both sides change, a
    speed heuristic that shifts a few pixels by one grey level; it never does for a square image
    scaled by the same factor both ways, which is what training needs.) The arithmetic is float64
    on integers, which is exact, so the CPU and a GPU give the same bytes. Returns a uint8 tensor
    (..., height, width) on the same device.
    """
    width, height = size
    in_height, in_width = imgs.shape[-2:]
    out = imgs.double()  # (..., H, W), integers 0..255
    if width != in_width:
        out = _pillow_pass(out, pillow_bicubic_weights(in_width, width), dim=-1)  # (..., H, width)
    if height != in_height:
        out = _pillow_pass(out, pillow_bicubic_weights(in_height, height), dim=-2)  # (..., height, width)
    return out.to(torch.uint8)


# ----------------------------------------------------------------------------------------------
# Data lists
# ----------------------------------------------------------------------------------------------

def list_images(folder):
    """Sorted paths of the image files (by extension, any letter case) directly in a folder."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    names = sorted(name for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS))
    return [os.path.join(folder, name) for name in names]


def image_size(path):
    """(width, height) from the image file's header, without decoding its pixels."""
    with Image.open(path) as img:
        return img.size


def _image_size(path):
    """(width, height) of a decodable image, or None for a file that is not one."""
    try:
        with Image.open(path) as img:
            img.load()  # decode the pixels too: a truncated file opens but fails here
            return img.size
    except Exception:  # PIL raises many kinds of errors on bad files; all mean "skip it"
        return None


def create_data_lists(train_folders, test_folders, min_size, output_folder, val_size=0, val_seed=0):
    """Write the JSON lists of image paths that SRDataset reads.

    Args:
        train_folders: folders whose images are pooled into train_images.json.
        test_folders: each gives <folder name>_test_images.json.
        min_size: images whose smaller side is below this are left out.
        output_folder: where the lists go (created if needed).
        val_size: images of the training folders held out into val_images.json, to choose
            checkpoints and recipes with (the test sets are for reporting only).
        val_seed: picks the held-out images; the same folders and seed give the same split on
            any machine, since the choice is made on the sorted list.

    Files that are not decodable images are skipped with a warning; the counts are printed.
    Returns {list file name: number of images}.
    """
    for folder in list(train_folders) + list(test_folders):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"image folder not found: {folder}")

    def usable(folders):
        kept, n_small, n_bad = [], 0, 0
        for folder in folders:
            for path in list_images(folder):
                size = _image_size(path)
                if size is None:
                    warnings.warn(f"skipping {path}: not a decodable image")
                    n_bad += 1
                elif min(size) < min_size:
                    n_small += 1
                else:
                    kept.append(os.path.abspath(path))
        return sorted(kept), n_small, n_bad

    lists, notes = {}, {}
    if train_folders:
        paths, n_small, n_bad = usable(train_folders)
        if val_size >= len(paths):
            raise ValueError(f"val_size {val_size} leaves no training images (the folders have {len(paths)} usable)")
        held_out = set(random.Random(val_seed).sample(range(len(paths)), val_size))
        lists['train_images.json'] = [p for i, p in enumerate(paths) if i not in held_out]
        notes['train_images.json'] = f", skipped {n_small} smaller than {min_size} px and {n_bad} unreadable files"
        if val_size:
            lists['val_images.json'] = [p for i, p in enumerate(paths) if i in held_out]
            notes['val_images.json'] = f" held out of the training folders (seed {val_seed})"
    for folder in test_folders:
        paths, n_small, n_bad = usable([folder])
        name = f"{os.path.basename(os.path.normpath(folder))}_test_images.json"
        lists[name] = paths
        notes[name] = f", skipped {n_small} smaller than {min_size} px and {n_bad} unreadable files"
    for list_name, paths in lists.items():
        with atomic_write(os.path.join(output_folder, list_name), 'w') as f:
            json.dump(paths, f, indent=0)
        print(f"{list_name}: {len(paths)} images{notes[list_name]}")
    print(f"Lists saved to {output_folder}")
    return {name: len(paths) for name, paths in lists.items()}


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------

def compute_psnr_ssim(sr_img, hr_img, crop_border):
    """PSNR (dB) and SSIM of two equal-size PIL RGB images, as SR papers report them.

    Both are measured on the unrounded Y channel (BT.601, in [16, 235]) with crop_border pixels
    removed from every side. PSNR is in float64 with peak 255. SSIM uses an 11x11 Gaussian window
    (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255, averaged over the valid region.
    """
    from skimage.metrics import structural_similarity  # imported here: a slow import only eval needs
    if sr_img.size != hr_img.size:
        raise ValueError(f"images differ in size: {sr_img.size} vs {hr_img.size}")

    def y_channel(img):
        rgb = np.asarray(pil_to_rgb(img), dtype=np.float64) / 255.  # (H, W, 3), in [0, 1]
        y = 16. + rgb @ np.array(RGB_WEIGHTS_Y)  # (H, W), in [16, 235]
        return y[crop_border:y.shape[0] - crop_border, crop_border:y.shape[1] - crop_border] if crop_border else y

    sr_y, hr_y = y_channel(sr_img), y_channel(hr_img)
    mse = np.mean((sr_y - hr_y) ** 2)
    psnr = float('inf') if mse == 0 else 10. * np.log10(255. ** 2 / mse)
    ssim = structural_similarity(sr_y, hr_y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255.)
    return float(psnr), float(ssim)


# ----------------------------------------------------------------------------------------------
# NIQE, a no-reference quality score
# ----------------------------------------------------------------------------------------------
# NIQE (Mittal, Soundararajan and Bovik, "Making a 'Completely Blind' Image Quality Analyzer",
# IEEE Signal Processing Letters 2013) fits a multivariate Gaussian to the local statistics of an
# image's 96x96 blocks and measures its distance to the Gaussian fitted to pristine photographs:
# lower means more natural. PSNR rewards blur; NIQE penalises it, so the two together show the
# SRGAN paper's trade-off. This follows the LIVE release (niqe_release.zip: computequality.m,
# computefeature.m, estimateaggdparam.m) as BasicSR reimplements it (basicsr/metrics/niqe.py),
# and matches MATLAB R2021a's 5.72957338 on Set14's baboon.png (tests/test_niqe.py).
#
# The pristine model, checkpoints/niqe_pris_params.npz (mu_pris_param 1x36, cov_pris_param 36x36,
# and the 7x7 Gaussian window fspecial('gaussian', 7, 7/6)), is data from the LIVE release, copied
# from XPixelGroup/BasicSR @ 8d56e3a0, basicsr/metrics/niqe_pris_params.npz (Apache-2.0).
NIQE_PARAMS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'checkpoints', 'niqe_pris_params.npz')
NIQE_BLOCK_SIZE = 96  # pixels; the release's, and the size its pristine model was fitted with


def niqe(img, crop_border=0):
    """NIQE of one image: no reference needed, lower is more natural (3 to 6 for sharp photos).

    Args:
        img: a PIL image of any mode, measured on its luma Y (BT.601, in [16, 235]) rounded to
            integers, as BasicSR does to match MATLAB; or a 2-D numpy array of grey levels in
            [0, 255], which is rounded likewise.
        crop_border: pixels removed from every side first (SR papers crop the scaling factor).

    The image is cut into whole 96x96 blocks from its top left corner (the remainder is unused),
    at full and at half size. Returns a float; NaN for an image without any texture.
    Raises ValueError if not even one 96x96 block fits.
    """
    from scipy import ndimage  # imported here, like skimage above: only eval needs it
    if isinstance(img, Image.Image):
        rgb = np.asarray(pil_to_rgb(img), dtype=np.float64) / 255.  # (H, W, 3), in [0, 1]
        grey = 16. + rgb @ np.array(RGB_WEIGHTS_Y)  # (H, W), in [16, 235]
    else:
        grey = np.asarray(img, dtype=np.float64)  # (H, W), in [0, 255]
        if grey.ndim != 2:
            raise ValueError(f"niqe takes a PIL image or a 2-D grey array, got an array of shape {grey.shape}")
    height, width = grey.shape
    grey = grey[crop_border:height - crop_border, crop_border:width - crop_border]
    rows, cols = grey.shape[0] // NIQE_BLOCK_SIZE, grey.shape[1] // NIQE_BLOCK_SIZE
    if rows == 0 or cols == 0:
        raise ValueError(f"NIQE needs at least one {NIQE_BLOCK_SIZE}x{NIQE_BLOCK_SIZE} block, but the image is "
                         f"{width}x{height}, {grey.shape[1]}x{grey.shape[0]} after cropping {crop_border} px "
                         f"from each border")
    # Whole 8-bit grey levels, as MATLAB reads them: the rounding is needed to match its value.
    grey = np.round(grey[:rows * NIQE_BLOCK_SIZE, :cols * NIQE_BLOCK_SIZE])  # (rows * 96, cols * 96)

    params = np.load(NIQE_PARAMS_FILE)  # 12 KB, read per call so that importing reads no file
    features = []
    for scale, scaled in ((1, grey), (2, _imresize_matlab(grey, 0.5))):
        # MSCN coefficients (paper, Eq. 1): local mean removed, divided by local deviation (+1, so
        # that flat areas stay finite). 'nearest' is MATLAB's imfilter(..., 'replicate').
        mu = ndimage.convolve(scaled, params['gaussian_window'], mode='nearest')
        sigma = np.sqrt(np.abs(ndimage.convolve(scaled ** 2, params['gaussian_window'], mode='nearest') - mu ** 2))
        centred = scaled - mu
        # A flat 7x7 window's mean is its own pixel, so its coefficient is exactly 0: neither a left
        # nor a right sample for the AGGD fit. Float sums leave +-1e-14 there instead, of random
        # sign, which moves NIQE by 4e-4 on baboon; snapped to 0, it matches MATLAB to 1e-6.
        centred[np.abs(centred) < 1e-9] = 0.
        mscn = centred / (sigma + 1.)  # (rows * 96 / scale, cols * 96 / scale), about in [-3, 3]
        size = NIQE_BLOCK_SIZE // scale
        blocks = mscn.reshape(rows, size, cols, size).swapaxes(1, 2).reshape(rows * cols, size, size)
        features.append(_niqe_block_features(blocks))  # (n_blocks, 18)
    features = np.concatenate(features, axis=1)  # (n_blocks, 36)

    # The distorted image's Gaussian: MATLAB's nanmean, and nancov's covariance over the blocks
    # with no NaN feature. One block has no covariance: take zero, the spread of one sample.
    mu_distorted = np.nanmean(features, axis=0)  # (36,)
    complete = features[~np.isnan(features).any(axis=1)]
    cov_distorted = np.cov(complete, rowvar=False) if len(complete) > 1 else np.zeros((36, 36))
    difference = params['mu_pris_param'][0] - mu_distorted  # (36,)
    cov_pooled = (params['cov_pris_param'] + cov_distorted) / 2.
    return float(np.sqrt(difference @ np.linalg.pinv(cov_pooled) @ difference))  # paper, Eq. 10


def _niqe_block_features(blocks):
    """The release's 18 features of each block of MSCN coefficients, (n, h, w) -> (n, 18).

    The AGGD shape and mean scale of the coefficients, then shape, mean, left and right scale of
    the products of horizontal, vertical and both diagonal neighbours (paper, Sec. II).
    """
    from scipy.special import gamma
    n_blocks = len(blocks)
    alpha, beta_left, beta_right = _fit_aggd(blocks.reshape(n_blocks, -1))
    columns = [alpha, (beta_left + beta_right) / 2.]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        # Shifted circularly within each block, as the release's circshift does.
        products = blocks * np.roll(blocks, shift, axis=(1, 2))  # (n, h, w)
        alpha, beta_left, beta_right = _fit_aggd(products.reshape(n_blocks, -1))
        mean = (beta_right - beta_left) * gamma(2. / alpha) / gamma(1. / alpha)  # paper, Eq. 8
        columns += [alpha, mean, beta_left, beta_right]
    return np.stack(columns, axis=1)


def _fit_aggd(samples):
    """Fit an asymmetric generalized Gaussian to each row of samples (n, m) by moment matching.

    Returns the shape alpha and the left and right scales (each (n,)). As the release's
    estimateaggdparam.m: alpha is the point of the grid 0.2, 0.201, ..., 10 whose moment ratio
    Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)) is nearest the samples' corrected ratio. A row with no
    negative or no positive sample gets NaN scales (and alpha 0.2, MATLAB's min over NaNs).
    """
    from scipy.special import gamma
    alphas = 0.2 + 0.001 * np.arange(9801)  # MATLAB's 0.2:0.001:10
    ratios = gamma(2. / alphas) ** 2 / (gamma(1. / alphas) * gamma(3. / alphas))  # (9801,)
    squares = samples ** 2
    negative, positive = samples < 0, samples > 0
    with np.errstate(divide='ignore', invalid='ignore'):  # the NaNs above, for rows without a sign
        left_std = np.sqrt((squares * negative).sum(axis=1) / negative.sum(axis=1))  # (n,)
        right_std = np.sqrt((squares * positive).sum(axis=1) / positive.sum(axis=1))
        gamma_hat = left_std / right_std
        r_hat = np.mean(np.abs(samples), axis=1) ** 2 / np.mean(squares, axis=1)
        r_hat_norm = r_hat * (gamma_hat ** 3 + 1.) * (gamma_hat + 1.) / (gamma_hat ** 2 + 1.) ** 2
    alpha = alphas[np.argmin((ratios - r_hat_norm[:, None]) ** 2, axis=1)]  # (n,)
    scale = np.sqrt(gamma(1. / alpha) / gamma(3. / alpha))  # from standard deviation to AGGD scale
    return alpha, left_std * scale, right_std * scale


def _imresize_matlab(img, scale):
    """MATLAB's imresize(img, scale) of a 2-D float array: bicubic, antialiased when shrinking.

    Not Pillow's resize: MATLAB widens the kernel by 1/scale when shrinking, mirrors the edges
    and does not round; NIQE's second scale is defined with MATLAB's. Returns
    (ceil(H * scale), ceil(W * scale)).
    """
    rows = _imresize_weights(img.shape[0], scale)  # (h, H)
    cols = _imresize_weights(img.shape[1], scale)  # (w, W)
    return rows @ img @ cols.T  # (h, w)


def _imresize_weights(in_length, scale):
    """The (out_length, in_length) matrix of MATLAB's imresize along one axis (imresize.m's
    contributions(): Keys' cubic with a = -0.5, 1-based coordinates, symmetric edges)."""
    out_length = int(np.ceil(in_length * scale))
    stretch = min(scale, 1.)  # antialiasing: a shrinking kernel is 1/scale times wider and lower
    width = 4. / stretch
    centres = np.arange(1, out_length + 1) / scale + 0.5 * (1. - 1. / scale)  # in input pixels, 1-based
    taps = np.floor(centres - width / 2.)[:, None] + np.arange(int(np.ceil(width)) + 2)  # (out, P), 1-based
    distance = np.abs(stretch * (centres[:, None] - taps))
    cubic = np.where(distance <= 1., 1.5 * distance ** 3 - 2.5 * distance ** 2 + 1.,
                     np.where(distance <= 2., -0.5 * distance ** 3 + 2.5 * distance ** 2 - 4. * distance + 2., 0.))
    weights = cubic / cubic.sum(axis=1, keepdims=True)  # (out, P); the stretch factor cancels here
    # Taps beyond an edge read the mirror image, with the edge pixel repeated: 1..n, n..1, 1..n ...
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])
    sources = mirror[(taps.astype(int) - 1) % (2 * in_length)]  # (out, P), 0-based
    matrix = np.zeros((out_length, in_length))
    np.add.at(matrix, (np.arange(out_length)[:, None], sources), weights)
    return matrix


# ----------------------------------------------------------------------------------------------
# Writing outputs safely
# ----------------------------------------------------------------------------------------------

TMP_PREFIX = '.tmp_'  # temporary files are named .tmp_<pid>_<random><suffix>, beside their target


@contextlib.contextmanager
def atomic_write(path, mode='wb', newline=None):
    """Open a temporary file beside `path`; on success, os.replace it onto `path`.

    A crash, a kill or a full disk midway leaves the old `path` as it was (or no file), never a
    torn one; on an error the temporary file is removed and the error goes on. The temporary
    name carries this process's id, so remove_stale_temporaries can tell a dead run's leftovers.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=f'{TMP_PREFIX}{os.getpid()}_', suffix=suffix)
    try:
        with os.fdopen(fd, mode, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the file
        os.chmod(tmp_path, 0o644)  # mkstemp makes files private; outputs are ordinary files
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def save_image(img, path):
    """Save a PIL image atomically, in the format its file extension names."""
    extension = os.path.splitext(path)[1].lower()
    image_format = Image.registered_extensions().get(extension)
    if image_format is None:
        raise ValueError(f"{path}: {extension!r} is not an image format Pillow can write")
    with atomic_write(path) as f:
        img.save(f, format=image_format)


def save_json(obj, path):
    """Write JSON atomically, indented for people to read."""
    with atomic_write(path, 'w') as f:
        json.dump(obj, f, indent=2)
        f.write('\n')


def save_figure(fig, path):
    """Save a matplotlib figure atomically (the format from the extension)."""
    with atomic_write(path) as f:
        fig.savefig(f, format=os.path.splitext(path)[1][1:] or 'png', dpi=100)


def remove_stale_temporaries(folder):
    """Delete the temporary files that a killed process left in `folder`; returns their paths.

    Only files named by atomic_write whose process is no longer alive are removed: a run that is
    still writing keeps its own.
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        if not name.startswith(TMP_PREFIX):
            continue
        pid_text = name[len(TMP_PREFIX):].split('_', 1)[0]
        if pid_text.isdigit() and (int(pid_text) == os.getpid() or _process_alive(int(pid_text))):
            continue  # still being written
        os.remove(os.path.join(folder, name))
        removed.append(os.path.join(folder, name))
    if removed:
        print(f"Removed {len(removed)} temporary file(s) left by an interrupted run in {folder}")
    return removed


def _process_alive(pid):
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


# ----------------------------------------------------------------------------------------------
# Config from the command line
# ----------------------------------------------------------------------------------------------

class ConfigError(ValueError):
    """A constant or command-line value that cannot work; the message says which and why."""


def run_script(main, script_file):
    """Run a script's main(sys.argv[1:]), turning the project's expected errors into one line.

    Bad paths, values, lists and checkpoints (FileNotFoundError, ValueError) and failed writes
    (OSError: a full disk, a read-only folder) print `script: error: message` on stderr and exit
    with code 1, with no traceback; anything else is a bug and keeps its traceback.
    """
    try:
        main(sys.argv[1:])
    except (OSError, ValueError, TrainingDiverged) as error:
        message = str(error) or type(error).__name__
        if isinstance(error, OSError) and not isinstance(error, FileNotFoundError) and error.filename:
            message = f"cannot write or read {error.filename}: {error.strerror}"
        sys.exit(f"{os.path.basename(script_file)}: error: {' '.join(message.split())}")


def require(condition, message):
    """Raise ConfigError(message) unless condition holds: for checking config values up front."""
    if not condition:
        raise ConfigError(message)


def parse_config(script_globals, argv):
    """Apply `--key=value` overrides to a script's typed top-of-file constants.

    The constants are the script's annotated globals (`batch_size: int = 16`). Values parse as
    Python literals where they can, else as strings. An unknown key or a value of the wrong type
    is refused before anything is printed or any work starts. The script's globals are left as
    they are (so main() can run again in the same process), and the config is returned as a
    namespace: vars(config) is the snapshot printed and stored in checkpoints.
    """
    annotations = script_globals.get('__annotations__') \
        or getattr(sys.modules.get(script_globals.get('__name__')), '__annotations__', {})  # Python 3.14 is lazy
    script = os.path.basename(script_globals.get('__file__', 'script'))
    if any(arg in ('-h', '--help') for arg in argv):
        print(f"usage: python {script} [--key=value ...]\n\nconstants and their defaults:")
        for key in annotations:
            print(f"  --{key}={script_globals[key]!r}")
        sys.exit(0)
    config = {key: script_globals[key] for key in annotations}
    overrides = {}
    for arg in argv:
        if not arg.startswith('--') or '=' not in arg:
            raise ConfigError(f"arguments take the form --key=value, got {arg!r}")
        key, text = arg[2:].split('=', 1)
        if key not in annotations:
            raise ConfigError(f"unknown key {key!r}; known keys: {', '.join(annotations)}")
        expected = annotations[key]
        if expected is str:
            # A path or a name: --checkpoint=123 means the file "123", and a quoted '' means empty.
            value = text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in '"\'' else text
        else:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
            if expected is float and type(value) is int:
                value = float(value)
            if expected is list and isinstance(value, tuple):
                value = list(value)
            if type(value) is not expected:
                raise ConfigError(f"--{key} must be of type {expected.__name__}, got {text!r}")
        overrides[key] = value
    for key, value in overrides.items():
        print(f"Overriding: {key} = {value!r}")
    config.update(overrides)
    return types.SimpleNamespace(**config)


# ----------------------------------------------------------------------------------------------
# Device, precision, randomness
# ----------------------------------------------------------------------------------------------

def pick_device(name='auto'):
    """torch.device for 'auto' (cuda, then mps, then cpu) or an explicit name such as 'cuda:1'."""
    if name == 'auto':
        if torch.cuda.is_available():
            name = 'cuda'
        elif getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available():
            name = 'mps'
        else:
            name = 'cpu'
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device name (try 'auto', 'cpu', 'cuda' or 'cuda:1')") from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but this machine has no CUDA GPU (try device='auto' or 'cpu')")
    if device.type == 'cuda' and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def amp_settings(device, amp):
    """(autocast dtype or None, use a GradScaler?): the one place precision is decided.

    amp: 'auto' is bf16 on CUDA cards that support it, else fp16 with a GradScaler (fp16's narrow
    range needs loss scaling, bf16's does not), and off elsewhere; 'bf16', 'fp16' and 'off' force
    a choice (both run on the CPU too, which is how the tests exercise the mixed-precision paths).
    """
    if amp not in ('auto', 'bf16', 'fp16', 'off'):
        raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {amp!r}")
    if amp == 'auto':
        if device.type != 'cuda':
            return None, False
        amp = 'bf16' if torch.cuda.is_bf16_supported() else 'fp16'
    if amp == 'off':
        return None, False
    if amp == 'fp16':
        return torch.float16, True
    return torch.bfloat16, False


def seed_everything(seed):
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states():
    """The random number generators' states, for a checkpoint, in types that weights_only loads."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states = {'python': random.getstate(), 'numpy': (name, keys.tolist(), position, has_gauss, cached_gaussian),
              'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    """Restore what rng_states() returned."""
    random.setstate(states['python'])
    name, keys, position, has_gauss, cached_gaussian = states['numpy']
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------

def save_checkpoint(state, path):
    """torch.save through atomic_write, so that a crash or a kill never leaves a torn checkpoint."""
    with atomic_write(path) as f:
        torch.save(state, f)


def load_checkpoint(path, map_location='cpu', required_keys=(), kind='checkpoint'):
    """Load a checkpoint dict safely (weights_only=True: no code is unpickled).

    Args:
        path: the .pth file.
        map_location: where tensors go, so a GPU-saved checkpoint loads on a CPU-only machine.
        required_keys: keys the dict must have; a missing one is a clear error naming the file.
        kind: what the caller expects, for the error messages ('SRResNet checkpoint', ...).
    """
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} not found: {path!r}")
    with open(path, 'rb') as f:
        head = f.read(64)
    if not head:
        raise ValueError(f"{path} is empty (0 bytes), not a {kind}")
    if head.startswith(b'version https://git-lfs'):
        raise ValueError(f"{path} is a Git LFS pointer, not the {kind} itself: fetch it with `git lfs pull`")
    # torch.save writes a zip archive ('PK'); PyTorch before 1.6 wrote a pickle (protocol 2: b'\x80').
    if not head.startswith((b'PK', b'\x80')):
        what = 'text' if all(32 <= byte < 127 or byte in b'\t\r\n' for byte in head) else 'other data'
        raise ValueError(f"{path} is not a PyTorch checkpoint: it holds {what}, starting {head[:24]!r}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} could not be loaded as a {kind} with weights_only=True: {error}") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} is not a {kind}: it holds a {type(checkpoint).__name__}, not a dict")
    missing = [key for key in required_keys if key not in checkpoint]
    if missing:
        raise ValueError(f"{path} is not a {kind}: it lacks the keys {missing} (it has {sorted(checkpoint)})")
    return checkpoint


def load_sr_model(path, device='cpu', kind=''):
    """Rebuild a trained SRResNet or SRGAN generator from its checkpoint, in eval mode.

    Accepts this project's SRResNet checkpoints ('model') and SRGAN checkpoints ('generator'),
    both with 'model_args'. kind: 'srresnet' or 'srgan' insists on that kind of checkpoint (a
    clear error naming the file otherwise); '' takes either. Returns (model, checkpoint dict).

    Everything is checked before the network is built, and a problem is a ValueError naming the
    file (load_checkpoint says what an empty file, a text file or a Git LFS pointer is); 'model_args' must hold
    SRResNet's own argument names with int values, and each (or, for a missing key, SRResNet's
    default) must agree with the weights' shapes. So a damaged or hand-edited checkpoint asking
    for 20,000 residual blocks fails at once, instead of after allocating them.
    """
    import inspect  # local imports: models' import stays one-way, and inspect is needed only here
    from models import SRResNet
    names = {'': 'SRResNet or SRGAN checkpoint', 'srresnet': 'SRResNet checkpoint', 'srgan': 'SRGAN checkpoint'}
    if kind not in names:
        raise ValueError(f"kind must be '', 'srresnet' or 'srgan', got {kind!r}")
    checkpoint = load_checkpoint(path, map_location='cpu', required_keys=('model_args',), kind=names[kind])
    key = {'srresnet': 'model', 'srgan': 'generator'}.get(kind) or ('model' if 'model' in checkpoint else 'generator')
    if key not in checkpoint or (kind == 'srresnet' and 'generator' in checkpoint):
        raise ValueError(f"{path} is not an {names[kind]}: it has the keys {sorted(checkpoint)} (SRResNet "
                         f"checkpoints hold 'model', SRGAN checkpoints 'generator')")

    model_args, state_dict = checkpoint['model_args'], checkpoint[key]
    if not isinstance(model_args, dict):
        raise ValueError(f"{path}: 'model_args' must be a dict of SRResNet arguments, "
                         f"got a {type(model_args).__name__}")
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(tensor) for tensor in state_dict.values()):
        raise ValueError(f"{path}: {key!r} must be a state_dict (a dict of tensors)")
    parameters = inspect.signature(SRResNet).parameters  # large_kernel_size=9, ..., scaling_factor=4
    unknown = sorted(set(model_args) - set(parameters), key=str)
    if unknown:
        raise ValueError(f"{path}: model_args has unknown keys {unknown}; SRResNet takes {list(parameters)}")
    not_ints = {name: value for name, value in model_args.items()
                if type(value) is not int or value < (0 if name == 'n_blocks' else 1)}  # bool is no int here
    if not_ints:
        raise ValueError(f"{path}: model_args values must be positive ints, got {not_ints}")
    args = {name: model_args.get(name, parameter.default) for name, parameter in parameters.items()}

    # What the weights say, from a few shapes and the numbered blocks, checked before anything is built.
    first = tuple(state_dict.get('conv_block1.conv_block.0.weight', torch.empty(0)).shape)  # (C, 3, large, large)
    middle = tuple(state_dict.get('conv_block2.conv_block.0.weight', torch.empty(0)).shape)  # (C, C, small, small)
    if len(first) != 4 or len(middle) != 4:
        raise ValueError(f"{path}: {key!r} is not an SRResNet's state_dict: it lacks the weights of "
                         f"conv_block1 or conv_block2 (its first keys: {list(state_dict)[:4]})")
    blocks = {name.split('.')[1] for name in state_dict if name.startswith('residual_blocks.')}
    upscales = {name.split('.')[1] for name in state_dict if name.startswith('subpixel_convolutional_blocks.')}
    found = {'large_kernel_size': first[-1], 'small_kernel_size': middle[-1], 'n_channels': first[0],
             'n_blocks': len(blocks), 'scaling_factor': 2 ** len(upscales)}  # one x2 sub-pixel block per doubling
    mismatches = [f"{name}={args[name]}{'' if name in model_args else ' (the default: model_args lacks it)'}, "
                  f"the weights {value}" for name, value in found.items() if args[name] != value]
    if mismatches:
        raise ValueError(f"{path}: model_args do not match the weights: {'; '.join(mismatches)}")
    try:
        model = SRResNet(**args)
        model.load_state_dict({name: tensor.float() for name, tensor in state_dict.items()})
    except (ValueError, RuntimeError) as error:  # a scaling factor SRResNet refuses; a missing or misshapen layer
        raise ValueError(f"{path}: the weights do not fit SRResNet({args}): {error}") from None
    return model.to(device).eval(), checkpoint


def load_training_checkpoint(path, required_keys, kind, model_args):
    """Load a checkpoint to resume, checking it has every key resumption needs and the model
    shape this run asks for (clear errors naming the file)."""
    state = load_checkpoint(path, 'cpu', required_keys, kind=kind)
    if state['model_args'] != model_args:
        raise ConfigError(f"{path} was trained with model_args {state['model_args']}, not {model_args}: "
                          f"resume with the same model constants")
    return state


def load_states(path, pairs):
    """Load each (module or optimizer or scaler, state_dict) pair, turning a mismatch into a
    one-line ValueError naming the checkpoint file."""
    for target, state in pairs:
        try:
            target.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"{path}: its {type(target).__name__} state does not fit this run: {first_line}") from None


def best_psnr_in(path):
    """The best_psnr recorded in a best-checkpoint file, or -inf if there is none."""
    if not os.path.isfile(path):
        return float('-inf')
    return load_checkpoint(path, 'cpu', ('best_psnr',), kind='best checkpoint')['best_psnr']


def load_weights(model, path, model_args):
    """Initialise `model` from the SRResNet or generator weights of any of this project's
    checkpoints (training or shipped), leaving the optimizer fresh: the fine-tuning start."""
    state = load_checkpoint(path, 'cpu', ('model_args',), kind='checkpoint to initialise from')
    key = 'model' if 'model' in state else 'generator'
    if key not in state:
        raise ValueError(f"{path} holds no 'model' or 'generator' weights (it has {sorted(state)})")
    if state['model_args'] != model_args:
        raise ConfigError(f"{path} holds a model with model_args {state['model_args']}, not {model_args}")
    load_states(path, [(model, {name: tensor.float() for name, tensor in state[key].items()})])
    print(f"Weights initialised from {path} (iteration {state.get('iteration', '?')}), with a fresh optimizer")


def export_for_inference(path, out_path):
    """Write the small file that ships a trained model: its generator weights in float16 with
    model_args, iteration, config, best_psnr and train_seconds; no optimizer, no discriminator.
    Returns out_path."""
    state = load_checkpoint(path, 'cpu', ('model_args', 'iteration', 'config'), kind='training checkpoint')
    key = 'model' if 'model' in state else 'generator'
    small = {key: {name: tensor.half() if tensor.is_floating_point() else tensor
                   for name, tensor in state[key].items()}}
    small.update({name: state[name] for name in ('model_args', 'iteration', 'config', 'best_psnr', 'train_seconds')
                  if name in state})
    save_checkpoint(small, out_path)
    return out_path


def unwrap(model):
    """The plain module inside DistributedDataParallel or torch.compile wrappers, whose
    state_dict keys carry no 'module.' or '_orig_mod.' prefixes."""
    while hasattr(model, 'module') or hasattr(model, '_orig_mod'):
        # Not `getattr(...) or ...`: an empty nn.Sequential is falsy.
        model = model.module if hasattr(model, 'module') else model._orig_mod
    return model


# ----------------------------------------------------------------------------------------------
# Training bookkeeping
# ----------------------------------------------------------------------------------------------

def clip_gradient(optimizer, grad_clip):
    """Clamp every gradient element to [-grad_clip, grad_clip] (a guard against exploding gradients)."""
    for group in optimizer.param_groups:
        for param in group['params']:
            if param.grad is not None:
                param.grad.data.clamp_(-grad_clip, grad_clip)


def make_adam(parameters, lr, device):
    """Adam, fused into a few kernels on CUDA (one launch for all parameters instead of several
    per tensor: the step never waits on Python), the default multi-tensor version elsewhere."""
    return torch.optim.Adam(parameters, lr=lr, fused=device.type == 'cuda' or None)


def learning_rate_at(iteration, lr, schedule, iterations, decay_at=0, decay=0.1, warmup=0):
    """The learning rate of 1-based `iteration`.

    schedule: 'step' (lr, times `decay` after iteration decay_at; decay_at=0 means never: the
    paper's schedules) or 'cosine' (lr falling along half a cosine to 0 at `iterations`).
    warmup: iterations of linear ramp from lr/warmup up to lr first (0 = none).
    """
    if schedule not in ('step', 'cosine'):
        raise ConfigError(f"lr_schedule must be 'step' or 'cosine', got {schedule!r}")
    if iteration <= warmup:
        return lr * iteration / warmup
    if schedule == 'cosine':
        progress = (iteration - 1 - warmup) / max(1, iterations - warmup)
        return lr * 0.5 * (1. + math.cos(math.pi * progress))
    return lr * decay if decay_at and iteration > decay_at else lr


def set_learning_rate(optimizer, lr):
    """Give every parameter group of `optimizer` this learning rate."""
    for group in optimizer.param_groups:
        group['lr'] = lr


def check_training_config(config):
    """Refuse values that cannot train, before any work starts (one ConfigError naming the key)."""
    for key in ('iterations', 'batch_size', 'crop_size', 'print_freq', 'save_freq'):
        require(getattr(config, key) > 0, f"{key} must be a positive integer, got {getattr(config, key)}")
    for key in ('val_freq', 'lr_decay_at', 'warmup_iterations', 'workers'):
        require(getattr(config, key) >= 0, f"{key} must be >= 0, got {getattr(config, key)}")
    require(config.lr > 0, f"lr must be positive, got {config.lr}")
    require(config.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {config.grad_clip}")
    learning_rate_at(1, config.lr, config.lr_schedule, config.iterations)  # checks the schedule's name


def refuse_to_overwrite(path, overwrite):
    """A fresh run must not destroy an earlier run's checkpoint at `path` unless told to."""
    if os.path.exists(path) and not overwrite:
        raise ConfigError(f"{path} holds an earlier run. Resume it with --checkpoint={path}, start elsewhere "
                          f"with --out_dir=..., or replace it with --overwrite=True")


class TrainingDiverged(RuntimeError):
    """A loss or a weight became NaN or infinite: the run stops, keeping its last good checkpoint."""


class TrainingMonitor:
    """The accounting of a training run, so that the loop itself shows only the method.

    The losses are summed on the device and read back once every `print_freq` iterations (the one
    host-device sync of the loop), when report() checks that they and the weights are finite,
    prints one line (losses, learning rate, ms per iteration, samples/s, ETA) and appends a row
    to the CSV log. Time spent validating and saving is not training time: restart_clock() after
    them. Ranks other than 0 keep the sums and checks but print and write nothing.

    Args:
        name: the model's name, for the progress bar.
        loss_names: the losses add() receives, in order.
        iterations, start_iteration: the run's length, and where it starts (resumed runs).
        print_freq: iterations between reports.
        samples_per_iteration: the global batch, for samples/s.
        log_path: the CSV log (its plot goes beside it), or None (ranks other than 0).
        train_seconds: training time before start_iteration.
        device: where the losses are summed.
    """

    def __init__(self, name, loss_names, iterations, start_iteration, print_freq, samples_per_iteration, log_path,
                 train_seconds, device):
        from tqdm import tqdm  # here, not at import time: only training needs it
        self.loss_names, self.iterations, self.print_freq = list(loss_names), iterations, print_freq
        self.samples_per_iteration, self.train_seconds = samples_per_iteration, train_seconds
        self.sums = torch.zeros(len(loss_names), device=device)
        self.n_summed, self.tick = 0, time.perf_counter()
        self.log = None
        if log_path:
            self.log = TrainingLog(log_path, ['iteration', 'train_seconds'] + self.loss_names
                                   + ['lr', 'ms_per_iteration', 'val_psnr', 'val_ssim'], resume_from=start_iteration)
        # The bar is for a person at a terminal; a log file (nohup) gets the compact lines alone.
        self.progress = tqdm(total=iterations, initial=start_iteration, desc=name, dynamic_ncols=True,
                             disable=not (log_path and sys.stderr.isatty()))

    def add(self, *losses):
        """Add this iteration's losses (scalar tensors) to the sums, without waiting for the device."""
        self.sums += torch.stack([loss.detach().float() for loss in losses])
        self.n_summed += 1
        self.progress.update(1)

    def due(self, iteration, *freqs):
        """Whether `iteration` reports: every print_freq, every one of `freqs` (save_freq, ...), the last."""
        return iteration == self.iterations or any(f and iteration % f == 0 for f in (self.print_freq,) + freqs)

    def report(self, iteration, lr, parameters):
        """Read the mean losses since the last report, check them and the weights, print and log.
        Returns {loss name: mean}; raises TrainingDiverged on a NaN or infinity."""
        means = dict(zip(self.loss_names, (self.sums / self.n_summed).tolist()))  # waits for the device
        ms = (time.perf_counter() - self.tick) * 1000 / self.n_summed
        self.train_seconds += ms * self.n_summed / 1000
        if not (all(math.isfinite(v) for v in means.values()) and all_finite(parameters)):
            self.close()
            raise TrainingDiverged(
                f"Stopping: a loss or a weight became non-finite ({means}) between iterations "
                f"{iteration - self.n_summed + 1} and {iteration}. The last good checkpoint is kept. "
                f"Try a lower lr, warmup_iterations, grad_clip, or amp='off'.")
        if self.log:
            eta_minutes = ms * (self.iterations - iteration) / 60_000
            losses = '  '.join(f"{name} {value:.5f}" for name, value in means.items())
            self.progress.write(f"[{iteration}/{self.iterations}] {losses}  lr {lr:.2e}  {ms:.1f} ms/it  "
                                f"{self.samples_per_iteration * 1000 / ms:.0f} samples/s  ETA {eta_minutes:.0f} min")
            self.log.log(iteration=iteration, train_seconds=f'{self.train_seconds:.1f}', lr=f'{lr:.3e}',
                         ms_per_iteration=f'{ms:.2f}', **{name: f'{value:.6f}' for name, value in means.items()})
        self.sums.zero_()
        self.n_summed = 0
        return means

    def report_validation(self, iteration, name, psnr, ssim):
        """Print and log a validation result."""
        if self.log:
            self.progress.write(f"[{iteration}/{self.iterations}] {name}: PSNR {psnr:.3f} dB, SSIM {ssim:.4f}")
            self.log.log(iteration=iteration, train_seconds=f'{self.train_seconds:.1f}', val_psnr=f'{psnr:.4f}',
                         val_ssim=f'{ssim:.5f}')

    def plot(self, panels):
        """Redraw the curves beside the CSV (TrainingLog.plot)."""
        if self.log:
            self.log.plot(panels)

    def restart_clock(self):
        """Start timing training again (after validating or saving, which are not training)."""
        self.tick = time.perf_counter()

    def close(self):
        self.progress.close()


@torch.inference_mode()
def evaluate_sr(model, dataset, device, scaling_factor, progress=None):
    """Per-image (psnr, ssim) of a model on a test SRDataset (LR 'imagenet-norm', HR '[-1, 1]').

    The SR image is rounded and clamped to 8 bits, as a saved image would be, before measuring.
    progress: an optional callable that wraps the image iterator (a tqdm, say).
    """
    results = []
    indices = range(len(dataset))
    for i in (progress(indices) if progress else indices):
        lr_img, hr_img = dataset[i]  # (3, h, w) ImageNet-normed; (3, h * s, w * s) in [-1, 1]
        sr_img = model(lr_img.unsqueeze(0).to(device))[0]  # (3, h * s, w * s), in [-1, 1], float32
        sr_pil = convert_image(sr_img, source='[-1, 1]', target='pil')
        hr_pil = convert_image(hr_img, source='[-1, 1]', target='pil')
        results.append(compute_psnr_ssim(sr_pil, hr_pil, crop_border=scaling_factor))
    return results


# ----------------------------------------------------------------------------------------------
# Shared by train_srresnet.py and train_srgan.py
# ----------------------------------------------------------------------------------------------

def setup_distributed(device_name):
    """Pick the device and, under torchrun, join the process group.

    Launched with plain `python`, this is single-process: (device, rank 0, world size 1), and no
    distributed code runs. Under `torchrun`, each process takes its own GPU (LOCAL_RANK) and
    joins with NCCL on CUDA or Gloo on the CPU. Returns (device, rank, world_size).
    """
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    device = pick_device(device_name)
    if world_size == 1:
        return device, 0, 1
    if device.type == 'cuda':
        device = torch.device('cuda', int(os.environ['LOCAL_RANK']))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo')
    return device, torch.distributed.get_rank(), world_size


def wrap_distributed(model, device, sync_bn):
    """Wrap a model in DistributedDataParallel (under torchrun), optionally with SyncBatchNorm.

    SyncBatchNorm computes batch statistics over every process's batch, which matters when each
    process holds only a few images. PyTorch runs it on GPUs only, so on the CPU it is refused.
    The wrapped model's plain module (utils.unwrap) still saves plain BatchNorm keys.
    """
    if sync_bn:
        if device.type != 'cuda':
            raise ValueError("sync_bn=True needs CUDA: PyTorch's SyncBatchNorm does not run on the CPU")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        n_sync = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
        print(f"Rank {torch.distributed.get_rank()}: {n_sync} SyncBatchNorm layers")
    device_ids = [device.index] if device.type == 'cuda' else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def cleanup_distributed(*models):
    """Leave the process group, if there is one, with every rank holding rank 0's buffers.

    DDP keeps the parameters equal, and broadcasts rank 0's buffers (BatchNorm running statistics)
    before each forward pass; after the last one each rank has updated them with its own batch.
    Broadcasting them once more leaves every rank with the model rank 0 saved.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for model in models:
            for buffer in unwrap(model).buffers():
                torch.distributed.broadcast(buffer, src=0)
        torch.distributed.destroy_process_group()


def validate(model, dataset, device, scaling_factor):
    """Mean (PSNR, SSIM) of a model in training over a validation dataset, in float32 (whatever the
    training precision); the model is put back in train mode."""
    model.eval()
    scores = evaluate_sr(unwrap(model), dataset, device, scaling_factor)
    model.train()
    return sum(s[0] for s in scores) / len(scores), sum(s[1] for s in scores) / len(scores)


def all_finite(tensors):
    """True when every element of every tensor is finite (no NaN, no inf)."""
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class TrainingLog:
    """The run's CSV log (one row per logged iteration) and its PNG plot of the curves.

    Args:
        path: the CSV file; the plot goes beside it with a .png suffix.
        fields: column names; 'iteration' must be first.
        resume_from: on a resumed run, the checkpoint's iteration: rows after it (logged by the
            interrupted run after its last checkpoint) are dropped, so the log tells one story.
    """

    def __init__(self, path, fields, resume_from=0):
        self.path, self.fields = path, list(fields)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.rows = []
        if resume_from and os.path.isfile(path):
            with open(path, newline='') as f:
                self.rows = [row for row in csv.DictReader(f) if int(row['iteration']) <= resume_from]
        self._write()

    def log(self, **values):
        """Append one row (missing fields stay empty) and rewrite the CSV."""
        self.rows.append({field: values.get(field, '') for field in self.fields})
        self._write()

    def _write(self):
        tmp_path = self.path + '.tmp'
        with open(tmp_path, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp_path, self.path)

    def plot(self, panels):
        """Draw the curves to <path>.png.

        panels: {panel title: [field, ...]}, one subplot per title, each field a curve against
        iteration. Fields named like 'val_*' are drawn with markers (they are sparse).
        """
        import matplotlib
        matplotlib.use('Agg')  # no display needed
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
        for ax, (title, fields) in zip(axes[0], panels.items()):
            for field in fields:
                points = [(int(row['iteration']), float(row[field])) for row in self.rows if row[field] != '']
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, marker='o' if field.startswith('val_') else None, markersize=3, label=field)
            ax.set_title(title)
            ax.set_xlabel('iteration')
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.splitext(self.path)[0] + '.png', dpi=100)
        plt.close(fig)
