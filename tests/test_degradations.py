"""The realistic degradation (degradations.py): each stage does what it says, against independent
references (Pillow's JPEG codec, a separable Gaussian, measured noise statistics), the whole chain
is a pure function of its keys, and both training pipelines use it the same way."""
import io
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
import degradations
import utils


def photo(height=48, width=64, seed=0):
    """A (1, 3, H, W) float image in [0, 1] on 8-bit levels: a colour gradient with texture."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 200, width)[None, :, None] + np.linspace(0, 50, height)[:, None, None]
    pixels = np.clip(gradient + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).float() / 255.


def high_frequency_energy(img):
    """Mean squared response to a 3x3 Laplacian: what a blur takes away."""
    laplacian = torch.tensor([[0., 1., 0.], [1., -4., 1.], [0., 1., 0.]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    return float(torch.nn.functional.conv2d(img, laplacian, groups=3).pow(2).mean())


def stage(**overrides):
    """SECOND_STAGE with some entries fixed, to drive one operation."""
    return {**degradations.SECOND_STAGE, **overrides}


def test_degrade_is_a_pure_function_of_each_images_key():
    hr = torch.cat([photo(seed=i) for i in range(4)])  # (4, 3, 48, 64)
    keys = ['a', 'b', 'c', 'd']
    first, again = degradations.degrade(hr, keys, 4), degradations.degrade(hr, keys, 4)
    assert torch.equal(first, again)
    changed = degradations.degrade(hr, ['a', 'b', 'other', 'd'], 4)
    assert not torch.equal(changed[2], first[2])
    # The others keep their bytes: an image's LR does not depend on the batch it came in, so a
    # test image degraded alone matches the same image in a training batch.
    for i in (0, 1, 3):
        assert torch.equal(changed[i], first[i])
    for i in range(4):
        assert torch.equal(degradations.degrade(hr[i:i + 1], [keys[i]], 4)[0], first[i])
    # Different keys give different damage, so the model sees a spread of degradations.
    per_key = torch.cat([degradations.degrade(hr[:1], [f'k{i}'], 4) for i in range(6)])
    assert len({per_key[i].numpy().tobytes() for i in range(6)}) == 6


@pytest.mark.parametrize('scaling_factor, size', [(4, (48, 64)), (2, (30, 22)), (4, (96, 96)), (8, (32, 24))])
def test_degrade_shapes_and_values(scaling_factor, size):
    hr = torch.cat([photo(*size, seed=i) for i in range(3)])
    lr = degradations.degrade(hr, [0, 1, 2], scaling_factor)
    assert lr.shape == (3, 3, size[0] // scaling_factor, size[1] // scaling_factor)
    assert lr.dtype == torch.float32 and lr.min() >= 0 and lr.max() <= 1
    assert torch.equal(lr, (lr * 255).round() / 255)  # 8-bit levels, as a saved image
    # Not a clean bicubic shrink: that is the point.
    lr_size = (size[1] // scaling_factor, size[0] // scaling_factor)  # (width, height), Pillow's order
    bicubic = utils.pillow_bicubic_resize((hr * 255).round().to(torch.uint8), lr_size).float() / 255
    assert (lr - bicubic).abs().mean() > 2 / 255


def test_degrade_refuses_bad_arguments():
    with pytest.raises(ValueError, match='one key per image'):
        degradations.degrade(photo(), ['a', 'b'], 4)
    with pytest.raises(ValueError, match='must divide by scaling_factor 4'):
        degradations.degrade(photo(30, 30), ['a'], 4)
    with pytest.raises(ValueError, match="degradation must be one of"):
        degradations.check_degradation('jpeg')


def test_isotropic_gaussian_kernel_is_the_separable_gaussian():
    size, sigma = 13, 1.7
    steps = torch.arange(size, dtype=torch.float64) - size // 2
    one_d = torch.exp(-steps ** 2 / (2 * sigma ** 2))
    reference = torch.outer(one_d, one_d) / torch.outer(one_d, one_d).sum()
    assert torch.allclose(degradations.gaussian_kernel(size, sigma, sigma, 0.3), reference, atol=1e-12)
    # Turned by 90 degrees, an anisotropic kernel is its own transpose with the sigmas swapped.
    wide = degradations.gaussian_kernel(size, 3.0, 0.8, 0.)
    assert torch.allclose(degradations.gaussian_kernel(size, 3.0, 0.8, math.pi / 2), wide.T, atol=1e-12)
    assert torch.allclose(degradations.gaussian_kernel(size, 0.8, 3.0, 0.), wide.T, atol=1e-12)


@pytest.mark.parametrize('shape, beta', [('gaussian', 1.), ('generalized', 0.6), ('generalized', 3.),
                                         ('plateau', 1.5)])
def test_kernels_sum_to_one_and_blur_lowers_high_frequencies(shape, beta):
    kernel = degradations.gaussian_kernel(15, 2.0, 1.2, 0.7, beta, shape)
    assert abs(float(kernel.sum()) - 1) < 1e-12 and kernel.min() >= 0
    img = photo()
    blurred = degradations.blur(img, kernel)
    assert blurred.shape == img.shape
    assert high_frequency_energy(blurred) < 0.5 * high_frequency_energy(img)
    assert abs(float(blurred.mean() - img.mean())) < 0.01  # a blur moves no brightness


@pytest.mark.parametrize('height, width, size', [(48, 64, 7), (37, 29, 13), (96, 96, 21), (7, 9, 21), (3, 40, 5)])
def test_blur_cut_into_strips_is_the_plain_convolution_bit_for_bit(height, width, size):
    # blur() cuts a lone image into strips on the CPU; the sums must stay exactly those of one
    # grouped convolution over the whole padded image.
    img = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(size))
    kernel = degradations.gaussian_kernel(size, 1.7, 0.9, 0.4)
    pad = size // 2
    padded = torch.nn.functional.pad(img, [pad] * 4, mode='reflect' if pad < min(height, width) else 'replicate')
    reference = torch.nn.functional.conv2d(padded, kernel.float().expand(3, 1, size, size), groups=3)
    assert torch.equal(degradations.blur(img, kernel), reference)


def test_blur_each_makes_each_image_as_blur_alone_would():
    imgs = torch.rand(5, 3, 8, 10, generator=torch.Generator().manual_seed(0))
    # 17 and 21 reach past the 8-pixel side (replicated borders), the others reflect.
    kernels = [degradations.gaussian_kernel(size, 1.2, 2.0, 0.3) for size in (7, 17, 13, 21, 9)]
    out = degradations.blur_each(imgs, kernels)
    for i, kernel in enumerate(kernels):
        assert torch.equal(out[i:i + 1], degradations.blur(imgs[i:i + 1], kernel))


def test_sinc_kernel_passes_low_and_stops_high_frequencies():
    kernel = degradations.sinc_kernel(21, math.pi / 3)
    assert abs(float(kernel.sum()) - 1) < 1e-12 and torch.allclose(kernel, kernel.T) and torch.allclose(
        kernel, kernel.flip(0))
    response = torch.fft.fft2(kernel, s=(64, 64)).abs()  # |H| on a 64x64 grid of frequencies
    assert response[0, 0] == pytest.approx(1.0)
    assert response[0, 64 // 12] > 0.8  # pi/6 radians per pixel: below the cut-off, passed
    assert response[0, 64 // 3:64 // 2 + 1].max() < 0.2  # 2pi/3 .. pi: above it, stopped
    img = photo()
    assert high_frequency_energy(degradations.blur(img, kernel)) < 0.5 * high_frequency_energy(img)


def test_random_kernels_span_every_kind_and_size():
    rng = random.Random(0)
    kernels = [degradations.random_blur_kernel(rng, degradations.FIRST_STAGE) for _ in range(300)]
    assert {k.shape[-1] for k in kernels} == set(degradations.KERNEL_SIZES)
    assert all(abs(float(k.sum()) - 1) < 1e-9 for k in kernels)
    assert any(k.min() < 0 for k in kernels)  # some sinc filters, whose ripples go negative


@pytest.mark.parametrize('gray', [False, True])
def test_gaussian_noise_has_the_sigma_it_was_given(gray):
    img = torch.full((1, 3, 128, 128), 0.5)  # mid-grey: no clipping
    noisy = degradations.add_noise(img, random.Random(0), stage(gaussian_noise_prob=1., noise_range=(12., 12.),
                                                               gray_noise_prob=float(gray)))
    noise = noisy - img
    assert float(noise.std()) * 255 == pytest.approx(12., rel=0.05)
    assert abs(float(noise.mean())) < 0.5 / 255
    same_on_rgb = torch.equal(noise[:, 0], noise[:, 1]) and torch.equal(noise[:, 1], noise[:, 2])
    assert same_on_rgb == gray


def test_poisson_noise_variance_follows_brightness():
    # 256 distinct levels: Real-ESRGAN's shot noise counts 256 photons at full scale, so the
    # variance at brightness x is scale^2 * x / 256.
    levels = torch.arange(256.).repeat_interleave(64).view(1, 1, 128, 128) / 255.
    img = levels.repeat(1, 3, 1, 1)  # (1, 3, 128, 128)
    scale = 2.0
    noisy = degradations.add_noise(img, random.Random(1), stage(gaussian_noise_prob=0., gray_noise_prob=0.,
                                                               poisson_scale_range=(scale, scale)))
    noise = noisy - img
    dark, bright = img < 0.3, (img > 0.6) & (img < 0.8)  # away from the clamp at 1
    for region in (dark, bright):
        expected = scale ** 2 * float(img[region].mean()) / 256
        assert float(noise[region].var()) == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize('quality', [30, 60, 95])
def test_jpeg_is_the_real_codec_at_that_quality(quality):
    img = photo()
    ours = (degradations.jpeg(img, quality)[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    original = (img[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(original).save(buffer, 'JPEG', quality=quality)  # Pillow's libjpeg, independently
    pillow = np.asarray(Image.open(buffer).convert('RGB'))
    assert np.abs(ours.astype(int) - pillow.astype(int)).max() <= 1
    assert not np.array_equal(ours, original)


def test_lower_jpeg_quality_loses_more():
    img = photo()
    errors = [float((degradations.jpeg(img, q) - img).abs().mean()) for q in (95, 60, 30)]
    assert errors[0] < errors[1] < errors[2]


def test_dataloader_and_device_stream_degrade_by_the_same_sample_key(tiny_data):
    images = datasets.decode_all(datasets.read_data_list(datasets.data_list_path(tiny_data, 'train')))
    stream = datasets.DeviceTrainStream(images, 32, 4, 2, seed=3, device=torch.device('cpu'), hr_img_type='[0, 1]',
                                        degradation='realistic')
    lr_imgs, hr_imgs = stream.batch(5)  # positions 10 and 11
    keys = [datasets.sample_key(3, p) for p in (10, 11)]
    expected = degradations.degrade(hr_imgs, keys, 4)  # (2, 3, 8, 8) in [0, 1]
    assert torch.allclose(lr_imgs, utils.convert_image(expected, '[0, 1]', 'imagenet-norm'), atol=1e-6)
    dataset = datasets.SRDataset(tiny_data, 'train', 32, 4, '[0, 1]', '[0, 1]', degradation='realistic')
    lr_img, hr_img = dataset[(0, keys[0])]
    assert torch.equal(lr_img, degradations.degrade(hr_img.unsqueeze(0), [keys[0]], 4)[0])
    assert torch.equal(dataset[(0, keys[0])][0], lr_img)  # the same item twice: the same LR bytes


def test_test_images_are_degraded_by_their_file_name(tiny_data):
    make = lambda: datasets.SRDataset(tiny_data, 'test', 0, 4, '[0, 1]', '[0, 1]', test_data_name='Set5',
                                      degradation='realistic')
    first, second = make(), make()
    clean = datasets.SRDataset(tiny_data, 'test', 0, 4, '[0, 1]', '[0, 1]', test_data_name='Set5')
    for i in range(len(first)):
        lr_img, hr_img = first[i]
        assert torch.equal(lr_img, second[i][0]) and torch.equal(hr_img, clean[i][1])
        assert not torch.equal(lr_img, clean[i][0])
        key = first.images[i].replace('\\', '/').split('/')[-1]
        assert torch.equal(lr_img, degradations.degrade(hr_img.unsqueeze(0), [key], 4)[0])


def test_unknown_degradation_is_refused_before_any_work(tiny_data):
    with pytest.raises(ValueError, match="degradation must be one of"):
        datasets.SRDataset(tiny_data, 'train', 32, 4, '[0, 1]', '[0, 1]', degradation='Realistic')
    with pytest.raises(ValueError, match="degradation must be one of"):
        datasets.training_batches(tiny_data, 32, 4, 2, 4, 0, 0, torch.device('cpu'), '[-1, 1]',
                                  degradation='blur')
