"""Tests of the core: models.py, utils.py, datasets.py, runtime.py and create_data_lists.py.

Each piece is held against an independent reference where one exists: the paper's parameter
counts, the published luma formula, PSNR written out in NumPy, Pillow's own bicubic resize.
(The device-side training stream has its own file, test_data_stream.py.) CPU only, no network,
no data outside the repository; about half a minute on two cores.

    python -m pytest -q tests/test_core.py
"""
import copy
import json
import math
import os
import random
import re
import subprocess
import sys
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.metrics import structural_similarity
from torch import nn

import create_data_lists as create_data_lists_script
import runtime
import utils
from datasets import ResumableSampler, SRDataset, data_list_path, read_data_list
from models import ConvolutionalBlock, Discriminator, Generator, SRResNet, TruncatedVGG19, fold_batchnorm
from runtime import (ConfigError, clip_gradient, learning_rate_at, load_checkpoint, load_sr_model, parse_config,
                     save_checkpoint, set_learning_rate, unwrap)
from utils import ImageTransforms, compute_psnr_ssim, convert_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The references, written out here rather than imported from the code under test.
MEAN = np.array([0.485, 0.456, 0.406])  # ImageNet RGB mean
STD = np.array([0.229, 0.224, 0.225])  # ImageNet RGB standard deviation


def reference_y(img):
    """Y = 16 + 65.481 R + 128.553 G + 24.966 B for R, G, B in [0, 1], unrounded: (H, W) float64."""
    rgb = np.asarray(img.convert('RGB'), dtype=np.float64) / 255.
    return 16. + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]


