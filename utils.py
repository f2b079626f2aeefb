"""The shared core: image conversions, transforms, data lists, metrics, and the small helpers
every script needs (config overrides, device, seeding, checkpoints, training bookkeeping).

Importing this module picks no device, creates no tensor and reads no file.
"""
import ast
import contextlib
import csv
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

def pil_to_rgb(img):
    """A PIL image as 8-bit RGB.

    16-bit greyscale (modes 'I;16*', and 'I', which older Pillow gives 16-bit PNGs) is scaled to
    8 bits first: Pillow's own conversion clips it at 255, which would turn most of it white.
    """
    if img.mode == 'I' or img.mode.startswith('I;16'):
        grey = np.asarray(img).astype(np.float64) / 257.  # (H, W), 0..65535 -> 0..255
        img = Image.fromarray(np.clip(np.round(grey), 0, 255).astype(np.uint8))  # mode 'L'
    return img.convert('RGB')


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
    except (OSError, ValueError) as error:
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
    """
    from models import SRResNet  # local import keeps the core's import graph one-way
    names = {'': 'SRResNet or SRGAN checkpoint', 'srresnet': 'SRResNet checkpoint', 'srgan': 'SRGAN checkpoint'}
    if kind not in names:
        raise ValueError(f"kind must be '', 'srresnet' or 'srgan', got {kind!r}")
    checkpoint = load_checkpoint(path, map_location='cpu', required_keys=('model_args',), kind=names[kind])
    key = {'srresnet': 'model', 'srgan': 'generator'}.get(kind) or ('model' if 'model' in checkpoint else 'generator')
    if key not in checkpoint or (kind == 'srresnet' and 'generator' in checkpoint):
        raise ValueError(f"{path} is not an {names[kind]}: it has the keys {sorted(checkpoint)} (SRResNet "
                         f"checkpoints hold 'model', SRGAN checkpoints 'generator')")
    model = SRResNet(**checkpoint['model_args'])
    model.load_state_dict({name: tensor.float() for name, tensor in checkpoint[key].items()})
    return model.to(device).eval(), checkpoint


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


def optimizer_step(optimizer, loss, scaler, grad_clip=0.):
    """One update: zero the gradients, backpropagate `loss` (scaled when fp16 needs it), clamp the
    gradients if grad_clip is set, and step. The caller runs scaler.update() once per iteration."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)  # clamp the true gradients, not the scaled ones
        clip_gradient(optimizer, grad_clip)
    scaler.step(optimizer)


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


def make_train_loader(dataset, batch_size, iterations, seed, start_iteration, workers, device,
                      rank=0, world_size=1):
    """A DataLoader over exactly the batches of iterations [start_iteration, iterations) of this rank.

    The ResumableSampler makes the stream a function of (seed, position) alone, so resuming,
    changing `workers` or adding ranks never changes what a given iteration sees.
    """
    from datasets import ResumableSampler  # local import: datasets imports utils
    sampler = ResumableSampler(len(dataset), batch_size, iterations, seed, start_iteration, rank, world_size)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                       pin_memory=device.type == 'cuda', drop_last=True)


def validation_dataset(data_folder, name, scaling_factor):
    """The test SRDataset <name>_test_images.json in data_folder, or None (with a note) if there is none."""
    from datasets import SRDataset  # local import: datasets imports utils
    if not os.path.isfile(os.path.join(data_folder, f'{name}_test_images.json')):
        print(f"No {name}_test_images.json in {data_folder}: validation is off")
        return None
    return SRDataset(data_folder, 'test', 0, scaling_factor, 'imagenet-norm', '[-1, 1]', test_data_name=name)


def validate(model, dataset, device, scaling_factor, autocast_dtype=None):
    """Mean (PSNR, SSIM) of a model in training over a test dataset; the model is put back in train mode."""
    model.eval()
    scores = evaluate_sr(unwrap(model), dataset, device, scaling_factor, autocast_dtype)
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
