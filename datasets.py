"""The Dataset of (LR, HR) image pairs, and the sampler that makes training resumable."""
import json
import os
import random

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from utils import ImageTransforms, pil_to_rgb


class SRDataset(Dataset):
    """(LR, HR) pairs made on the fly from the images in a JSON list written by create_data_lists.

    Args:
        data_folder: where train_images.json and the <name>_test_images.json lists are.
        split: 'train' (random crops) or 'test' (whole images, centre-cropped to divide by s).
        crop_size: HR crop side for training (paper: 96).
        scaling_factor: 2, 4 or 8.
        lr_img_type, hr_img_type: convert_image targets ('imagenet-norm', '[-1, 1]', ...).
        test_data_name: for split 'test', which list to read ('Set5', 'Set14', 'BSD100').
        cache_images: decode every image once, up front, and keep it in memory as uint8 RGB.
            An epoch then costs no file decoding; the cache is shared with DataLoader workers
            (forked after it is filled). Needs about 3 bytes per pixel of the whole set: right for
            a few thousand images, wrong for all of COCO.

    Items: dataset[i] takes a random crop from Python's `random`; dataset[(i, seed)] takes the
    crop that `seed` picks, which is how ResumableSampler makes a run reproducible.
    """

    def __init__(self, data_folder, split, crop_size, scaling_factor, lr_img_type, hr_img_type,
                 test_data_name=None, cache_images=False):
        if split not in ('train', 'test'):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if split == 'test' and not test_data_name:
            raise ValueError("split 'test' needs a test_data_name such as 'Set5'")
        list_name = 'train_images.json' if split == 'train' else f'{test_data_name}_test_images.json'
        list_path = os.path.join(data_folder, list_name)
        if not os.path.isfile(list_path):
            raise FileNotFoundError(f"data list not found: {list_path} (make it with create_data_lists.py)")
        with open(list_path) as f:
            self.images = json.load(f)
        if not self.images:
            raise ValueError(f"data list {list_path} is empty")

        self.split = split
        self.transform = ImageTransforms(split, crop_size, scaling_factor, lr_img_type, hr_img_type)
        self.cache = [self._decode(path) for path in self.images] if cache_images else None

    @staticmethod
    def _decode(path):
        """The image at `path` as a (H, W, 3) uint8 array."""
        with Image.open(path) as img:
            return np.asarray(pil_to_rgb(img))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, key):
        """(lr_img, hr_img): (3, h, w) and (3, h * s, w * s) tensors in the configured ranges."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        rng = random if seed is None else random.Random(seed)
        if self.cache is not None:
            # Crop the cached array first: only the crop is turned into a PIL image and converted.
            array = self.cache[index]  # (H, W, 3) uint8
            left, top, right, bottom = self.transform.crop_box(array.shape[1], array.shape[0], rng)
            return self.transform.to_pair(Image.fromarray(array[top:bottom, left:right]))
        with Image.open(self.images[index]) as img:
            return self.transform(img, rng)


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
                yield permutation[position % self.n_images], self.seed * 1_000_000_007 + position