def textured_image(width, height, seed):
    """A PIL RGB image with smooth structure and noise, so that crops, SSIM and PSNR mean something."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = 127.5 + 100. * np.sin(x[..., None] / 7. + np.array([0., 1., 2.])) * np.cos(y[..., None] / 5.)
    noisy = smooth + rng.normal(0., 20., (height, width, 3))
    return Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8))


def n_parameters(model):
    return sum(parameter.numel() for parameter in model.parameters())


def locate(crop, img):
    """(left, top) of `crop` (a (3, h, w) tensor in [0, 1]) inside PIL `img`, found by brute force."""
    crop_array = np.round(crop.permute(1, 2, 0).numpy() * 255.).astype(np.uint8)  # (h, w, 3)
    img_array = np.asarray(img.convert('RGB'))  # (H, W, 3)
    h, w = crop_array.shape[:2]
    matches = [(left, top) for top in range(img_array.shape[0] - h + 1) for left in range(img_array.shape[1] - w + 1)
               if np.array_equal(img_array[top:top + h, left:left + w], crop_array)]
    assert len(matches) == 1, f"crop found {len(matches)} times"
    return matches[0]


# ----------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------

# One x2 sub-pixel block: a 3x3 convolution 64 -> 256 channels with bias, and one PReLU weight.
SUBPIXEL_BLOCK_PARAMETERS = 64 * 256 * 3 * 3 + 256 + 1


@pytest.mark.parametrize('scaling_factor', [2, 4, 8])
def test_srresnet_parameter_count_shape_and_range(scaling_factor):
    torch.manual_seed(0)
    model = SRResNet(scaling_factor=scaling_factor).eval()
    # The paper's x4 SRResNet has 1,549,462 parameters; x2 has one sub-pixel block fewer, x8 one more.
    expected = 1_549_462 + (int(math.log2(scaling_factor)) - 2) * SUBPIXEL_BLOCK_PARAMETERS
    assert n_parameters(model) == expected
    assert n_parameters(Generator(scaling_factor=scaling_factor)) == expected

    lr_imgs = 3. * torch.randn(2, 3, 8, 6)  # large values push the output towards tanh's limits
    with torch.no_grad():
        sr_imgs = model(lr_imgs)
    assert sr_imgs.shape == (2, 3, 8 * scaling_factor, 6 * scaling_factor)
    assert sr_imgs.min() >= -1. and sr_imgs.max() <= 1.


def test_srresnet_refuses_other_scaling_factors():
    with pytest.raises(ValueError, match='scaling_factor'):
        SRResNet(scaling_factor=3)


def test_generator_loads_an_srresnet_state_dict():
    srresnet = SRResNet(n_blocks=2)
    generator = Generator(n_blocks=2)
    generator.load_state_dict(srresnet.state_dict())  # strict: every key matches


def test_discriminator_parameter_count_and_fc_size():
    assert n_parameters(Discriminator()) == 23_565_505
    # fc_size sets the hidden linear layer: 512 * 6 * 6 -> fc_size -> 1, both with biases.
    linear_parameters = lambda fc_size: (512 * 6 * 6 + 1) * fc_size + fc_size + 1
    assert n_parameters(Discriminator(fc_size=32)) == 23_565_505 - linear_parameters(1024) + linear_parameters(32)


def test_discriminator_gives_one_logit_per_image_for_any_size_from_96():
    torch.manual_seed(0)
    discriminator = Discriminator(n_channels=8, fc_size=16).eval()
    with torch.no_grad():
        for height, width in [(96, 96), (100, 131)]:
            assert discriminator(torch.randn(2, 3, height, width)).shape in [(2,), (2, 1)]
        # Each logit depends on its own image alone.
        imgs = torch.randn(2, 3, 96, 96)
        alone = torch.cat([discriminator(imgs[i:i + 1]).flatten() for i in range(2)])
        torch.testing.assert_close(discriminator(imgs).flatten(), alone, rtol=1e-4, atol=1e-5)


def test_truncated_vgg19_random_weights_shape_and_frozen():
    vgg = TruncatedVGG19(5, 4, weights='')
    layers = list(vgg.modules())
    # phi_{5,4}: all 16 convolutions of VGG19 and 4 of its 5 max-pools, ending on a ReLU.
    assert sum(isinstance(layer, nn.Conv2d) for layer in layers) == 16
    assert sum(isinstance(layer, nn.MaxPool2d) for layer in layers) == 4
    assert not any(parameter.requires_grad for parameter in vgg.parameters())
    vgg.train()
    assert not vgg.training
    with torch.no_grad():
        features = vgg(torch.randn(2, 3, 96, 96))
    assert features.shape == (2, 512, 6, 6)
    assert features.min() >= 0.  # after the ReLU


def test_truncated_vgg19_missing_local_file_is_a_clear_error(tmp_path):
    path = str(tmp_path / 'vgg19.pth')
    with pytest.raises(FileNotFoundError, match=re.escape(path)):
        TruncatedVGG19(5, 4, weights=path)


def test_missing_imagenet_weights_give_a_clear_error(tmp_path, monkeypatch):
    # An empty TORCH_HOME is an empty weights cache; torch.hub reads the variable on every call.
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)  # in case anything called torch.hub.set_dir
    assert torch.hub.get_dir() == str(tmp_path / 'hub')
    # No real download, even on a machine with internet: the attempt fails as it would offline.
    attempts = []

    def offline_download(url, dst, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError('network is unreachable')

    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline_download)
    with pytest.raises(RuntimeError) as error:
        TruncatedVGG19(5, 4, weights='imagenet')
    assert len(attempts) == 1
    file_name = os.path.basename(attempts[0])
    message = str(error.value)
    assert file_name in message  # which file,
    assert str(tmp_path / 'hub' / 'checkpoints') in message  # where it goes,
    assert 'local' in message  # and that a local file can be passed instead
    assert error.value.__suppress_context__  # not a bare download traceback


def test_fold_batchnorm_matches_the_unfused_eval_model():
    torch.manual_seed(0)
    model = SRResNet(n_blocks=3)
    for module in model.modules():  # batch-norm statistics and affine terms far from the identity
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.2, 3.)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.3, 0.3)
    model.eval()
    folded = fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    lr_imgs = torch.randn(2, 3, 10, 12)
    with torch.no_grad():
        expected, actual = model(lr_imgs), folded(lr_imgs)
    assert (expected - actual).abs().max() < 1e-4
    # The statistics mattered: the same net with fresh BatchNorms gives another output.
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()
    with torch.no_grad():
        assert (plain(lr_imgs) - expected).abs().max() > 1e-2


# ----------------------------------------------------------------------------------------------
# Image conversions
# ----------------------------------------------------------------------------------------------

def every_level_image():
    """A 16x16 RGB image holding each of the 256 levels once per channel, in different places."""
    rng = np.random.default_rng(0)
    channels = [rng.permutation(256).reshape(16, 16) for _ in range(3)]
    return Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8))


def test_pil_to_tensor_and_back_is_lossless():
    img = every_level_image()
    for middle in ('[-1, 1]', '[0, 1]'):
        tensor = convert_image(img, source='pil', target=middle)  # (3, 16, 16)
        assert tensor.shape == (3, 16, 16) and tensor.dtype == torch.float32
        back = convert_image(tensor, source=middle, target='pil')
        assert back.mode == 'RGB'
        assert np.array_equal(np.asarray(back), np.asarray(img))


def test_tensor_targets_match_their_formulas():
    img = every_level_image()
    rgb = np.asarray(img, dtype=np.float64).transpose(2, 0, 1) / 255.  # (3, H, W), in [0, 1]
    as_numpy = lambda target: convert_image(img, source='pil', target=target).double().numpy()
    np.testing.assert_allclose(as_numpy('[0, 1]'), rgb, atol=1e-6)
    np.testing.assert_allclose(as_numpy('[-1, 1]'), 2. * rgb - 1., atol=1e-6)
    np.testing.assert_allclose(as_numpy('[0, 255]'), 255. * rgb, atol=1e-4)
    np.testing.assert_allclose(as_numpy('imagenet-norm'), (rgb - MEAN[:, None, None]) / STD[:, None, None], atol=1e-5)
    np.testing.assert_allclose(as_numpy('y-channel'), reference_y(img), atol=1e-3)


def test_y_channel_formula_on_3d_and_4d_in_float64():
    rgb = torch.rand(2, 3, 5, 7, dtype=torch.float64)  # in [0, 1]
    y = convert_image(rgb, source='[0, 1]', target='y-channel')
    assert y.shape == (2, 5, 7) and y.dtype == torch.float64
    expected = 16. + 65.481 * rgb[:, 0] + 128.553 * rgb[:, 1] + 24.966 * rgb[:, 2]
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(convert_image(rgb[1], source='[0, 1]', target='y-channel'), expected[1], rtol=0, atol=1e-10)
    # Black and white land on the ends of the studio range.
    ends = convert_image(torch.tensor([[[-1.]] * 3, [[1.]] * 3]).view(2, 3, 1, 1), '[-1, 1]', 'y-channel')
    torch.testing.assert_close(ends.flatten(), torch.tensor([16., 235.]))


@pytest.mark.parametrize('target', ['[0, 255]', '[0, 1]', '[-1, 1]', 'imagenet-norm', 'y-channel'])
@pytest.mark.parametrize('shape', [(3, 4, 5), (2, 3, 4, 5)])
def test_tensor_conversions_keep_device_and_dtype(target, shape):
    # The meta device stands in for a GPU: a constant made on the CPU would not broadcast with it.
    for img in (torch.rand(shape, dtype=torch.float64), torch.rand(shape, dtype=torch.float64, device='meta')):
        for source in ('[0, 1]', '[-1, 1]'):
            converted = convert_image(img, source=source, target=target)
            assert converted.device == img.device and converted.dtype == torch.float64
            assert converted.shape == (shape[:-3] + shape[-2:] if target == 'y-channel' else shape)


def test_float_to_pil_rounds_then_clamps():
    values = torch.tensor([-0.2, 0., 0.4, 0.6, 127.49, 127.51, 254.4, 254.6, 300.], dtype=torch.float64) / 255.
    img = convert_image(values.view(1, 1, -1).expand(3, 1, -1), source='[0, 1]', target='pil')
    assert list(np.asarray(img)[0, :, 0]) == [0, 0, 0, 1, 127, 128, 254, 255, 255]
    img = convert_image(torch.tensor([-1.5, 1.5]).view(1, 1, 2).expand(3, 1, 2), source='[-1, 1]', target='pil')
    assert list(np.asarray(img)[0, :, 1]) == [0, 255]


def test_convert_image_refuses_bad_arguments():
    with pytest.raises(ValueError):
        convert_image(torch.rand(3, 4, 4), source='[0, 255]', target='pil')
    with pytest.raises(ValueError):
        convert_image(torch.rand(3, 4, 4), source='[0, 1]', target='hsv')
    with pytest.raises(ValueError):
        convert_image(torch.rand(2, 3, 4, 4), source='[0, 1]', target='pil')


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    levels = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(levels).save(tmp_path / 'deep.png')
    with Image.open(tmp_path / 'deep.png') as img:
        assert img.mode.startswith('I')
        rgb = convert_image(img, source='pil', target='[0, 1]')  # (3, 32, 32)
    expected = np.round(levels / 257.) / 255.  # 16 bits to 8, as a 16-bit viewer shows it
    for channel in rgb:
        np.testing.assert_allclose(channel.numpy(), expected, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------

def test_psnr_and_ssim_match_an_independent_computation():
    hr_img = textured_image(48, 40, seed=1)
    noise = np.random.default_rng(2).normal(0., 12., (40, 48, 3))
    sr_img = Image.fromarray(np.clip(np.round(np.asarray(hr_img) + noise), 0, 255).astype(np.uint8))
    for crop_border in (0, 4):
        psnr, ssim = compute_psnr_ssim(sr_img, hr_img, crop_border)
        sr_y, hr_y = reference_y(sr_img), reference_y(hr_img)
        if crop_border:
            sr_y = sr_y[crop_border:-crop_border, crop_border:-crop_border]
            hr_y = hr_y[crop_border:-crop_border, crop_border:-crop_border]
        expected_psnr = 10. * np.log10(255. ** 2 / np.mean((sr_y - hr_y) ** 2))
        expected_ssim = structural_similarity(sr_y, hr_y, gaussian_weights=True, sigma=1.5,
                                              use_sample_covariance=False, data_range=255)
        assert isinstance(psnr, float) and isinstance(ssim, float)
        assert psnr == pytest.approx(expected_psnr, abs=1e-9)
        assert ssim == pytest.approx(expected_ssim, abs=1e-9)
        assert 15. < psnr < 40. and 0.2 < ssim < 0.99  # a non-trivial case


def test_psnr_ssim_of_identical_images_and_cropped_border():
    hr_img = textured_image(32, 32, seed=3)
    assert compute_psnr_ssim(hr_img, hr_img.copy(), 4) == (float('inf'), pytest.approx(1.0, abs=1e-12))
    # A difference inside the border only does not count once the border is cropped.
    array = np.asarray(hr_img).copy()
    array[:3, :, :] = 255 - array[:3, :, :]
    damaged = Image.fromarray(array)
    assert compute_psnr_ssim(damaged, hr_img, 3)[0] == float('inf')
    assert compute_psnr_ssim(damaged, hr_img, 2)[0] < 30.
    with pytest.raises(ValueError):
        compute_psnr_ssim(hr_img, textured_image(32, 30, seed=3), 4)


# ----------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------

def test_train_transform_sizes_and_bicubic_lr():
    img = textured_image(120, 100, seed=4)
    transform = ImageTransforms('train', 96, 4, lr_img_type='[0, 1]', hr_img_type='[0, 1]')
    lr_img, hr_img = transform(img, random.Random(0))
    assert lr_img.shape == (3, 24, 24) and hr_img.shape == (3, 96, 96)
    left, top = locate(hr_img, img)
    hr_crop = img.crop((left, top, left + 96, top + 96))
    expected_lr = np.asarray(hr_crop.resize((24, 24), Image.BICUBIC))  # Pillow's bicubic, as the tutorial
    assert np.array_equal(np.asarray(convert_image(lr_img, source='[0, 1]', target='pil')), expected_lr)
    # The other types are the same pixels.
    transform = ImageTransforms('train', 96, 4, lr_img_type='imagenet-norm', hr_img_type='[-1, 1]')
    lr_norm, hr_signed = transform(img, random.Random(0))
    torch.testing.assert_close(hr_signed, 2. * hr_img - 1.)
    torch.testing.assert_close(lr_norm, convert_image(lr_img, '[0, 1]', 'imagenet-norm'))


def test_train_crops_reach_every_edge():
    img = textured_image(40, 36, seed=5)
    transform = ImageTransforms('train', 32, 4, lr_img_type='[0, 1]', hr_img_type='[0, 1]')
    rng = random.Random(0)
    corners = [locate(transform(img, rng)[1], img) for _ in range(200)]
    lefts, tops = {left for left, _ in corners}, {top for _, top in corners}
    assert lefts == set(range(40 - 32 + 1))  # column 0 and the last column, and all between
    assert tops == set(range(36 - 32 + 1))


def test_train_crop_of_an_image_exactly_crop_size_wide():
    img = textured_image(32, 48, seed=6)
    transform = ImageTransforms('train', 32, 4, lr_img_type='[0, 1]', hr_img_type='[0, 1]')
    rng = random.Random(1)
    for _ in range(20):
        lr_img, hr_img = transform(img, rng)
        assert lr_img.shape == (3, 8, 8) and locate(hr_img, img)[0] == 0
    with pytest.raises(ValueError):
        transform(textured_image(31, 48, seed=6), rng)
    with pytest.raises(ValueError):
        ImageTransforms('train', 30, 4, lr_img_type='[0, 1]', hr_img_type='[0, 1]')


@pytest.mark.parametrize('scaling_factor', [2, 4, 8])
def test_test_transform_centre_crop_divides_by_the_scaling_factor(scaling_factor):
    img = textured_image(103, 98, seed=7)
    transform = ImageTransforms('test', 96, scaling_factor, lr_img_type='[0, 1]', hr_img_type='[0, 1]')
    lr_img, hr_img = transform(img)
    width, height = 103 // scaling_factor * scaling_factor, 98 // scaling_factor * scaling_factor
    assert hr_img.shape == (3, height, width)
    assert lr_img.shape == (3, height // scaling_factor, width // scaling_factor)
    left, top = locate(hr_img, img)
    assert abs(2 * left - (103 - width)) <= 1 and abs(2 * top - (98 - height)) <= 1  # centred
    expected_lr = img.crop((left, top, left + width, top + height)).resize(
        (width // scaling_factor, height // scaling_factor), Image.BICUBIC)
    assert np.array_equal(np.asarray(convert_image(lr_img, '[0, 1]', 'pil')), np.asarray(expected_lr))


# ----------------------------------------------------------------------------------------------
# Data lists and the dataset
# ----------------------------------------------------------------------------------------------

def write_image_folders(root):
    """Training and test folders with every kind of file create_data_lists must cope with.

    Returns (train folder, test folder, names the train list must keep, names it must warn about).
    """
    train, test = root / 'train', root / 'Set5'
    train.mkdir()
    test.mkdir()
    textured_image(130, 104, seed=10).save(train / 'a_photo.JPG', quality=95)
    textured_image(120, 110, seed=11).save(train / 'b_photo.PNG')
    textured_image(100, 100, seed=12).convert('L').save(train / 'c_grey.png')
    rgba = textured_image(101, 112, seed=13).convert('RGBA')
    rgba.putalpha(128)
    rgba.save(train / 'd_rgba.png')
    deep = (np.arange(112 * 104).reshape(112, 104) * 5 % 65536).astype(np.uint16)
    Image.fromarray(deep).save(train / 'e_deep.png')  # 16-bit greyscale, mode I;16
    textured_image(99, 200, seed=14).save(train / 'f_small.png')  # one side below min_size
    png = (train / 'b_photo.PNG').read_bytes()
    (train / 'g_truncated.png').write_bytes(png[:len(png) // 2])
    (train / 'h_corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0 this is not a JPEG' * 10)
    (train / 'i_empty.png').write_bytes(b'')
    (train / 'notes.txt').write_text('not an image, and not named like one')
    textured_image(104, 100, seed=15).save(test / 'baby.png')
    textured_image(103, 101, seed=16).save(test / 'bird.bmp')
    Image.fromarray((np.arange(100 * 104).reshape(100, 104) * 6).astype(np.uint16)).save(test / 'deep.png')
    kept = ['a_photo.JPG', 'b_photo.PNG', 'c_grey.png', 'd_rgba.png', 'e_deep.png']
    bad = ['g_truncated.png', 'h_corrupt.jpg', 'i_empty.png']
    return train, test, kept, bad


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """The folders above and the lists made from them: (root, lists folder, train, test, kept, bad)."""
    root = tmp_path_factory.mktemp('images')
    train, test, kept, bad = write_image_folders(root)
    lists = root / 'lists'
    with pytest.warns(UserWarning):
        utils.create_data_lists([str(train) + os.sep], [str(test)], min_size=100, output_folder=str(lists))
    return root, lists, train, test, kept, bad


def test_create_data_lists_keeps_and_skips_the_right_files(tmp_path, capsys):
    train, test, kept, bad = write_image_folders(tmp_path)
    lists = tmp_path / 'lists'
    with pytest.warns(UserWarning) as warned:
        counts = utils.create_data_lists([str(train) + os.sep], [str(test) + os.sep], min_size=100,
                                         output_folder=str(lists))
    assert counts == {'train_images.json': len(kept), 'Set5_test_images.json': 3}
    train_list = json.loads((lists / 'train_images.json').read_text())
    assert train_list == sorted(str(train / name) for name in kept)
    assert all(os.path.isabs(path) for path in train_list)
    test_list = json.loads((lists / 'Set5_test_images.json').read_text())
    assert test_list == sorted(str(test / name) for name in ('baby.png', 'bird.bmp', 'deep.png'))
    # Each undecodable file is named in a warning; nothing else is warned about.
    messages = [str(warning.message) for warning in warned]
    for name in bad:
        assert sum(name in message for message in messages) == 1, (name, messages)
    assert not any(name in message for message in messages for name in kept + ['f_small.png', 'notes.txt'])
    # The run reports the kept, small and unreadable counts.
    train_line = next(line for line in capsys.readouterr().out.splitlines() if 'train_images.json' in line)
    assert {str(len(kept)), '1', str(len(bad))} <= set(re.findall(r'\d+', train_line))


def test_create_data_lists_with_several_train_folders_and_the_script(tmp_path, capsys):
    train, test, kept, _ = write_image_folders(tmp_path)
    extra = tmp_path / 'extra'
    extra.mkdir()
    textured_image(100, 100, seed=20).save(extra / '0_first.webp')
    lists = tmp_path / 'lists'
    with pytest.warns(UserWarning):
        create_data_lists_script.main([f"--train_folders={[str(train), str(extra) + os.sep]!r}",
                                       f"--test_folders={[str(test)]!r}", '--min_size=100', '--val_size=2',
                                       f"--output_folder={lists}"])
    train_list = json.loads((lists / 'train_images.json').read_text())
    val_list = json.loads((lists / 'val_images.json').read_text())
    assert len(val_list) == 2 and len(train_list) == len(kept) - 1  # of the 6 usable images
    assert sorted(train_list + val_list) == sorted([str(train / name) for name in kept] + [str(extra / '0_first.webp')])
    assert (lists / 'Set5_test_images.json').is_file()


def test_create_data_lists_missing_folder_is_a_clear_error(tmp_path):
    train, test, _, _ = write_image_folders(tmp_path)
    missing = str(tmp_path / 'Set14')
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        utils.create_data_lists([str(train)], [str(test), missing], min_size=100, output_folder=str(tmp_path / 'lists'))
    assert not (tmp_path / 'lists').exists()  # refused before writing anything


def test_create_data_lists_holds_out_a_validation_split(tmp_path, capsys):
    folder = tmp_path / 'photos'
    folder.mkdir()
    for i in range(12):
        textured_image(20, 18, seed=i).save(folder / f'{i:02d}.png')
    every_image = sorted(str(folder / f'{i:02d}.png') for i in range(12))

    def split(val_seed, output):
        counts = utils.create_data_lists([str(folder)], [], min_size=16, output_folder=str(tmp_path / output),
                                         val_size=4, val_seed=val_seed)
        assert counts == {'train_images.json': 8, 'val_images.json': 4}
        train, val = (json.loads((tmp_path / output / name).read_text())
                      for name in ('train_images.json', 'val_images.json'))
        return train, val

    train, val = split(0, 'a')
    assert len(val) == 4 and not set(train) & set(val) and sorted(train + val) == every_image
    assert train == sorted(train) and val == sorted(val)
    assert split(0, 'b') == (train, val)  # the same seed, the same split
    other_train, other_val = split(1, 'c')
    assert set(other_val) != set(val) and sorted(other_train + other_val) == every_image
    assert 'val_images.json: 4 images held out' in capsys.readouterr().out
    for val_size in (12, 13):
        with pytest.raises(ValueError, match=f'val_size {val_size} leaves no training images .*12 usable'):
            utils.create_data_lists([str(folder)], [], min_size=16, output_folder=str(tmp_path / 'd'),
                                    val_size=val_size)
    assert not (tmp_path / 'd').exists()
    # No hold-out: no val list, not even an earlier split's, whose images are training images now.
    with pytest.raises(FileExistsError, match='train_images.json exists and is kept'):
        utils.create_data_lists([str(folder)], [], 16, str(tmp_path / 'a'))
    counts = utils.create_data_lists([str(folder)], [], 16, str(tmp_path / 'a'), overwrite=True)  # asked for
    assert counts == {'train_images.json': 12}
    assert sorted(os.listdir(tmp_path / 'a')) == ['train_images.json']
    # The script refuses a negative size.
    with pytest.raises(ConfigError, match='val_size must be >= 0'):
        create_data_lists_script.main([f"--train_folders={[str(folder)]!r}", '--test_folders=[]', '--val_size=-1'])


def test_read_data_list_checks_every_file_up_front(tmp_path):
    assert data_list_path('data', 'train') == os.path.join('data', 'train_images.json')
    assert data_list_path('data', 'val') == os.path.join('data', 'val_images.json')
    assert data_list_path('data', 'Set14') == os.path.join('data', 'Set14_test_images.json')
    images = [tmp_path / f'{i}.png' for i in range(3)]
    for i, path in enumerate(images):
        textured_image(8, 8, seed=i).save(path)
    list_path = tmp_path / 'val_images.json'
    list_path.write_text(json.dumps([str(path) for path in images]))
    assert read_data_list(str(list_path)) == [str(path) for path in images]
    images[1].unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f'names 1 missing file(s), first {images[1]}')):
        read_data_list(str(list_path))
    for content, message in (('[]', 'is empty'), ('{"a": 1}', 'must be a JSON list'), ('[1, 2', 'not valid JSON')):
        list_path.write_text(content)
        with pytest.raises(ValueError, match=message):
            read_data_list(str(list_path))


def assert_imagenet_normed(lr_img):
    """Every channel of an ImageNet-normed image lies within what [0, 1] maps to."""
    for channel, mean, std in zip(lr_img, MEAN, STD):
        assert channel.min() >= (0. - mean) / std - 1e-5 and channel.max() <= (1. - mean) / std + 1e-5


def test_srdataset_train_split(data):
    _, lists, _, _, kept, _ = data
    dataset = SRDataset(str(lists), 'train', crop_size=96, scaling_factor=4, lr_img_type='imagenet-norm',
                        hr_img_type='[-1, 1]')
    assert len(dataset) == len(kept)
    for index in range(len(dataset)):
        lr_img, hr_img = dataset[index]
        assert lr_img.shape == (3, 24, 24) and hr_img.shape == (3, 96, 96)
        assert lr_img.dtype == hr_img.dtype == torch.float32
        assert hr_img.min() >= -1. and hr_img.max() <= 1.
        assert_imagenet_normed(lr_img)
        assert hr_img.max() - hr_img.min() > 0.2  # real content: no image came out blank or saturated
    # The (index, seed) key picks the crop: the same key, the same pair; another seed, another crop.
    first, again, other = dataset[(0, 7)], dataset[(0, 7)], dataset[(0, 8)]
    assert torch.equal(first[1], again[1]) and not torch.equal(first[1], other[1])


def test_srdataset_test_split(data):
    _, lists, _, test, _, _ = data
    dataset = SRDataset(str(lists), 'test', crop_size=96, scaling_factor=4, lr_img_type='imagenet-norm',
                        hr_img_type='[-1, 1]', test_data_name='Set5')
    assert len(dataset) == 3
    for index, name in enumerate(['baby.png', 'bird.bmp', 'deep.png']):
        lr_img, hr_img = dataset[index]
        with Image.open(test / name) as img:
            width, height = img.size
        assert hr_img.shape == (3, height // 4 * 4, width // 4 * 4)
        assert lr_img.shape == (3, height // 4, width // 4)
        assert hr_img.min() >= -1. and hr_img.max() <= 1.
        assert_imagenet_normed(lr_img)
    # The 16-bit image (104 x 100, so no crop) arrives scaled to 8 bits.
    _, hr_img = dataset[2]
    levels = (np.arange(100 * 104).reshape(100, 104) * 6).astype(np.uint16)
    np.testing.assert_allclose(hr_img[0].numpy(), np.round(levels / 257.) / 255. * 2. - 1., atol=1e-6)


@pytest.mark.parametrize('split', ['train', 'test'])
def test_srdataset_cache_gives_the_same_pairs(data, split):
    _, lists, _, _, _, _ = data
    kwargs = dict(crop_size=96, scaling_factor=4, lr_img_type='imagenet-norm', hr_img_type='[-1, 1]',
                  test_data_name='Set5')
    plain = SRDataset(str(lists), split, **kwargs)
    cached = SRDataset(str(lists), split, cache_images=True, **kwargs)
    for index in range(len(plain)):
        for seed in (0, 1, 12345):
            (lr_plain, hr_plain), (lr_cached, hr_cached) = plain[(index, seed)], cached[(index, seed)]
            assert torch.equal(lr_plain, lr_cached) and torch.equal(hr_plain, hr_cached)


def test_srdataset_missing_list_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / 'train_images.json'))):
        SRDataset(str(tmp_path), 'train', 96, 4, 'imagenet-norm', '[-1, 1]')
    with pytest.raises(FileNotFoundError, match='Set14_test_images.json'):
        SRDataset(str(tmp_path), 'test', 96, 4, 'imagenet-norm', '[-1, 1]', test_data_name='Set14')
    with pytest.raises(ValueError):
        SRDataset(str(tmp_path), 'test', 96, 4, 'imagenet-norm', '[-1, 1]')  # no test_data_name


# ----------------------------------------------------------------------------------------------
# The resumable sampler
# ----------------------------------------------------------------------------------------------

def test_resumed_sampler_yields_the_tail_of_the_full_stream():
    full = list(ResumableSampler(n_images=7, batch_size=3, iterations=12, seed=5))
    assert len(full) == len(ResumableSampler(7, 3, 12, 5)) == 36
    for start_iteration in (0, 1, 4, 11, 12):
        resumed = ResumableSampler(7, 3, 12, 5, start_iteration=start_iteration)
        assert list(resumed) == full[start_iteration * 3:]
        assert len(resumed) == len(full) - start_iteration * 3
    # Every epoch is a permutation of the images, and differs from the previous one.
    indices = [index for index, _ in full]
    epochs = [indices[start:start + 7] for start in range(0, 35, 7)]
    assert all(sorted(epoch) == list(range(7)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) > 1
    # Each position has its own crop seed; another run seed gives another stream.
    assert len({crop_seed for _, crop_seed in full}) == len(full)
    assert list(ResumableSampler(7, 3, 12, 6)) != full


def test_sampler_ranks_are_disjoint_and_together_make_the_single_process_stream():
    world_size, batch_size, iterations = 2, 3, 8
    ranks = [list(ResumableSampler(7, batch_size, iterations, seed=5, rank=rank, world_size=world_size))
             for rank in range(world_size)]
    crop_seeds = [{crop_seed for _, crop_seed in stream} for stream in ranks]
    assert not crop_seeds[0] & crop_seeds[1]
    # Iteration t of rank r is iteration t * world_size + r of a single process.
    single = list(ResumableSampler(7, batch_size, iterations * world_size, seed=5))
    interleaved = [sample for t in range(iterations) for rank in range(world_size)
                   for sample in ranks[rank][t * batch_size:(t + 1) * batch_size]]
    assert interleaved == single
    # And a rank resumes like a single process does.
    assert list(ResumableSampler(7, batch_size, iterations, 5, start_iteration=3, rank=1, world_size=2)) == \
        ranks[1][3 * batch_size:]


# ----------------------------------------------------------------------------------------------
# Config, checkpoints and small helpers
# ----------------------------------------------------------------------------------------------

SCRIPT_CONSTANTS = """
batch_size: int = 16
lr: float = 1e-4
checkpoint: str = ''
test_folders: list = ['data/Set5']
amp: bool = True
"""


def script_globals():
    """The globals of a script that declares the constants above, as Python makes them."""
    namespace = {'__file__': '/somewhere/train_example.py'}
    exec(SCRIPT_CONSTANTS, namespace)
    return namespace


def test_parse_config_overrides_by_type(capsys):
    namespace = script_globals()
    config = parse_config(namespace, ['--batch_size=8', '--lr=1', '--checkpoint=123',
                                      "--test_folders=['data/Set5', 'data/Set14']", '--amp=False'])
    assert vars(config) == {'batch_size': 8, 'lr': 1.0, 'checkpoint': '123',
                            'test_folders': ['data/Set5', 'data/Set14'], 'amp': False}
    assert type(config.lr) is float and type(config.checkpoint) is str
    assert namespace['batch_size'] == 16  # the script's own constants stay as written
    assert 'batch_size' in capsys.readouterr().out  # says what it overrode
    assert vars(parse_config(script_globals(), [])) == {'batch_size': 16, 'lr': 1e-4, 'checkpoint': '',
                                                        'test_folders': ['data/Set5'], 'amp': True}
    assert parse_config(script_globals(), ['--checkpoint=runs/a b.pth']).checkpoint == 'runs/a b.pth'


@pytest.mark.parametrize('argument, key', [
    ('--batch_sise=8', 'batch_sise'),  # unknown key
    ('--batch_size=8.5', 'batch_size'),  # float for int
    ('--batch_size=True', 'batch_size'),  # bool for int
    ('--lr=fast', 'lr'),  # string for float
    ('--amp=1', 'amp'),  # int for bool
    ('--test_folders=data/Set5', 'test_folders'),  # string for list
])
def test_parse_config_refuses_unknown_keys_and_wrong_types(argument, key):
    namespace = script_globals()
    with pytest.raises(ConfigError, match=f"--{key}|'{key}'"):  # raised, for run_script to print as one line
        parse_config(namespace, [argument])
    assert namespace['batch_size'] == 16 and namespace['lr'] == 1e-4


def test_parse_config_refuses_malformed_arguments():
    with pytest.raises(ConfigError, match="--key=value, got 'batch_size=8'"):
        parse_config(script_globals(), ['batch_size=8'])
    assert issubclass(ConfigError, ValueError)  # what run_script turns into `script: error: ...`


def test_parse_config_help_lists_the_constants(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(script_globals(), ['--help'])
    assert exit_info.value.code == 0
    assert "--test_folders=['data/Set5']" in capsys.readouterr().out


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / 'checkpoints' / 'srresnet.pth'  # the folder does not exist yet
    save_checkpoint({'model': {'weight': torch.ones(3)}, 'iteration': 1}, str(path))
    assert os.listdir(path.parent) == ['srresnet.pth']
    with pytest.raises(FileExistsError, match='srresnet.pth exists and is kept'):  # unless asked to
        save_checkpoint({'model': {'weight': torch.full((3,), 2.)}, 'iteration': 2}, str(path))
    save_checkpoint({'model': {'weight': torch.full((3,), 2.)}, 'iteration': 2}, str(path), exists='replace')
    assert os.listdir(path.parent) == ['srresnet.pth']

    real_save = torch.save
    for failure in (OSError('disk full'), KeyboardInterrupt()):
        def failing_save(obj, f, *args, **kwargs):
            real_save({'torn': True}, f)  # part of the bytes reach the disk, then the save dies
            raise failure
        monkeypatch.setattr(torch, 'save', failing_save)
        with pytest.raises(type(failure)):
            save_checkpoint({'model': {'weight': torch.zeros(3)}, 'iteration': 3}, str(path), exists='replace')
        monkeypatch.undo()
        assert os.listdir(path.parent) == ['srresnet.pth']  # no temporary file left behind
        checkpoint = load_checkpoint(str(path), required_keys=('model', 'iteration'))
        assert checkpoint['iteration'] == 2 and torch.equal(checkpoint['model']['weight'], torch.full((3,), 2.))


def test_load_checkpoint_errors_name_the_file(tmp_path):
    missing = str(tmp_path / 'nothing.pth')
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        load_checkpoint(missing)
    not_a_dict = str(tmp_path / 'list.pth')
    torch.save([1, 2], not_a_dict)
    with pytest.raises(ValueError, match=re.escape(not_a_dict)):
        load_checkpoint(not_a_dict)
    lacking = str(tmp_path / 'lacking.pth')
    torch.save({'model': {}}, lacking)
    with pytest.raises(ValueError, match=re.escape(lacking)) as error:
        load_checkpoint(lacking, required_keys=('model', 'model_args'))
    assert 'model_args' in str(error.value)
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match=re.escape(str(garbage))):
        load_checkpoint(str(garbage))
    pickled_module = str(tmp_path / 'module.pth')
    torch.save({'model': nn.Linear(2, 2)}, pickled_module)  # a module object: weights_only refuses it
    with pytest.raises(ValueError, match=re.escape(pickled_module)):
        load_checkpoint(pickled_module)
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    with pytest.raises(ValueError, match=re.escape(f'{empty} is empty (0 bytes), not a checkpoint')):
        load_checkpoint(str(empty))
    notes = tmp_path / 'notes.pth'
    notes.write_text('lr 1e-4, 16 blocks\n')
    with pytest.raises(ValueError, match=re.escape(f"{notes} is not a PyTorch checkpoint: it holds text")):
        load_checkpoint(str(notes))


# ----------------------------------------------------------------------------------------------
# Writing outputs safely
# ----------------------------------------------------------------------------------------------

def failing_midway(write_some):
    """A stand-in for a writer that puts some bytes into its file, then dies (a full disk, a kill)."""
    def fail(*args, **kwargs):
        write_some(*args, **kwargs)
        raise OSError(28, 'No space left on device')
    return fail


def test_save_json_and_save_image_keep_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    json_path, png_path = tmp_path / 'results.json', tmp_path / 'photo.png'
    utils.save_json({'psnr': 30.0}, str(json_path))
    utils.save_image(textured_image(8, 6, seed=0), str(png_path))
    before = {path: path.read_bytes() for path in (json_path, png_path)}
    monkeypatch.setattr(utils.json, 'dump', failing_midway(lambda obj, f, **kwargs: f.write('{"psnr": 1')))
    with pytest.raises(OSError, match='No space'):
        utils.save_json({'psnr': 1.0}, str(json_path))
    monkeypatch.setattr(Image.Image, 'save', failing_midway(lambda img, f, **kwargs: f.write(b'\x89PNG\r\n')))
    with pytest.raises(OSError, match='No space'):
        utils.save_image(textured_image(8, 6, seed=1), str(png_path))
    monkeypatch.undo()
    assert {path: path.read_bytes() for path in (json_path, png_path)} == before
    assert sorted(os.listdir(tmp_path)) == ['photo.png', 'results.json']  # no temporary left behind
    with pytest.raises(ValueError, match="'.xyz' is not an image format"):
        utils.save_image(textured_image(8, 6, seed=1), str(tmp_path / 'photo.xyz'))


def test_training_log_csv_and_plot_keep_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    import matplotlib.figure
    log_path = tmp_path / 'log.csv'
    log = runtime.TrainingLog(str(log_path), ['iteration', 'loss', 'val_psnr'])
    log.log(iteration=1, loss='0.5')
    log.log(iteration=2, loss='0.25', val_psnr='20.0')
    log.plot({'loss': ['loss'], 'PSNR': ['val_psnr']})
    before = {path: path.read_bytes() for path in (log_path, tmp_path / 'log.png')}
    assert before[log_path].decode().splitlines() == ['iteration,loss,val_psnr', '1,0.5,', '2,0.25,20.0']
    assert before[tmp_path / 'log.png'].startswith(b'\x89PNG')

    monkeypatch.setattr(runtime.csv.DictWriter, 'writerows',
                        failing_midway(lambda writer, rows: writer.writerow(rows[0])))
    with pytest.raises(OSError, match='No space'):
        log.log(iteration=3, loss='0.125')
    monkeypatch.setattr(matplotlib.figure.Figure, 'savefig',
                        failing_midway(lambda fig, f, **kwargs: f.write(b'\x89PNG\r\n')))
    with pytest.raises(OSError, match='No space'):
        log.plot({'loss': ['loss']})
    monkeypatch.undo()
    assert {path: path.read_bytes() for path in before} == before
    assert sorted(os.listdir(tmp_path)) == ['log.csv', 'log.png']


def test_training_log_of_a_resumed_run_drops_rows_after_the_checkpoint(tmp_path):
    log_path = str(tmp_path / 'log.csv')
    log = runtime.TrainingLog(log_path, ['iteration', 'loss'])
    for iteration in range(1, 6):
        log.log(iteration=iteration, loss=str(iteration))
    resumed = runtime.TrainingLog(log_path, ['iteration', 'loss'], resume_from=3)  # the checkpoint was at 3
    resumed.log(iteration=4, loss='new')
    with open(log_path) as f:
        assert f.read().splitlines() == ['iteration,loss', '1,1', '2,2', '3,3', '4,new']


def finished_pid():
    """The id of a process that has exited."""
    process = subprocess.Popen([sys.executable, '-c', 'pass'])
    process.wait()
    return process.pid


def test_remove_stale_temporaries_keeps_what_live_processes_write(tmp_path):
    dead = finished_pid()
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        assert sleeper.pid != dead
        names = {'dead': f'.srtmp-{dead}-abc_1234.pth', 'alive': f'.srtmp-{sleeper.pid}-def_1234.pth',
                 'mine': f'.srtmp-{os.getpid()}-ghi_1234.csv', 'checkpoint': 'checkpoint_srresnet.pth',
                 # A user's files that only look like ours: never touched.
                 'users': f'.tmp_{dead}_abc.pth', 'longer': f'.srtmp-{dead}-abc_1234.pth.bak',
                 'shorter': f'.srtmp-{dead}-abc.pth', 'no pid': '.srtmp-x-abc_1234.pth'}
        for name in names.values():
            (tmp_path / name).write_bytes(b'partial')
        (tmp_path / f'.srtmp-{dead}-folder12').mkdir()  # a folder named like a temporary: kept, and no error
        os.symlink(tmp_path / 'checkpoint_srresnet.pth', tmp_path / f'.srtmp-{dead}-alink123.pth')  # a link: kept
        removed = utils.remove_stale_temporaries(str(tmp_path))
        assert removed == [str(tmp_path / names['dead'])]
        assert sorted(os.listdir(tmp_path)) == sorted([name for key, name in names.items() if key != 'dead']
                                                      + [f'.srtmp-{dead}-folder12', f'.srtmp-{dead}-alink123.pth'])
    finally:
        sleeper.kill()
        sleeper.wait()
    assert utils.remove_stale_temporaries(str(tmp_path / 'not_yet_made')) == []


def test_load_sr_model_rebuilds_the_network(tmp_path):
    torch.manual_seed(0)
    model_args = {'n_channels': 8, 'n_blocks': 1, 'scaling_factor': 2}
    model = SRResNet(**model_args).eval()
    lr_imgs = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        expected = model(lr_imgs)
    for key in ('model', 'generator'):
        path = str(tmp_path / f'{key}.pth')
        save_checkpoint({key: model.state_dict(), 'model_args': model_args, 'iteration': 5}, path)
        loaded, checkpoint = load_sr_model(path)
        assert not loaded.training and checkpoint['iteration'] == 5
        with torch.no_grad():
            torch.testing.assert_close(loaded(lr_imgs), expected)


def test_unwrap_strips_wrappers():
    class DataParallelLike(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    class CompiledLike(nn.Module):
        def __init__(self, module):
            super().__init__()
            self._orig_mod = module

    model = SRResNet(n_channels=8, n_blocks=1)
    wrapped = CompiledLike(DataParallelLike(model))
    assert any(key.startswith('_orig_mod.module.') for key in wrapped.state_dict())
    assert unwrap(wrapped) is model and unwrap(model) is model
    assert list(unwrap(wrapped).state_dict()) == list(model.state_dict())
    empty = nn.Sequential()  # falsy, as an empty container is
    assert unwrap(DataParallelLike(empty)) is empty


def test_clip_gradient_and_set_learning_rate():
    parameter, other = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{'params': [parameter]}, {'params': [other], 'lr': 0.5}], lr=0.1)
    parameter.grad = torch.tensor([-5., -0.5, 0.5, 5.])
    clip_gradient(optimizer, 1.)  # `other` has no gradient: left alone
    assert torch.equal(parameter.grad, torch.tensor([-1., -0.5, 0.5, 1.])) and other.grad is None
    set_learning_rate(optimizer, 0.01)
    assert [group['lr'] for group in optimizer.param_groups] == [0.01, 0.01]  # every group


# ----------------------------------------------------------------------------------------------
# Learning-rate schedules
# ----------------------------------------------------------------------------------------------

def test_step_schedule_decays_after_decay_at_and_zero_means_never():
    step = lambda iteration, **kwargs: learning_rate_at(iteration, 1e-3, 'step', 100, **kwargs)
    assert [step(i, decay_at=0, decay=0.1) for i in (1, 2, 50, 100, 1000)] == [1e-3] * 5
    assert [step(i, decay_at=40, decay=0.1) for i in (1, 39, 40)] == [1e-3] * 3
    assert [step(i, decay_at=40, decay=0.1) for i in (41, 100)] == [pytest.approx(1e-4)] * 2


def test_cosine_schedule_falls_from_lr_to_zero_monotonically():
    lrs = [learning_rate_at(i, 1e-3, 'cosine', 200) for i in range(1, 201)]
    assert lrs[0] == 1e-3
    assert lrs[100] == pytest.approx(5e-4)  # halfway down at the middle of the run
    assert 0 <= lrs[-1] < 1e-3 * 1e-3  # about 0 at the end
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize('schedule', ['step', 'cosine'])
def test_warmup_ramps_linearly_up_to_lr(schedule):
    lrs = [learning_rate_at(i, 1e-3, schedule, 100, decay_at=50, warmup=4) for i in range(1, 7)]
    assert lrs[:5] == [pytest.approx(v) for v in (2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3)]
    assert lrs[5] <= 1e-3
    with pytest.raises(ConfigError, match="lr_schedule must be 'step' or 'cosine'"):
        learning_rate_at(1, 1e-3, 'linear', 100)


# ----------------------------------------------------------------------------------------------
# Device, precision, randomness
# ----------------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA: the error cannot happen')
def test_pick_device_cuda_without_cuda_is_a_clear_config_error():
    for name in ('cuda', 'cuda:1'):
        with pytest.raises(ConfigError, match=f"device '{name}' asked for, but this machine has no CUDA GPU"):
            runtime.pick_device(name)


def test_pick_device_names_and_amp_settings():
    assert runtime.pick_device('cpu') == torch.device('cpu')
    assert runtime.pick_device('auto').type in ('cuda', 'mps', 'cpu')
    with pytest.raises(ConfigError, match="'gpu' is not a device name"):
        runtime.pick_device('gpu')
    cpu = torch.device('cpu')
    assert runtime.amp_settings(cpu, 'off') == (None, False)
    assert runtime.amp_settings(cpu, 'bf16') == (torch.bfloat16, False)  # bf16 needs no loss scaling
    assert runtime.amp_settings(cpu, 'fp16') == (torch.float16, True)
    with pytest.raises(ValueError, match='amp must be'):
        runtime.amp_settings(cpu, 'fp8')


@pytest.mark.parametrize('has_bf16', [True, False])
def test_auto_precision_on_a_cpu_is_bf16_only_with_bf16_arithmetic(monkeypatch, has_bf16):
    monkeypatch.setattr(runtime, 'cpu_has_bf16_arithmetic', lambda: has_bf16)
    expected = (torch.bfloat16, False) if has_bf16 else (None, False)
    assert runtime.amp_settings(torch.device('cpu'), 'auto') == expected
    assert runtime.amp_settings(torch.device('cpu'), 'off') == (None, False)  # a forced choice still wins


def test_amx_check_answers_no_where_torch_cannot_tell(monkeypatch):
    assert runtime.cpu_has_bf16_matrix_units() in (True, False)
    monkeypatch.delattr(torch.cpu, '_is_amx_tile_supported', raising=False)  # an older torch
    assert runtime.cpu_has_bf16_matrix_units() is False


@pytest.mark.parametrize('amx, avx512_bf16, expected', [(True, False, True), (False, True, True),
                                                          (True, True, True), (False, False, False)])
def test_bf16_arithmetic_is_amx_or_avx512_bf16(monkeypatch, amx, avx512_bf16, expected):
    """A Zen 4 EPYC (AVX-512 BF16, no AMX) computes bf16 in hardware as a Xeon with AMX does; a
    CPU with neither (a Zen 3 EPYC) does not, nor one whose check fails or that torch cannot test."""
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: avx512_bf16, raising=False)
    assert runtime.cpu_has_bf16_arithmetic() is expected
    assert runtime.cpu_has_bf16_matrix_units() is amx  # the strips' test stays AMX's alone
    assert_amx_alone_without(monkeypatch, '_is_avx512_bf16_supported', runtime.cpu_has_bf16_arithmetic, amx)


def assert_amx_alone_without(monkeypatch, name, check, amx):
    """`check` answers as AMX alone does where torch.cpu's test `name` fails or is missing."""
    def fails():
        raise RuntimeError('built without the check')
    monkeypatch.setattr(torch.cpu, name, fails)
    assert check() is amx
    monkeypatch.delattr(torch.cpu, name)
    assert check() is amx


