"""The image maths every script shares: conversions between image representations (and from
images of any mode to RGB), the training transforms, Pillow's bicubic resize in tensor
operations, the data lists, the metrics (PSNR, SSIM, NIQE), labelled grids of images, and
writing outputs safely. runtime.py holds how a run is driven.

Importing this module picks no device, creates no tensor and reads no file.
"""
import contextlib
import errno
import functools
import itertools
import json
import math
import os
import random
import re
import tempfile
import warnings

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

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


def open_image(path):
    """Decode an image file, with its EXIF orientation applied. Raises if it is not an image."""
    with Image.open(path) as img:
        return ImageOps.exif_transpose(img)  # a decoded copy (transposed if the EXIF says so)


def to_rgb(img):
    """Split a PIL image of any mode into (8-bit RGB image, alpha channel as an 'L' image, or None).

    Palette images with a transparent colour, LA and PA keep their transparency as alpha.
    16-bit greyscale is scaled to 8 bits (pil_to_rgb); CMYK, YCbCr, LAB and the rest go
    through Pillow's conversion to RGB.
    """
    if img.mode == 'P' and 'transparency' in img.info:
        img = img.convert('RGBA')
    if img.mode in ('RGBA', 'RGBa', 'LA', 'La', 'PA'):
        img = img.convert('RGBA')
        return img.convert('RGB'), img.getchannel('A')
    return pil_to_rgb(img), None

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


def create_data_lists(train_folders, test_folders, min_size, output_folder, val_size=0, val_seed=0, overwrite=False):
    """Write the JSON lists of image paths that SRDataset reads.

    Args:
        train_folders: folders whose images are pooled into train_images.json.
        test_folders: each gives <folder name>_test_images.json.
        min_size: images whose smaller side is below this are left out.
        output_folder: where the lists go (created if needed).
        val_size: images of the training folders held out into val_images.json, to choose
            checkpoints and recipes with (the test sets are for reporting only). 0 holds none
            out, and removes an earlier val_images.json from output_folder.
        val_seed: picks the held-out images; the same folders and seed give the same split on
            any machine, since the choice is made on the sorted list.
        overwrite: replace lists already in output_folder (else a FileExistsError names the first,
            before any image is read).

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

    names = (['train_images.json', 'val_images.json'] if train_folders else []) + \
        [f"{os.path.basename(os.path.normpath(folder))}_test_images.json" for folder in test_folders]
    taken = [name for name in names if os.path.exists(os.path.join(output_folder, name))]
    if taken and not overwrite:
        raise FileExistsError(f"{os.path.join(output_folder, taken[0])} exists and is kept "
                              f"(--overwrite=True replaces the lists)")
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
    stale_val_list = os.path.join(output_folder, 'val_images.json')
    if train_folders and not val_size and os.path.isfile(stale_val_list):
        os.remove(stale_val_list)  # an earlier split's: its images are training images now
        print(f"Removed {stale_val_list}: val_size=0 holds no images out of training")
    for list_name, paths in lists.items():
        with atomic_write(os.path.join(output_folder, list_name), 'w', exists='replace') as f:  # checked above
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
# Labelled grids of images (the comparison figures)
# ----------------------------------------------------------------------------------------------

def grid_font(size):
    """A TrueType font about `size` px high if one is installed, else Pillow's built-in font."""
    for name in ('DejaVuSans.ttf', 'Arial.ttf'):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a bundled scalable font
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()  # else a small bitmap font


def draw_centred_text(draw, text, centre_x, top, font, fill):
    """Draw one line of text centred on centre_x (textbbox: font.getsize is gone from Pillow 10)."""
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    draw.text((centre_x - (right - left) / 2 - left, top), text, font=font, fill=fill)


