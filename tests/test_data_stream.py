"""The training data, held against independent references: utils.pillow_bicubic_resize against
Pillow itself on real photos, and datasets.DeviceTrainStream against array slices, Pillow's
bicubic and the epoch and rank bookkeeping it promises. CPU only, small arrays.

    python -m pytest -q tests/test_data_stream.py
"""
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
from datasets import DeviceTrainStream, SRDataset, dihedral_pil, dihedral_tensor
from utils import ImageTransforms, convert_image, pillow_bicubic_resize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device('cpu')


# ----------------------------------------------------------------------------------------------
# Pillow's bicubic in tensor operations, against Pillow
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def photos():
    """Real photographs as uint8 arrays: scikit-image's bundled samples (camera is greyscale,
    (H, W); the others (H, W, 3)) and the repository's example image (192 x 128)."""
    from skimage import data
    with Image.open(os.path.join(REPO, 'examples', 'chelsea.png')) as img:
        example = np.asarray(img.convert('RGB'))
    return {'astronaut': data.astronaut(), 'chelsea': data.chelsea(), 'coffee': data.coffee(),
            'camera': data.camera(), 'example': example}


def to_tensor(array):
    """(H, W, 3) -> (3, H, W), or (H, W) as it is: the layouts pillow_bicubic_resize takes."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1) if array.ndim == 3 else array))


def to_array(tensor):
    return tensor.permute(1, 2, 0).numpy() if tensor.dim() == 3 else tensor.numpy()


def pillow_resize(array, size):
    """Pillow's own Image.resize(size, BICUBIC) of a uint8 array ('L' or 'RGB')."""
    return np.asarray(Image.fromarray(array).resize(size, Image.BICUBIC))