@pytest.mark.parametrize('amx, vnni, expected', [(True, False, True), (False, True, True),
                                                   (True, True, True), (False, False, False)])
def test_int8_dot_products_are_amx_or_avx512_vnni(monkeypatch, amx, vnni, expected):
    """A Zen 4 EPYC (AVX-512 VNNI, no AMX) multiplies int8 in hardware as a Xeon with AMX does; a
    CPU with neither (a Zen 3 EPYC, AVX2 alone) does not, nor one whose check fails or is missing."""
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, '_is_vnni_supported', lambda: vnni, raising=False)
    assert runtime.cpu_has_int8_dot_products() is expected
    assert_amx_alone_without(monkeypatch, '_is_vnni_supported', runtime.cpu_has_int8_dot_products, amx)


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    runtime.seed_everything(3)
    path = str(tmp_path / 'rng.pth')
    save_checkpoint({'rng': runtime.rng_states()}, path)
    draw = lambda: [random.random(), np.random.rand(), torch.rand(1).item()]
    expected = draw()
    draw()  # move every generator on
    runtime.set_rng_states(load_checkpoint(path, required_keys=('rng',))['rng'])
    assert draw() == expected


def test_importing_the_core_has_no_side_effects(tmp_path):
    code = ("import sys, torch, utils, models, datasets, degradations, runtime\n"
            "assert not torch.cuda.is_initialized()\n"
            "tensors = [name for module in (utils, models, datasets, degradations, runtime)\n"
            "           for name, value in vars(module).items()\n"
            "           if isinstance(value, torch.Tensor)]\n"
            "assert not tensors, tensors\n"
            "slow = [name for name in ('torchvision', 'skimage', 'matplotlib') if name in sys.modules]\n"
            "assert not slow, slow\n")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == '' and os.listdir(tmp_path) == []  # printed nothing, wrote nothing


