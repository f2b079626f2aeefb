"""The shared core: image conversions, transforms, data lists, metrics, and the small helpers
every script needs (config overrides, device, seeding, checkpoints, training bookkeeping).

Importing this module picks no device, creates no tensor and reads no file.
"""
import ast
import json
import os
import random
import sys
import tempfile
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
        array = np.asarray(img.convert('RGB'), dtype=np.float32) / 255.  # (H, W, 3), in [0, 1]
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
        hr_img = hr_img.convert('RGB')
        lr_img = hr_img.resize((hr_img.width // self.scaling_factor, hr_img.height // self.scaling_factor),
                               Image.BICUBIC)
        lr_img = convert_image(lr_img, source='pil', target=self.lr_img_type)  # (3, h, w)
        hr_img = convert_image(hr_img, source='pil', target=self.hr_img_type)  # (3, h * s, w * s)
        return lr_img, hr_img


# ----------------------------------------------------------------------------------------------
# Data lists
# ----------------------------------------------------------------------------------------------

def list_images(folder):
    """Sorted paths of the image files (by extension, any letter case) directly in a folder."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    names = sorted(name for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS))
    return [os.path.join(folder, name) for name in names]


def _image_size(path):
    """(width, height) of a decodable image, or None for a file that is not one."""
    try:
        with Image.open(path) as img:
            img.load()  # decode the pixels too: a truncated file opens but fails here
            return img.size
    except Exception:  # PIL raises many kinds of errors on bad files; all mean "skip it"
        return None


def create_data_lists(train_folders, test_folders, min_size, output_folder):
    """Write the JSON lists of image paths that SRDataset reads.

    Args:
        train_folders: folders whose images are pooled into train_images.json.
        test_folders: each gives <folder name>_test_images.json.
        min_size: images whose smaller side is below this are left out.
        output_folder: where the lists go (created if needed).

    Files that are not decodable images are skipped with a warning; the counts are printed.
    Returns {list file name: number of images}.
    """
    for folder in list(train_folders) + list(test_folders):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"image folder not found: {folder}")
    os.makedirs(output_folder, exist_ok=True)

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

    counts = {}
    jobs = [('train_images.json', train_folders)] if train_folders else []
    jobs += [(f"{os.path.basename(os.path.normpath(folder))}_test_images.json", [folder]) for folder in test_folders]
    for list_name, folders in jobs:
        paths, n_small, n_bad = usable(folders)
        with open(os.path.join(output_folder, list_name), 'w') as f:
            json.dump(paths, f, indent=0)
        counts[list_name] = len(paths)
        print(f"{list_name}: kept {len(paths)} images, skipped {n_small} smaller than {min_size} px "
              f"and {n_bad} unreadable files")
    print(f"Lists saved to {output_folder}")
    return counts


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
        rgb = np.asarray(img.convert('RGB'), dtype=np.float64) / 255.  # (H, W, 3), in [0, 1]
        y = 16. + rgb @ np.array(RGB_WEIGHTS_Y)  # (H, W), in [16, 235]
        return y[crop_border:y.shape[0] - crop_border, crop_border:y.shape[1] - crop_border] if crop_border else y

    sr_y, hr_y = y_channel(sr_img), y_channel(hr_img)
    mse = np.mean((sr_y - hr_y) ** 2)
    psnr = float('inf') if mse == 0 else 10. * np.log10(255. ** 2 / mse)
    ssim = structural_similarity(sr_y, hr_y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255.)
    return float(psnr), float(ssim)


# ----------------------------------------------------------------------------------------------
# Config from the command line
# ----------------------------------------------------------------------------------------------

def parse_config(script_globals, argv):
    """Apply `--key=value` overrides to a script's typed top-of-file constants.

    The constants are the script's annotated globals (`batch_size: int = 16`). Values parse as
    Python literals where they can, else as strings. An unknown key or a value of the wrong type
    is refused before any work starts. The script's globals are updated, and the final config is
    returned as a namespace (vars(config) is the snapshot stored in checkpoints).
    """
    annotations = script_globals.get('__annotations__', {})
    script = os.path.basename(script_globals.get('__file__', 'script'))
    if any(arg in ('-h', '--help') for arg in argv):
        print(f"usage: python {script} [--key=value ...]\n\nconstants and their defaults:")
        for key in annotations:
            print(f"  --{key}={script_globals[key]!r}")
        sys.exit(0)
    for arg in argv:
        if not arg.startswith('--') or '=' not in arg:
            sys.exit(f"{script}: arguments take the form --key=value, got {arg!r}")
        key, text = arg[2:].split('=', 1)
        if key not in annotations:
            sys.exit(f"{script}: unknown key {key!r}; known keys: {', '.join(annotations)}")
        expected = annotations[key]
        if expected is str:
            value = text  # a path or a name, never a literal: --checkpoint=123 means the file "123"
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
                sys.exit(f"{script}: --{key} must be of type {expected.__name__}, got {text!r}")
        print(f"Overriding: {key} = {value!r}")
        script_globals[key] = value
    return types.SimpleNamespace(**{key: script_globals[key] for key in annotations})


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
    return torch.device(name)


def amp_settings(device, amp):
    """(autocast dtype or None, use a GradScaler?) for a device: the one place precision is decided.

    CUDA: bf16 where the card supports it, else fp16 with a GradScaler (fp16's narrow range needs
    loss scaling, bf16's does not). CPU: bf16 autocast when asked. Off: (None, False).
    """
    if not amp or device.type not in ('cuda', 'cpu'):
        return None, False
    if device.type == 'cuda' and not torch.cuda.is_bf16_supported():
        return torch.float16, True
    return torch.bfloat16, False


def seed_everything(seed):
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states():
    """The random number generators' states, for a checkpoint."""
    states = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    """Restore what rng_states() returned."""
    random.setstate(states['python'])
    np.random.set_state(states['numpy'])
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------

def save_checkpoint(state, path):
    """torch.save to a temporary file beside `path`, then os.replace it into place, so that a
    crash or a kill never leaves a torn checkpoint behind."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix='.tmp_', suffix='.pth')
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(state, f)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


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


def load_sr_model(path, device='cpu'):
    """Rebuild a trained SRResNet or SRGAN generator from its checkpoint, in eval mode.

    Accepts this project's SRResNet checkpoints ('model') and SRGAN checkpoints ('generator'),
    both with 'model_args'. Returns (model, checkpoint dict).
    """
    from models import SRResNet  # local import keeps the core's import graph one-way
    checkpoint = load_checkpoint(path, map_location='cpu', required_keys=('model_args',),
                                 kind='SRResNet or SRGAN checkpoint')
    key = 'model' if 'model' in checkpoint else 'generator'
    if key not in checkpoint:
        raise ValueError(f"{path} is not an SRResNet or SRGAN checkpoint: it has neither 'model' nor 'generator'")
    model = SRResNet(**checkpoint['model_args'])
    model.load_state_dict({name: tensor.float() for name, tensor in checkpoint[key].items()})
    return model.to(device).eval(), checkpoint


def unwrap(model):
    """The plain module inside DistributedDataParallel or torch.compile wrappers, whose
    state_dict keys carry no 'module.' or '_orig_mod.' prefixes."""
    while hasattr(model, 'module') or hasattr(model, '_orig_mod'):
        model = getattr(model, 'module', None) or getattr(model, '_orig_mod')
    return model


# ----------------------------------------------------------------------------------------------
# Training bookkeeping
# ----------------------------------------------------------------------------------------------

class AverageMeter:
    """Keeps the latest value, the sum, the count and the running average of a metric."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.val, self.sum, self.count, self.avg = 0., 0., 0, 0.

    def update(self, val, n=1):
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


def clip_gradient(optimizer, grad_clip):
    """Clamp every gradient element to [-grad_clip, grad_clip] (a guard against exploding gradients)."""
    for group in optimizer.param_groups:
        for param in group['params']:
            if param.grad is not None:
                param.grad.data.clamp_(-grad_clip, grad_clip)


def adjust_learning_rate(optimizer, shrink_factor):
    """Multiply every parameter group's learning rate by shrink_factor."""
    for group in optimizer.param_groups:
        group['lr'] = group['lr'] * shrink_factor
    print(f"Learning rate now {optimizer.param_groups[0]['lr']:.2e}")


@torch.inference_mode()
def evaluate_sr(model, dataset, device, scaling_factor, autocast_dtype=None, progress=None):
    """Per-image (psnr, ssim) of a model on a test SRDataset (LR 'imagenet-norm', HR '[-1, 1]').

    The SR image is rounded and clamped to 8 bits, as a saved image would be, before measuring.
    progress: an optional callable that wraps the image iterator (a tqdm, say).
    """
    results = []
    indices = range(len(dataset))
    for i in (progress(indices) if progress else indices):
        lr_img, hr_img = dataset[i]  # (3, h, w) ImageNet-normed; (3, h * s, w * s) in [-1, 1]
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            sr_img = model(lr_img.unsqueeze(0).to(device))[0]  # (3, h * s, w * s), in [-1, 1]
        sr_pil = convert_image(sr_img.float(), source='[-1, 1]', target='pil')
        hr_pil = convert_image(hr_img, source='[-1, 1]', target='pil')
        results.append(compute_psnr_ssim(sr_pil, hr_pil, crop_border=scaling_factor))
    return results