def labelled_grid(panels, columns, missing=()):
    """Panels of one size in a white grid, each under its label: panels are (label, PIL image or
    None), row by row; a None panel is grey with the lines of `missing` on it."""
    width, height = next(panel.size for _, panel in panels if panel is not None)
    rows = math.ceil(len(panels) / columns)
    font = grid_font(max(12, min(40, width // 14)))
    probe = ImageDraw.Draw(Image.new('RGB', (1, 1))).textbbox((0, 0), 'Ag', font=font)
    line_height = probe[3] - probe[1]
    margin = line_height  # around the panels, and between each label and its panel
    label_height = line_height + margin // 2
    grid = Image.new('RGB', (columns * (width + margin) + margin, rows * (height + label_height + margin) + margin),
                     (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, (label, panel) in enumerate(panels):
        x = margin + (i % columns) * (width + margin)
        y = margin + (i // columns) * (height + label_height + margin)
        draw_centred_text(draw, label, x + width / 2, y, font, fill=(0, 0, 0))
        if panel is not None:
            grid.paste(panel, (x, y + label_height))
        else:  # a model not given: say so where its image would be
            draw.rectangle((x, y + label_height, x + width - 1, y + label_height + height - 1), fill=(230, 230, 230))
            for j, line in enumerate(missing):
                draw_centred_text(draw, line, x + width / 2, y + label_height + height / 2 + (j - 1) * line_height,
                           font, fill=(90, 90, 90))
    return grid


# ----------------------------------------------------------------------------------------------
# Writing outputs safely
# ----------------------------------------------------------------------------------------------

# Every file this project writes goes through atomic_write: it is written under a temporary name
# beside its target, and takes its own name only when complete, by a rename that never replaces
# a file the user did not ask to replace. Temporaries are named .srtmp-<pid>-<8 random><extension>,
# a form only this project makes, so a clean-up can never take a user's file for one of ours.
TMP_PREFIX = '.srtmp-'
_TMP_NAME = re.compile(r'\.srtmp-(\d+)-[a-z0-9_]{8}(\.[A-Za-z0-9]{1,10})?')
EXISTS_RULES = ('refuse', 'next', 'replace')


def numbered_path(path, n):
    """<root>_<n><ext>: the n-th name tried for `path` when a file already has it (n = 0: `path`)."""
    root, extension = os.path.splitext(path)
    return f'{root}_{n}{extension}' if n else path


def _link_no_replace(tmp_path, path):
    """Give the complete file at tmp_path the name `path`, atomically, unless a file has it (then
    FileExistsError): a hard link, which fails on an existing name, then the temporary's removal."""
    try:
        os.link(tmp_path, path)
    except FileExistsError:
        raise
    except OSError:  # a disk without hard links (FAT, some network shares): claim the name, then fill it
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))  # FileExistsError if taken
        os.replace(tmp_path, path)
        return
    os.remove(tmp_path)


class OutputIsInput(ValueError):
    """An output would be written over a file that the run reads."""


def _is_input(path, inputs):
    """Whether `path` is one of the files `inputs` names (the same file, under any name)."""
    return os.path.exists(path) and any(os.path.exists(p) and os.path.samefile(path, p) for p in inputs)


@contextlib.contextmanager
def atomic_write(path, mode='wb', newline=None, exists='refuse', inputs=()):
    """Open a temporary file beside `path`; when the block ends without an error, give it its name.

    Args:
        path: the file to write.
        mode, newline: as for open ('wb', or 'w' for text).
        exists: what happens if a file has that name when the writing is done (not when it started,
            so a file that appears meanwhile is never lost): 'refuse' (FileExistsError, the default),
            'next' (take the first free name of <root>_1<ext>, <root>_2<ext>, ...) or 'replace' (for
            a file this run wrote itself, or one the user named with --overwrite=True).
        inputs: files this run reads: never replaced, whatever `exists` says (ValueError).

    After the block, the file object's `final_path` is the name the file took. A crash, a kill, an
    interrupt or a full disk midway leaves no file under the name and removes the temporary, so
    nothing torn is ever left; the temporary's name carries this process's id, so that
    remove_stale_temporaries can tell a killed run's leftovers.
    """
    if exists not in EXISTS_RULES:
        raise ValueError(f"exists must be one of {EXISTS_RULES}, got {exists!r}")
    if _is_input(path, inputs):
        raise OutputIsInput(f"{path} is an input of this run: it is never written over")
    folder = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1] if re.fullmatch(r'\.[A-Za-z0-9]{1,10}', os.path.splitext(path)[1]) else ''
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=f'{TMP_PREFIX}{os.getpid()}-', suffix=suffix)
    except OSError as error:  # named after the file asked for, not the temporary
        raise OSError(error.errno, error.strerror, path) from None
    try:
        with os.fdopen(fd, mode, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the file
        os.chmod(tmp_path, 0o644)  # mkstemp makes files private; outputs are ordinary files
        if exists == 'replace':
            if _is_input(path, inputs):  # checked again: the name may have changed hands meanwhile
                raise OutputIsInput(f"{path} is an input of this run: it is never written over")
            os.replace(tmp_path, path)
            f.final_path = path
            return
        for n in itertools.count():
            try:
                _link_no_replace(tmp_path, numbered_path(path, n))
                f.final_path = numbered_path(path, n)
                return
            except FileExistsError:
                if exists == 'refuse':
                    raise FileExistsError(f"{path} exists and is kept (--overwrite=True replaces it)") from None
    except BaseException as error:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        if isinstance(error, OSError) and not error.filename and error.errno:  # a full disk: say which file
            raise OSError(error.errno, error.strerror, path) from None
        raise


def check_writable(folder, option, create=True):
    """Create a run's output folder if needed (create=False: only look whether it could be), and
    fail now, not after an hour of work, if it cannot be written: a ValueError naming the option,
    or an OSError naming the folder."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"{option} {folder!r} is a file, not a folder")
    if not create:
        existing = os.path.abspath(folder)
        while not os.path.exists(existing):  # the folder that would hold the ones to make
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise ValueError(f"{option}: {existing!r} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OSError(errno.EACCES, f"Permission denied (--{option})", existing)
        return
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # nameless where the OS allows, and removed at once
            pass
    except OSError as error:
        raise OSError(error.errno, f"{error.strerror} (--{option})", folder) from None


def save_image(img, path, exists='refuse', inputs=()):
    """Save a PIL image atomically, in the format its file extension names; returns the path it
    took (`exists` and `inputs` as for atomic_write)."""
    extension = os.path.splitext(path)[1].lower()
    image_format = Image.registered_extensions().get(extension)
    if image_format is None:
        raise ValueError(f"{path}: {extension!r} is not an image format Pillow can write")
    with atomic_write(path, exists=exists, inputs=inputs) as f:
        img.save(f, format=image_format)
    return f.final_path


def save_json(obj, path, exists='refuse'):
    """Write JSON atomically, indented for people to read; returns the path it took."""
    with atomic_write(path, 'w', exists=exists) as f:
        json.dump(obj, f, indent=2)
        f.write('\n')
    return f.final_path


def save_figure(fig, path, exists='refuse'):
    """Save a matplotlib figure atomically (the format from the extension); returns the path it took."""
    with atomic_write(path, exists=exists) as f:
        fig.savefig(f, format=os.path.splitext(path)[1][1:] or 'png', dpi=100)
    return f.final_path


def remove_stale_temporaries(folder):
    """Delete the temporary files that a killed run of this project left in `folder`; returns their paths.

    Only plain files named exactly as atomic_write names them, whose process is gone, are
    removed: a run that is still writing keeps its own, and a user's file or folder that merely
    starts with the same characters is never touched.
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        match = _TMP_NAME.fullmatch(name)
        path = os.path.join(folder, name)
        if match is None or not os.path.isfile(path) or os.path.islink(path):
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _process_alive(pid):
            continue  # still being written
        try:
            os.remove(path)
        except FileNotFoundError:  # another run cleaned it first
            continue
        removed.append(path)
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