@pytest.mark.parametrize('scaling_factor', [2, 3, 4, 8])
def test_square_crops_shrunk_as_training_does_equal_pillow_byte_for_byte(photos, scaling_factor):
    """3 crop sizes x 4 random crops (one batch) x 5 photos per factor: 240 crops over the four
    factors, at odd corners, from RGB and greyscale photos, shrunk in (N, 3, H, W) batches."""
    rng = random.Random(scaling_factor)
    n_compared = 0
    for name, photo in photos.items():
        height, width = photo.shape[:2]
        for lr_side in rng.sample(range(3, 128 // scaling_factor + 1), 3):
            side = lr_side * scaling_factor  # e.g. 33 -> 11 at x3: odd sizes too
            corners = [(rng.randrange(height - side + 1), rng.randrange(width - side + 1)) for _ in range(4)]
            crops = [photo[top:top + side, left:left + side] for top, left in corners]
            batch = torch.stack([to_tensor(crop) for crop in crops])  # (4, 3, side, side) or (4, side, side)
            resized = pillow_bicubic_resize(batch, (lr_side, lr_side))
            assert resized.dtype == torch.uint8 and resized.shape[-2:] == (lr_side, lr_side)
            for crop, result in zip(crops, resized):
                assert np.array_equal(to_array(result), pillow_resize(crop, (lr_side, lr_side))), \
                    (name, side, lr_side)
                n_compared += 1
    assert n_compared == 5 * 3 * 4


@pytest.mark.parametrize('axis', ['width', 'height'])
def test_single_axis_resizes_of_odd_sizes_equal_pillow_byte_for_byte(photos, axis):
    """Width-only or height-only resizes, shrinking and enlarging, of crops of odd sizes: 80 crops
    per axis. (For a non-square image whose width and height both change, Pillow 13 may run the
    height pass first, which pillow_bicubic_resize does not follow: see its docstring.)"""
    rng = random.Random(1 if axis == 'width' else 2)
    n_compared = 0
    for name, photo in photos.items():
        height, width = photo.shape[:2]
        for _ in range(16):
            crop_height, crop_width = rng.randrange(5, 120, 2), rng.randrange(5, 120, 2)  # odd
            top, left = rng.randrange(height - crop_height + 1), rng.randrange(width - crop_width + 1)
            crop = photo[top:top + crop_height, left:left + crop_width]
            new_side = rng.randrange(1, 2 * (crop_width if axis == 'width' else crop_height))
            size = (new_side, crop_height) if axis == 'width' else (crop_width, new_side)
            result = pillow_bicubic_resize(to_tensor(crop), size)
            assert np.array_equal(to_array(result), pillow_resize(crop, size)), (name, crop.shape, size)
            n_compared += 1
    assert n_compared == 80


def test_resize_is_not_a_plain_interpolation():
    """The reference is discriminating: torch's own antialiased bicubic misses Pillow's bytes on
    the same crop, so an equality above is not an accident of smooth images."""
    from skimage import data
    crop = data.astronaut()[100:196, 200:296]  # (96, 96, 3)
    expected = pillow_resize(crop, (24, 24))
    plain = torch.nn.functional.interpolate(to_tensor(crop)[None].float(), size=(24, 24), mode='bicubic',
                                            antialias=True)[0].round().clamp(0, 255).to(torch.uint8)
    assert not np.array_equal(to_array(plain), expected)
    assert np.array_equal(to_array(pillow_bicubic_resize(to_tensor(crop), (24, 24))), expected)


# ----------------------------------------------------------------------------------------------
# Dihedral augmentation
# ----------------------------------------------------------------------------------------------

def dihedral_reference(array, choice):
    """An independent spelling of the 8 flips and 90-degree turns of a (C, H, W) array."""
    if choice & 1:
        array = array[:, :, ::-1]
    if choice & 2:
        array = array[:, ::-1, :]
    if choice & 4:
        array = array.transpose(0, 2, 1)
    return np.ascontiguousarray(array)


def test_dihedral_pil_and_tensor_agree_and_give_eight_distinct_variants():
    array = np.random.default_rng(0).integers(0, 256, (3, 6, 6), dtype=np.uint8)  # (C, H, W)
    variants = set()
    for choice in range(8):
        expected = dihedral_reference(array, choice)
        from_tensor = dihedral_tensor(torch.from_numpy(array)[None], torch.tensor([choice]))[0].numpy()
        from_pil = np.asarray(dihedral_pil(Image.fromarray(array.transpose(1, 2, 0)), choice)).transpose(2, 0, 1)
        assert np.array_equal(from_tensor, expected) and np.array_equal(from_pil, expected), choice
        variants.add(expected.tobytes())
    assert len(variants) == 8


def test_srdataset_augment_gives_every_variant_of_the_same_crop(tiny_data):
    """The DataLoader path: with augment, the (index, seed) key gives one of the 8 variants of the
    crop it gives without, and all 8 appear over the seeds."""
    kwargs = dict(crop_size=32, scaling_factor=4, lr_img_type='imagenet-norm', hr_img_type='[0, 1]')
    plain = SRDataset(str(tiny_data), 'train', **kwargs)
    augmented = SRDataset(str(tiny_data), 'train', augment=True, **kwargs)
    seen = set()
    for seed in range(40):
        crop = plain[(seed % len(plain), seed)][1].numpy()  # (3, 32, 32)
        variant = augmented[(seed % len(plain), seed)][1].numpy()
        matches = [choice for choice in range(8) if np.array_equal(dihedral_reference(crop, choice), variant)]
        assert len(matches) == 1, seed
        seen.add(matches[0])
    assert seen == set(range(8))


# ----------------------------------------------------------------------------------------------
# DeviceTrainStream
# ----------------------------------------------------------------------------------------------

def coordinate_images(sizes):
    """uint8 images whose pixels say where they are: R = image number, G = row, B = column."""
    images = []
    for number, (height, width) in enumerate(sizes):
        rows, cols = np.mgrid[0:height, 0:width]
        images.append(np.stack([np.full((height, width), number), rows, cols], axis=-1).astype(np.uint8))
    return images


def to_bytes(hr_imgs):
    """HR crops in [0, 1] back to their uint8 pixels: (N, 3, c, c)."""
    return (hr_imgs * 255.).round().to(torch.uint8).numpy()


def locate(crop, images, crop_size):
    """(image number, top, left, dihedral variant) of a stream's uint8 (3, c, c) crop of coordinate
    images, checked against the array slice it must have been cut from."""
    number, top, left = int(crop[0, 0, 0]), int(crop[1].min()), int(crop[2].min())
    piece = images[number][top:top + crop_size, left:left + crop_size].transpose(2, 0, 1)  # (3, c, c)
    assert piece.shape == crop.shape, "the crop leaves the image"
    variants = [choice for choice in range(8) if np.array_equal(dihedral_reference(piece, choice), crop)]
    assert len(variants) == 1, "not a crop of the image"
    return number, top, left, variants[0]


def draw(stream, images, iterations):
    """Every crop of the stream's first `iterations` batches, located: [(image, top, left, variant)]."""
    return [locate(crop, images, stream.crop_size)
            for iteration in range(iterations) for crop in to_bytes(stream.batch(iteration)[1])]


def make_stream(images, batch_size=2, seed=0, **kwargs):
    """A stream of 16 px HR crops in [0, 1] (4 px LR) on the CPU."""
    return DeviceTrainStream(images, 16, 4, batch_size, seed, CPU, hr_img_type='[0, 1]', **kwargs)


SIZES = [(20, 23), (31, 17), (16, 16), (25, 40), (18, 29)]  # (height, width), crop 16


def test_stream_crops_are_real_crops_and_each_epoch_visits_every_image_once():
    images = coordinate_images(SIZES)
    located = draw(make_stream(images), images, 10)  # 20 positions: 4 epochs of 5, across batch boundaries
    assert all(variant == 0 for *_, variant in located)  # no augmentation asked for
    numbers = [number for number, *_ in located]
    epochs = [numbers[start:start + 5] for start in range(0, 20, 5)]
    assert all(sorted(epoch) == list(range(5)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) > 1  # each epoch its own order


def test_stream_crop_corners_reach_every_edge():
    images = coordinate_images([(19, 20)])  # crop 16: tops 0..3, lefts 0..4
    located = draw(make_stream(images, batch_size=8), images, 10)
    assert {top for _, top, _, _ in located} == set(range(4))
    assert {left for _, _, left, _ in located} == set(range(5))


def test_stream_augment_gives_all_eight_variants():
    images = coordinate_images(SIZES)
    variants = [variant for *_, variant in draw(make_stream(images, batch_size=8, augment=True), images, 8)]
    assert set(variants) == set(range(8))


def test_stream_batch_is_a_pure_function_of_seed_and_iteration():
    images = coordinate_images(SIZES)
    stream = make_stream(images, batch_size=3)
    history = [stream.batch(iteration) for iteration in range(8)]
    fresh = make_stream(images, batch_size=3).batch(7)  # nothing drawn before
    for a, b in zip(history[7], fresh):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(stream.batch(7), history[7]))  # again, after the others
    assert list(stream.batches(5, 8))[0][1].equal(history[5][1])  # the resumed generator starts there
    assert not torch.equal(make_stream(images, batch_size=3, seed=1).batch(7)[1], history[7][1])


def test_stream_ranks_draw_disjoint_shares_of_the_single_process_stream():
    """Iteration t of rank r is iteration 2t + r of one process: together the two ranks visit
    every image once per epoch, so neither draws a position the other does."""
    images = coordinate_images(SIZES)
    single = make_stream(images)
    ranks = [make_stream(images, rank=rank, world_size=2) for rank in (0, 1)]
    located = []
    for iteration in range(5):
        for rank, stream in enumerate(ranks):
            batch = stream.batch(iteration)
            expected = single.batch(2 * iteration + rank)
            assert torch.equal(batch[0], expected[0]) and torch.equal(batch[1], expected[1])
            located += [locate(crop, images, 16) for crop in to_bytes(batch[1])]
    numbers = [number for number, *_ in located]
    assert all(sorted(numbers[start:start + 5]) == list(range(5)) for start in range(0, 20, 5))
    assert not torch.equal(ranks[0].batch(0)[1], ranks[1].batch(0)[1])


@pytest.mark.parametrize('scaling_factor', [2, 3, 4, 8])
def test_stream_lr_is_pillows_bicubic_of_its_own_hr_crop(scaling_factor):
    """The device path makes the pairs the DataLoader path's ImageTransforms would make from the
    same HR crops (LR ImageNet-normed; HR in [0, 1] and [-1, 1])."""
    rng = np.random.default_rng(scaling_factor)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(30, 41), (53, 29), (24, 24)]]
    crop_size = 24
    transform = ImageTransforms('train', crop_size, scaling_factor, 'imagenet-norm', '[-1, 1]')
    streams = [DeviceTrainStream(images, crop_size, scaling_factor, 4, 3, CPU, hr_img_type=hr_type, augment=True)
               for hr_type in ('[0, 1]', '[-1, 1]')]
    for iteration in range(3):
        (lr_imgs, hr_imgs), (lr_again, hr_signed) = streams[0].batch(iteration), streams[1].batch(iteration)
        assert lr_imgs.shape == (4, 3, crop_size // scaling_factor, crop_size // scaling_factor)
        assert lr_imgs.dtype == hr_imgs.dtype == torch.float32 and torch.equal(lr_imgs, lr_again)
        for lr_img, hr_img, hr_expected_signed in zip(lr_imgs, hr_imgs, hr_signed):
            expected_lr, expected_hr = transform.to_pair(convert_image(hr_img, '[0, 1]', 'pil'))
            assert torch.equal(lr_img, expected_lr)
            torch.testing.assert_close(hr_expected_signed, expected_hr, rtol=0, atol=1e-6)


def test_stream_refuses_images_smaller_than_the_crop_and_odd_crops():
    with pytest.raises(ValueError, match='smaller than crop_size 16'):
        DeviceTrainStream(coordinate_images([(20, 20), (15, 30)]), 16, 4, 2, 0, CPU)
    with pytest.raises(ValueError, match='divide by scaling_factor'):
        DeviceTrainStream(coordinate_images([(20, 20)]), 18, 4, 2, 0, CPU)


def test_training_batches_picks_the_stream_or_the_dataloader(tiny_data):
    common = dict(data_folder=str(tiny_data), crop_size=32, scaling_factor=4, batch_size=2, iterations=3, seed=0,
                  start_iteration=1, device=CPU, hr_img_type='[-1, 1]', workers=0)
    on, how_on = datasets.training_batches(data_on_device='on', **common)
    off, how_off = datasets.training_batches(data_on_device='off', **common)
    assert how_on.startswith('on the cpu (6 images') and how_off.startswith('DataLoader with 0 workers (6 images')
    for batches in (on, off):
        pairs = list(batches)
        assert len(pairs) == 2  # iterations 1 and 2 (0-based) of 3
        assert pairs[0][0].shape == (2, 3, 8, 8) and pairs[0][1].shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="data_on_device must be 'auto', 'on' or 'off'"):
        datasets.training_batches(data_on_device='yes', **common)


def test_device_fits_a_small_set_and_not_a_huge_one():
    assert datasets.device_fits(1000, CPU)[0]
    fits, reason = datasets.device_fits(2 ** 60, CPU)
    assert not fits and 'GiB' in reason