def test_shuffled_convolution_and_inplace_activations_keep_the_output():
    """shuffle_last_convolution and inplace_activations change how an eval SRResNet computes, not
    what: against the plain model on a non-square input, for x2, x4 and x8, and a 5x5 last kernel."""
    from models import inplace_activations, shuffle_last_convolution
    for args in (dict(n_channels=16, n_blocks=2, scaling_factor=4), dict(n_channels=8, n_blocks=1, scaling_factor=2),
                 dict(n_channels=8, n_blocks=1, scaling_factor=8, large_kernel_size=5)):
        torch.manual_seed(0)
        model = SRResNet(**args).eval()
        fast = inplace_activations(shuffle_last_convolution(fold_batchnorm(copy.deepcopy(model))))
        assert not any(isinstance(m, nn.PReLU) for m in fast.modules())
        assert isinstance(fast.subpixel_convolutional_blocks[-1].pixel_shuffle, nn.Identity)
        lr_imgs = torch.randn(2, 3, 7, 10)
        with torch.no_grad():
            expected = model(lr_imgs)
            actual = fast(lr_imgs)
        assert actual.shape == expected.shape and expected.std() > 0.01
        assert (actual - expected).abs().max() < 1e-5


def test_column_strips_cover_the_width_and_keep_clear_of_their_inner_edges():
    """models.column_strips, for every width up to 1,200: strips inside the image, a multiple of 8
    columns wide and at most 8 apart, reading no more columns than that allows, whose kept columns
    tile [0, width) in order, each at least `margin` columns from a strip's inner edge (the zero
    padding there then changes nothing kept)."""
    from models import column_strips
    assert column_strips(256, 4, 96) == [(0, 88, 0, 84), (80, 168, 84, 164), (160, 256, 164, 256)]
    for margin in (1, 4, 6):
        for strip_width in (16, 48, 96):
            for width in range(1, 1201):
                boxes = column_strips(width, margin, strip_width)
                assert boxes[0][2] == 0 and boxes[-1][3] == width
                if len(boxes) == 1:
                    assert boxes == [(0, width, 0, width)]
                    continue
                widths = [stop - start for start, stop, _, _ in boxes]
                assert len(boxes) == -(-width // strip_width)
                assert all(w % 8 == 0 for w in widths) and max(widths) - min(widths) <= 8
                assert sum(widths) - 8 < width + 2 * margin * (len(boxes) - 1) <= sum(widths)  # no step to spare
                for i, (start, stop, keep_from, keep_to) in enumerate(boxes):
                    assert 0 <= start and stop <= width and keep_from < keep_to
                    if i > 0:
                        assert boxes[i - 1][3] == keep_from and keep_from - start >= margin
                    if i < len(boxes) - 1:
                        assert stop - keep_to >= margin


def test_upsampling_in_column_strips_keeps_the_output():
    """An SRResNet with strip_width set (as super_resolve.prepare_for_backend sets it for bf16 on a
    CPU) gives the whole model's output, for x2, x4 and x8 and a 5x5 last kernel, at widths of one
    to several strips; upsampling_margin covers how far a change in the features reaches."""
    from models import inplace_activations, shuffle_last_convolution
    for args in (dict(n_channels=16, n_blocks=2, scaling_factor=4), dict(n_channels=8, n_blocks=1, scaling_factor=2),
                 dict(n_channels=8, n_blocks=1, scaling_factor=8, large_kernel_size=5)):
        torch.manual_seed(0)
        model = inplace_activations(shuffle_last_convolution(fold_batchnorm(SRResNet(**args).eval())))
        scale, margin = args['scaling_factor'], model.upsampling_margin
        for width in (9, 40, 67):
            lr_imgs = torch.randn(2, 3, 7, width)
            with torch.no_grad():
                model.strip_width = 0
                expected = model(lr_imgs)
                model.strip_width = 16
                actual = model(lr_imgs)
            assert actual.shape == expected.shape and expected.std() > 0.01
            assert (actual - expected).abs().max() < 1e-5
        # The reach: a change in feature column 30 leaves every output column outside its margin alone.
        features = torch.randn(1, args['n_channels'], 7, 61)
        changed = features.clone()
        changed[..., 30] += 1.
        with torch.no_grad():
            difference = (model.upsample(changed) - model.upsample(features)).abs().amax(dim=(0, 1, 2))
        touched = (difference > 0).nonzero().flatten()
        assert touched.numel() > 0
        assert touched.min() >= (30 - margin) * scale and touched.max() < (31 + margin) * scale


def test_activation_before_shuffle_keeps_the_output():
    """models.activation_before_shuffle moves a single-slope activation ahead of its block's pixel
    shuffle (x4: the first block; the last one's shuffle is already inside the next layer) and
    leaves the output, the state_dict keys and a per-channel PReLU's block as they were."""
    from models import activation_before_shuffle, freeze_shuffled_convolutions, inplace_activations, \
        shuffle_last_convolution
    for scaling_factor in (4, 8):
        torch.manual_seed(0)
        model = SRResNet(n_channels=16, n_blocks=2, scaling_factor=scaling_factor).eval()
        for block in model.subpixel_convolutional_blocks:
            nn.init.uniform_(block.prelu.weight, 0.1, 0.4)  # away from the default slope, so a lost one shows
        model = freeze_shuffled_convolutions(inplace_activations(shuffle_last_convolution(fold_batchnorm(model))))
        lr_imgs = torch.randn(2, 3, 9, 11)
        keys = list(model.state_dict())
        with torch.no_grad():
            expected = model(lr_imgs)
            moved = activation_before_shuffle(model)
            actual = moved(lr_imgs)
        blocks = moved.subpixel_convolutional_blocks
        assert [isinstance(block.pixel_shuffle, nn.Identity) for block in blocks] == [True] * len(blocks)
        assert isinstance(blocks[0].prelu[1], nn.PixelShuffle) and list(moved.state_dict()) == keys
        assert (actual - expected).abs().max() < 1e-6
    per_channel = SRResNet(n_channels=16, n_blocks=1, scaling_factor=2)
    per_channel.subpixel_convolutional_blocks[0].prelu = nn.PReLU(16)
    block = activation_before_shuffle(per_channel).subpixel_convolutional_blocks[0]
    assert isinstance(block.pixel_shuffle, nn.PixelShuffle) and isinstance(block.prelu, nn.PReLU)


def test_shuffled_last_convolution_trains_the_same_parameters():
    """In training mode, the shuffled last convolution keeps the plain model's parameters, names
    and state_dict, and gives the same output and the same gradients for them (the conv biases
    ahead of a BatchNorm excepted: their true gradient is 0, so both sides are rounding noise)."""
    from models import ShuffledConv2d, shuffle_last_convolution
    torch.manual_seed(0)
    model = SRResNet(n_channels=16, n_blocks=2).train()
    fast = shuffle_last_convolution(copy.deepcopy(model))
    assert isinstance(fast.conv_block3.conv_block[0], ShuffledConv2d)
    assert list(fast.state_dict()) == list(model.state_dict())
    assert [name for name, _ in fast.named_parameters()] == [name for name, _ in model.named_parameters()]
    lr_imgs, hr_imgs = torch.randn(3, 3, 12, 12), torch.rand(3, 3, 48, 48) * 2 - 1
    losses, grads = [], []
    for net in (model, fast):
        loss = F.mse_loss(net(lr_imgs), hr_imgs)
        losses.append(loss.item())
        grads.append(dict(zip([name for name, _ in net.named_parameters()],
                              torch.autograd.grad(loss, list(net.parameters())))))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    before_batch_norm = {f'{name}.conv_block.0.bias' for name, module in model.named_modules()
                         if isinstance(module, ConvolutionalBlock)
                         and any(isinstance(layer, nn.BatchNorm2d) for layer in module.conv_block)}
    for name, expected in grads[0].items():
        if name not in before_batch_norm:
            assert torch.allclose(grads[1][name], expected, rtol=1e-4, atol=1e-6 * expected.abs().max()), name
    assert grads[1]['conv_block3.conv_block.0.weight'].abs().max() > 0
    # What it learns is a plain SRResNet's: its state_dict loads into one and computes the same.
    plain = SRResNet(n_channels=16, n_blocks=2).eval()
    plain.load_state_dict(fast.state_dict())
    with torch.no_grad():
        assert torch.allclose(plain(lr_imgs), fast.eval()(lr_imgs), atol=1e-5)


@pytest.mark.parametrize('autocast', [False, True])
def test_fast_prelu_backward_trains_the_same_parameters_with_the_same_gradients(autocast):
    """fast_prelu_backward keeps the model's Parameters (an optimizer made before still updates
    them) and state_dict keys, and gives the same loss and gradients, in float32 and under bf16
    autocast (what train_srresnet.py runs on an AMX CPU). Every gradient but the slopes' goes
    through the input gradient, which is the same numbers as aten's; a slope's is a sum, whose
    order may differ by a rounding."""
    from models import CPUFastPReLU, fast_prelu_backward, shuffle_last_convolution
    torch.manual_seed(0)
    model = shuffle_last_convolution(SRResNet(n_channels=16, n_blocks=2)).train()
    for module in model.modules():
        if isinstance(module, nn.PReLU):  # slopes of their own, so a mix-up between them would show
            module.weight.data.uniform_(0.05, 0.5)
    fast = copy.deepcopy(model)
    parameters = list(fast.parameters())
    fast_prelu_backward(fast)
    assert all(a is b for a, b in zip(fast.parameters(), parameters))
    assert list(fast.state_dict()) == list(model.state_dict())
    # The first block's, one in each residual block, one in each of the two x2 sub-pixel blocks.
    assert sum(isinstance(module, CPUFastPReLU) for module in fast.modules()) == 1 + 2 + 2
    lr_imgs, hr_imgs = torch.randn(3, 3, 12, 12), torch.rand(3, 3, 48, 48) * 2 - 1
    losses, grads = [], []
    for net in (model, fast):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            sr_imgs = net(lr_imgs)
        loss = F.mse_loss(sr_imgs.float(), hr_imgs)
        losses.append(loss)
        grads.append(dict(zip([name for name, _ in net.named_parameters()],
                              torch.autograd.grad(loss, list(net.parameters())))))
    assert torch.equal(losses[0], losses[1])
    slopes = {name + '.weight' for name, module in model.named_modules() if isinstance(module, nn.PReLU)}
    for name, expected in grads[0].items():
        if name in slopes:
            assert torch.allclose(grads[1][name], expected, rtol=1e-2 if autocast else 1e-5), name
        else:
            assert torch.equal(grads[1][name], expected), name
    assert all(grads[1][name].abs().item() > 0 for name in slopes)


def test_fast_prelu_backward_leaves_per_channel_prelus_alone():
    from models import CPUFastPReLU, fast_prelu_backward
    model = nn.Sequential(nn.PReLU(4), nn.PReLU())
    fast_prelu_backward(model)
    assert type(model[0]) is nn.PReLU and isinstance(model[1], CPUFastPReLU)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason="the allocator setting is glibc's, on Linux")
