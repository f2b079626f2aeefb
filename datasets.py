"""The data: (LR, HR) image pairs from the JSON lists, and the training stream in two forms.

- SRDataset + ResumableSampler + DataLoader: Pillow crops and resizes in worker processes, for
  any size of training set (all of COCO, say).
- DeviceTrainStream: the decoded training set kept on the training device as uint8, with each
  batch cut and shrunk there by tensor operations (byte-identical to Pillow's bicubic), for a
  set that fits in the device's memory. On a GPU this keeps the card fed; Python and worker
  processes stay out of the way.

Both streams are pure functions of (seed, sample position), so a resumed run sees exactly the
samples it would have seen. They draw different crops from the same seed. Both make the LR crop
with degradation 'bicubic' (the paper's clean bicubic shrink), 'realistic' (degradations.py:
blur, resizes, noise and JPEG, twice, drawn from the same (seed, position)) or 'ladder' (a level
of damage from none to heavy, drawn from it too).
"""
import concurrent.futures
import json
import os
import random

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

import degradations
import utils


def data_list_path(data_folder, name):
    """The JSON list of a data split: 'train' and 'val' (written by create_data_lists.py from the
    training folders), or a test set such as 'Set5' (<name>_test_images.json)."""
    file_name = {'train': 'train_images.json', 'val': 'val_images.json'}.get(name, f'{name}_test_images.json')
    return os.path.join(data_folder, file_name)