def test_keep_freed_memory_stops_the_page_faults_of_repeated_allocations():
    """After runtime.keep_freed_memory, the large tensors of a repeated "step" reuse the memory
    the last step freed: no page faults once it has settled, where the default allocator faults
    every page in again each step. Run in fresh processes, so this one keeps glibc's defaults."""
    code = ("import resource, sys, torch, runtime\n"
            "took = runtime.keep_freed_memory() if sys.argv[1] == 'keep' else None\n"
            "def step():\n"  # a training step's large activations (MiB), allocated, filled and freed
            "    tensors = [torch.empty(size << 20, dtype=torch.uint8).fill_(1) for size in (36, 20, 36, 48)]\n"
            "for _ in range(6):\n"
            "    step()\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(2):\n"
            "    step()\n"
            "print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    faults = {}
    for mode in ('default', 'keep'):
        result = subprocess.run([sys.executable, '-c', code, mode], capture_output=True, text=True, timeout=120,
                                env=dict(os.environ, PYTHONPATH=REPO))
        assert result.returncode == 0, result.stderr
        took, faults[mode] = result.stdout.split()
        faults[mode] = int(faults[mode])
    if took != 'True':
        pytest.skip("this C library has no glibc mallopt")
    pages = 2 * (36 + 20 + 36 + 48) * 256  # 4 KiB pages allocated in the two measured steps
    assert faults['default'] > pages // 2  # glibc's default maps, faults in and unmaps them every time
    assert faults['keep'] < pages // 50