def read_data_list(path):
    """The image paths in a JSON list, checked up front: the list exists, is not empty, and names
    only files that exist (so a deleted image stops a run at its start, not hours into it)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data list not found: {path} (make it with create_data_lists.py)")
    try:
        with open(path) as f:
            images = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"data list {path} is not valid JSON: {error}") from None
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        raise ValueError(f"data list {path} must be a JSON list of image paths")
    if not images:
        raise ValueError(f"data list {path} is empty")
    missing = [p for p in images if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"data list {path} names {len(missing)} missing file(s), first {missing[0]} "
                                f"(run create_data_lists.py again)")
    return images


def sample_key(seed, position):
    """The integer that decides the crop and the degradation of training sample `position`."""
    return seed * 1_000_000_007 + position


def decode_rgb(path):
    """The image at `path` as a (H, W, 3) uint8 array."""
    with Image.open(path) as img:
        return np.asarray(utils.pil_to_rgb(img))


def decode_all(paths):
    """Decode many images with a few threads (Pillow's decoders release the GIL)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(decode_rgb, paths))


# Dihedral augmentation: choice c in 0..7; bit 0 flips left-right, bit 1 flips top-bottom,
# bit 2 transposes (swaps rows and columns). Together they give all 8 flips and 90-degree turns.

def dihedral_pil(img, choice):
    """Apply dihedral transform `choice` (0..7) to a PIL image."""
    if choice & 1:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if choice & 2:
        img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if choice & 4:
        img = img.transpose(Image.Transpose.TRANSPOSE)
    return img


def dihedral_tensor(imgs, choices):
    """Apply a dihedral transform per image: imgs (N, C, H, H), choices (N,) integers 0..7."""
    flag = lambda bit: (choices & bit).bool().view(-1, 1, 1, 1)  # (N, 1, 1, 1)
    imgs = torch.where(flag(1), imgs.flip(-1), imgs)
    imgs = torch.where(flag(2), imgs.flip(-2), imgs)
    return torch.where(flag(4), imgs.transpose(-1, -2), imgs)


class SRDataset(Dataset):
    """(LR, HR) pairs made on the fly from the images in a JSON list written by create_data_lists.

    Args:
        data_folder: where train_images.json, val_images.json and <name>_test_images.json are.
        split: 'train' (random crops) or 'test' (whole images, centre-cropped to divide by s).
        crop_size: HR crop side for training (paper: 96).
        scaling_factor: 2, 4 or 8.
        lr_img_type, hr_img_type: convert_image targets ('imagenet-norm', '[-1, 1]', ...).
        test_data_name: for split 'test', which list to read ('val', 'Set5', 'Set14', 'BSD100').
        cache_images: decode every image once, up front, and keep it in memory as uint8 RGB.
            An epoch then costs no file decoding; the cache is shared with DataLoader workers
            (forked after it is filled). Needs about 3 bytes per pixel of the whole set.
        augment: training crops get a random flip / 90-degree turn (not in the paper).
        degradation: how the LR image is made from the HR one: 'bicubic' (Pillow's bicubic
            shrink, the paper's protocol), or 'realistic', 'ladder' or 'ladder:<level>'
            (degradations.degrade_by). A test image's degradation is keyed by its file name, so
            it is the same in every run.

    Items: dataset[i] takes a random crop from Python's `random`; dataset[(i, seed)] takes the
    crop (and augmentation, and degradation) that `seed` picks, which is how ResumableSampler
    makes a run reproducible.
    """

    def __init__(self, data_folder, split, crop_size, scaling_factor, lr_img_type, hr_img_type,
                 test_data_name=None, cache_images=False, augment=False, degradation='bicubic'):
        if split not in ('train', 'test'):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if split == 'test' and not test_data_name:
            raise ValueError("split 'test' needs a test_data_name such as 'Set5'")
        degradations.check_degradation(degradation)
        self.images = read_data_list(data_list_path(data_folder, 'train' if split == 'train' else test_data_name))
        self.split = split
        self.augment = augment and split == 'train'
        self.degradation = degradation
        self.transform = utils.ImageTransforms(split, crop_size, scaling_factor, lr_img_type, hr_img_type)
        self.cache = decode_all(self.images) if cache_images else None

    def __len__(self):
        return len(self.images)

    def __getitem__(self, key):
        """(lr_img, hr_img): (3, h, w) and (3, h * s, w * s) tensors in the configured ranges."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        rng = random if seed is None else random.Random(seed)
        if self.cache is not None:
            array = self.cache[index]  # (H, W, 3) uint8
        else:
            array = decode_rgb(self.images[index])
        # Crop the array first: only the crop is turned into a PIL image and resized.
        left, top, right, bottom = self.transform.crop_box(array.shape[1], array.shape[0], rng)
        hr_img = Image.fromarray(array[top:bottom, left:right])
        if self.augment:
            hr_img = dihedral_pil(hr_img, rng.randrange(8))
        if self.degradation == 'bicubic':
            return self.transform.to_pair(hr_img)
        if self.split == 'test':
            key = os.path.basename(self.images[index])
        else:
            key = rng.getrandbits(64) if seed is None else seed
        hr = utils.convert_image(hr_img, source='pil', target='[0, 1]')  # (3, H, W)
        lr = degradations.degrade_by(self.degradation, hr.unsqueeze(0), [key], self.transform.scaling_factor)[0]  # (3, H/s, W/s)
        return (utils.convert_image(lr, source='[0, 1]', target=self.transform.lr_img_type),
                utils.convert_image(hr, source='[0, 1]', target=self.transform.hr_img_type))


class ResumableSampler(Sampler):
    """The training stream as a pure function of (seed, sample position), so that a run resumed
    at any iteration, with any number of workers, sees exactly the samples it would have seen.

    Position p belongs to epoch p // n_images; each epoch is a fresh permutation seeded by
    (seed, epoch), and the crop of position p is picked by its own seed. Iteration t gives rank r
    the positions (t * world_size + r) * batch_size + [0, batch_size), so ranks never overlap.

    Yields (image index, crop seed) for iterations [start_iteration, iterations).
    """

    def __init__(self, n_images, batch_size, iterations, seed, start_iteration=0, rank=0, world_size=1):
        self.n_images = n_images
        self.batch_size = batch_size
        self.iterations = iterations
        self.seed = seed
        self.start_iteration = start_iteration
        self.rank = rank
        self.world_size = world_size

    def __len__(self):
        return max(0, self.iterations - self.start_iteration) * self.batch_size

    def __iter__(self):
        epoch, permutation = None, None
        for iteration in range(self.start_iteration, self.iterations):
            first = (iteration * self.world_size + self.rank) * self.batch_size
            for position in range(first, first + self.batch_size):
                if position // self.n_images != epoch:
                    epoch = position // self.n_images
                    generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                    permutation = torch.randperm(self.n_images, generator=generator).tolist()
                yield permutation[position % self.n_images], sample_key(self.seed, position)


_MASK32 = 0xFFFFFFFF


def _mix32(x):
    """A 32-bit integer hash (two xor-shift-multiply rounds) on non-negative int64 tensors or ints
    below 2^32. The multiplier is below 2^27, so no product overflows int64 on any device."""
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def stream_hash(seed, stream, values):
    """Pseudo-random 32-bit integers as a pure function of (seed, stream, value): the same on the
    CPU and on a GPU, and independent of what was drawn before. values: int64 tensor >= 0."""
    key = _mix32(_mix32(seed & _MASK32) ^ _mix32((seed >> 32) & _MASK32) ^ stream)  # a Python int
    return _mix32(_mix32((values & _MASK32) ^ key) ^ (values >> 32))


class DeviceTrainStream:
    """Training batches made on the device from uint8 images kept there.

    Args:
        images: decoded training images, (H, W, 3) uint8 arrays (decode_all).
        crop_size, scaling_factor: HR crop side, and how much smaller the LR crop is.
        batch_size: per process.
        seed: with the sample position, decides every image, crop and augmentation.
        device: where the images live and the batches are made.
        hr_img_type: convert_image target of the HR crops ('[-1, 1]', 'imagenet-norm').
        augment: random flips and 90-degree turns of each HR crop, before it is shrunk.
        degradation: 'bicubic', 'realistic' or 'ladder' (see SRDataset).
        rank, world_size: this process's share of the stream under torchrun.

    Sample position p is in epoch p // n: each epoch visits every image once, in an order made by
    sorting hashed keys, and the crop corner and augmentation of p are hashes of p. The LR crop
    is utils.pillow_bicubic_resize of the HR crop (the bytes Pillow would give), or the realistic
    degradation keyed by sample_key(seed, p), the key the DataLoader path uses too.
    """

    def __init__(self, images, crop_size, scaling_factor, batch_size, seed, device, hr_img_type='[-1, 1]',
                 augment=False, rank=0, world_size=1, degradation='bicubic'):
        if crop_size % scaling_factor:
            raise ValueError(f"crop_size {crop_size} must divide by scaling_factor {scaling_factor}")
        degradations.check_degradation(degradation)
        too_small = [i for i, img in enumerate(images) if min(img.shape[:2]) < crop_size]
        if too_small:
            raise ValueError(f"{len(too_small)} training image(s) are smaller than crop_size {crop_size}, "
                             f"first of {images[too_small[0]].shape[1]}x{images[too_small[0]].shape[0]} px "
                             f"(list them again with create_data_lists.py --min_size={crop_size})")
        self.n_images, self.crop_size, self.scaling_factor = len(images), crop_size, scaling_factor
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.hr_img_type, self.augment, self.rank, self.world_size = hr_img_type, augment, rank, world_size
        self.degradation = degradation
        sizes = [img.size for img in images]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        # One flat uint8 buffer holds every image; an image is (offset, height, width).
        self.pixels = torch.from_numpy(np.concatenate([img.reshape(-1) for img in images])).to(device)
        self.offsets = torch.tensor(offsets, dtype=torch.int64, device=device)
        self.heights = torch.tensor([img.shape[0] for img in images], dtype=torch.int64, device=device)
        self.widths = torch.tensor([img.shape[1] for img in images], dtype=torch.int64, device=device)
        steps = torch.arange(crop_size, device=device)
        self.grid = (steps.view(-1, 1, 1), steps.view(1, -1, 1), torch.arange(3, device=device).view(1, 1, 3))

    def batch(self, iteration):
        """(lr_imgs, hr_imgs) of 0-based `iteration`: (N, 3, c/s, c/s) ImageNet-normed and
        (N, 3, c, c) in hr_img_type, float32, on the device. Nothing here waits for the device."""
        n, c = self.n_images, self.crop_size
        first = (iteration * self.world_size + self.rank) * self.batch_size
        positions = torch.arange(first, first + self.batch_size, device=self.device)  # (N,)
        # Each epoch's order: the images sorted by a hash of (epoch, image). Epochs are Python ints
        # here, so the number of orders to make is known without asking the device.
        first_epoch, last_epoch = first // n, (first + self.batch_size - 1) // n
        epochs = torch.arange(first_epoch, last_epoch + 1, device=self.device).view(-1, 1)  # (E, 1)
        keys = stream_hash(self.seed, 1, epochs * n + torch.arange(n, device=self.device))  # (E, n)
        orders = torch.sort(keys, dim=1, stable=True).indices  # (E, n)
        index = orders[positions // n - first_epoch, positions % n]  # (N,) image of each sample

        heights, widths = self.heights[index], self.widths[index]  # (N,)
        tops = stream_hash(self.seed, 2, positions) % (heights - c + 1)  # (N,), 0..H-c inclusive
        lefts = stream_hash(self.seed, 3, positions) % (widths - c + 1)
        rows, cols, channels = self.grid  # (c, 1, 1), (1, c, 1), (1, 1, 3)
        flat = (self.offsets[index].view(-1, 1, 1, 1)
                + ((tops.view(-1, 1, 1, 1) + rows) * widths.view(-1, 1, 1, 1) + lefts.view(-1, 1, 1, 1) + cols) * 3
                + channels)  # (N, c, c, 3) positions in the flat buffer
        hr_imgs = self.pixels[flat].permute(0, 3, 1, 2)  # (N, 3, c, c) uint8
        if self.augment:
            hr_imgs = dihedral_tensor(hr_imgs, stream_hash(self.seed, 4, positions) % 8)
        if self.degradation == 'bicubic':
            lr_side = c // self.scaling_factor
            lr_imgs = utils.pillow_bicubic_resize(hr_imgs, (lr_side, lr_side)).float() / 255.  # (N, 3, c/s, c/s)
        else:
            keys = [sample_key(self.seed, p) for p in range(first, first + self.batch_size)]
            lr_imgs = degradations.degrade_by(self.degradation, hr_imgs.float() / 255., keys,
                                              self.scaling_factor)  # (N, 3, c/s, c/s)
        lr_imgs = utils.convert_image(lr_imgs, '[0, 1]', 'imagenet-norm')  # (N, 3, c/s, c/s)
        hr_imgs = utils.convert_image(hr_imgs.float() / 255., '[0, 1]', self.hr_img_type)  # (N, 3, c, c)
        return lr_imgs, hr_imgs

    def batches(self, start_iteration, iterations):
        """Yield the batches of iterations [start_iteration, iterations)."""
        for iteration in range(start_iteration, iterations):
            yield self.batch(iteration)


def device_fits(n_bytes, device):
    """(fits, reason): whether a decoded training set of n_bytes should live on `device`.

    On a GPU it may take a quarter of the free memory (the rest is for training); on the CPU, a
    quarter of the machine's RAM.
    """
    if device.type == 'cuda':
        free = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            free = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_AVPHYS_PAGES')
        except (ValueError, OSError, AttributeError):  # not on this system: do not guess
            return False, "free memory unknown on this system"
    if n_bytes > free / 4:
        return False, f"needs {n_bytes / 2**30:.2f} GiB, more than a quarter of the {free / 2**30:.1f} GiB free"
    return True, f"{n_bytes / 2**30:.2f} GiB of uint8 images"


def training_batches(data_folder, crop_size, scaling_factor, batch_size, iterations, seed, start_iteration,
                     device, hr_img_type, augment=False, data_on_device='auto', cache_images=True, workers=0,
                     rank=0, world_size=1, degradation='bicubic'):
    """The training batches of iterations [start_iteration, iterations), from the device stream
    or from a DataLoader, as data_on_device says: 'auto' (on the device when the decoded set
    fits, else a DataLoader, with the reason printed), 'on' or 'off'.

    Returns (iterator of (lr_imgs, hr_imgs), description). The DataLoader's batches are on the
    CPU (pinned on CUDA machines); the caller moves them. degradation: see SRDataset.
    """
    degradations.check_degradation(degradation)
    if data_on_device not in ('auto', 'on', 'off'):
        raise ValueError(f"data_on_device must be 'auto', 'on' or 'off', got {data_on_device!r}")
    reason = "data_on_device='off'"
    if data_on_device != 'off':
        paths = read_data_list(data_list_path(data_folder, 'train'))
        n_bytes = sum(3 * w * h for w, h in map(utils.image_size, paths))  # from the headers: no decoding
        fits, reason = device_fits(n_bytes, device)
        if fits or data_on_device == 'on':
            stream = DeviceTrainStream(decode_all(paths), crop_size, scaling_factor, batch_size, seed, device,
                                       hr_img_type, augment, rank, world_size, degradation)
            return stream.batches(start_iteration, iterations), f"on the {device.type} ({len(paths)} images, {reason})"
    dataset = SRDataset(data_folder, 'train', crop_size, scaling_factor, 'imagenet-norm', hr_img_type,
                        cache_images=cache_images, augment=augment, degradation=degradation)
    sampler = ResumableSampler(len(dataset), batch_size, iterations, seed, start_iteration, rank, world_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                         pin_memory=device.type == 'cuda', drop_last=True)
    return iter(loader), f"DataLoader with {workers} workers ({len(dataset)} images; not on the device: {reason})"


def validation_dataset(data_folder, name, scaling_factor, degradation='bicubic'):
    """The SRDataset of the validation list `name` ('val' or a test set), or None, with a note,
    when data_folder has no such list. A realistic degradation validates on the list's images
    degraded the same fixed way every time (keyed by file name)."""
    if not os.path.isfile(data_list_path(data_folder, name)):
        print(f"No {os.path.basename(data_list_path(data_folder, name))} in {data_folder}: validation is off")
        return None
    return SRDataset(data_folder, 'test', 0, scaling_factor, 'imagenet-norm', '[-1, 1]', test_data_name=name,
                     degradation=degradation)
