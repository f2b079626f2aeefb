"""Tests of super_resolve.py: sizes, tiling against whole-image inference, every image mode, folders
with bad files, output names that never collide or overwrite, atomic writes, size limits checked
from the header, the comparison grid and its SRGAN label, the fast inference model against the plain
one, half precision against float32, and errors, plus utils.pil_to_rgb's reading of integer and
float images and runtime.load_sr_model's checks of a checkpoint against its weights.

Tiny random SRResNets (2 blocks, 16 channels) saved to tmp_path stand in for trained ones: a few
seconds in all on two CPU cores.

    python -m pytest -q tests/test_super_resolve.py
"""
import errno
import functools
import os
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageFont

import models
import super_resolve
import runtime
import utils
from models import SRResNet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_ARGS = {'n_blocks': 2, 'n_channels': 16, 'scaling_factor': 4}
CPU = torch.device('cpu')


def run_main(argv):
    """super_resolve.main(argv): the script's own constants are never changed, so each call starts from them."""
    return super_resolve.main(argv)


def random_model(seed=0):
    """A tiny SRResNet in eval mode whose BatchNorms hold non-trivial running statistics and
    affine parameters, so that folding them is really exercised."""
    torch.manual_seed(seed)
    model = SRResNet(**MODEL_ARGS)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.)
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def save_model(path, key='model', seed=0, config=None):
    """Save a tiny model as an SRResNet ('model') or SRGAN ('generator') checkpoint; return the path."""
    torch.save({key: random_model(seed).state_dict(), 'model_args': MODEL_ARGS, 'iteration': 0,
                'config': config or {}}, path)
    return str(path)


@pytest.fixture
def checkpoint(tmp_path):
    return save_model(tmp_path / 'srresnet.pth')


@pytest.fixture
def model(checkpoint):
    return super_resolve.load_inference_model(checkpoint, CPU)


def textured_image(width, height, seed=0):
    """A PIL RGB image with smooth structure and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = 127.5 + 100. * np.sin(x[..., None] / 3. + np.array([0., 1., 2.])) * np.cos(y[..., None] / 4.)
    return Image.fromarray(np.clip(np.round(smooth + rng.normal(0., 20., smooth.shape)), 0, 255).astype(np.uint8))


def upscale(model, img, tile_size=0, tile_overlap=0):
    return super_resolve.upscale_image(model, img, CPU, tile_size, tile_overlap)


def assert_same_image(a, b):
    assert a.mode == b.mode and a.size == b.size
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------------------------
# The model and tiled inference
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('channels_last', [True, False])
def test_inference_model_equals_the_plain_model(checkpoint, channels_last):
    plain = random_model()
    fast = super_resolve.load_inference_model(checkpoint, CPU, channels_last=channels_last)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in fast.modules())  # folded
    lr_imgs = torch.randn(2, 3, 11, 9)
    with torch.no_grad():
        torch.testing.assert_close(fast(lr_imgs), plain(lr_imgs), atol=1e-4, rtol=0)


@pytest.mark.parametrize('width, height', [(13, 7), (1, 1), (9, 16)])
def test_output_is_4x_for_odd_sizes(model, width, height):
    assert upscale(model, textured_image(width, height)).size == (4 * width, 4 * height)


@pytest.mark.parametrize('tile_size', [8, 7, 5, 64])  # divides 32 x 24; does not; does not; larger than it
def test_tiled_equals_whole_image_within_one_grey_level(model, tile_size):
    img = textured_image(32, 24)
    whole = np.asarray(upscale(model, img), dtype=int)
    tiled = np.asarray(upscale(model, img, tile_size=tile_size, tile_overlap=16), dtype=int)
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).max() <= 1


def test_tiles_without_overlap_show_seams(model):
    """The check above can fail: with no overlap, zero padding at the tile borders shows."""
    lr_img = utils.convert_image(textured_image(32, 24), 'pil', 'imagenet-norm').unsqueeze(0)  # (1, 3, 24, 32)
    whole = super_resolve.upscale_tensor(model, lr_img, 0, 0)  # (1, 3, 96, 128), in [-1, 1]
    seams = super_resolve.upscale_tensor(model, lr_img, 8, 0)
    overlapped = super_resolve.upscale_tensor(model, lr_img, 8, 16)
    assert (seams - whole).abs().max() * 127.5 > 1.  # more than a grey level
    torch.testing.assert_close(overlapped, whole, atol=1e-5, rtol=0)  # the overlap covers the receptive field


def test_default_overlap_hides_the_seams_of_the_trained_network():
    """The tiny model's receptive field fits inside the overlap; the trained 16-block SRResNet's
    (about 40 LR px) does not, so hold the default overlap against the shipped weights."""
    model = super_resolve.load_inference_model(os.path.join(REPO, super_resolve.srresnet_checkpoint), CPU)
    with Image.open(os.path.join(REPO, super_resolve.input_path)) as img:
        img = img.convert('RGB').crop((56, 24, 136, 72))  # 80 x 48, the cat's face: two tiles of 40 x 48
    whole = np.asarray(upscale(model, img), dtype=int)
    tiled = np.asarray(upscale(model, img, tile_size=48, tile_overlap=super_resolve.tile_overlap), dtype=int)
    assert np.abs(tiled - whole).max() <= 1
    seams = np.asarray(upscale(model, img, tile_size=48, tile_overlap=0), dtype=int)
    assert np.abs(seams - whole).max() > 1


@pytest.mark.parametrize('height, width, tile_size, tile_overlap', [
    (270, 854, 384, 16), (24, 32, 7, 16), (17, 75, 29, 16), (9, 13, 4, 2), (40, 300, 100, 0), (5, 6, 0, 0)])
def test_tiles_cover_the_image_once_with_their_margins_and_widths_of_multiples_of_8(height, width, tile_size,
                                                                                    tile_overlap):
    covered = np.zeros((height, width), dtype=int)
    for (top, bottom, left, right), (top_in, bottom_in, left_in, right_in) in super_resolve.tile_boxes(
            height, width, tile_size, tile_overlap):
        covered[top:bottom, left:right] += 1
        # At least tile_overlap of context on each side, where the image has it.
        assert top_in == max(top - tile_overlap, 0) and bottom_in == min(bottom + tile_overlap, height)
        assert left_in <= max(left - tile_overlap, 0) and right_in >= min(right + tile_overlap, width)
        assert 0 <= left_in and right_in <= width
        # Widened to a multiple of 8 columns by fewer than 8, or to the whole width.
        narrow = min(right + tile_overlap, width) - max(left - tile_overlap, 0)
        assert (right_in - left_in) % super_resolve.TILE_WIDTH_STEP == 0 or (left_in, right_in) == (0, width)
        assert right_in - left_in < narrow + super_resolve.TILE_WIDTH_STEP
    assert (covered == 1).all()


def test_upscale_tensor_builds_no_autograd_graph(model):
    lr_img = torch.randn(1, 3, 10, 12, requires_grad=True)
    sr_img = super_resolve.upscale_tensor(model, lr_img, 4, 2)
    assert sr_img.shape == (1, 3, 40, 48) and not sr_img.requires_grad and sr_img.grad_fn is None


# ----------------------------------------------------------------------------------------------
# Every image mode
# ----------------------------------------------------------------------------------------------

def test_greyscale_palette_and_cmyk_become_rgb(model):
    img = textured_image(10, 7)
    for converted in (img.convert('L'), img.convert('P'), img.convert('CMYK'), img.convert('1')):
        sr_img = upscale(model, converted)
        assert sr_img.mode == 'RGB' and sr_img.size == (40, 28)
        assert_same_image(sr_img, upscale(model, converted.convert('RGB')))


def test_16_bit_greyscale_is_scaled_not_clipped(model):
    grey = np.asarray(textured_image(10, 7).convert('L'))  # (7, 10) uint8
    img_16 = Image.fromarray((grey.astype(np.uint16) * 257))  # the same picture in 16 bits
    assert img_16.mode == 'I;16'
    assert_same_image(upscale(model, img_16), upscale(model, Image.fromarray(grey).convert('RGB')))


def test_rgba_keeps_its_alpha_upscaled_bicubically(model):
    img = textured_image(10, 7)
    alpha = Image.fromarray(np.linspace(0, 255, 70).reshape(7, 10).astype(np.uint8))
    rgba = img.copy()
    rgba.putalpha(alpha)
    sr_img = upscale(model, rgba)
    assert sr_img.mode == 'RGBA'
    assert_same_image(sr_img.convert('RGB'), upscale(model, img))
    assert_same_image(sr_img.getchannel('A'), alpha.resize((40, 28), Image.BICUBIC))
    # A palette image with a transparent colour keeps its transparency too.
    palette = img.convert('P')
    palette.info['transparency'] = 0
    assert upscale(model, palette).mode == 'RGBA'


def test_exif_orientation_is_applied(model, tmp_path):
    img = textured_image(12, 8)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; show the image rotated 90 degrees clockwise
    path = tmp_path / 'rotated.png'
    img.save(path, exif=exif)
    upright = img.transpose(Image.Transpose.ROTATE_270)  # 8 x 12
    opened = utils.open_image(path)
    assert_same_image(opened, upright)
    assert_same_image(upscale(model, opened), upscale(model, upright))
    with Image.open(path) as raw:  # handed an image straight from Image.open, upscale_image rotates it too
        raw.load()
        assert_same_image(upscale(model, raw), upscale(model, upright))


# ----------------------------------------------------------------------------------------------
# utils.pil_to_rgb: integer and float images, scaled by what their values can mean
# ----------------------------------------------------------------------------------------------

def grey_of(img):
    """The 8-bit grey levels utils.pil_to_rgb gives a greyscale image (its R, equal to G and B)."""
    rgb = np.asarray(utils.pil_to_rgb(img))
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    return rgb[..., 0]


def test_32_bit_integer_tiff_holding_8_bit_values_is_not_darkened(model, tmp_path):
    grey = np.asarray(textured_image(10, 7).convert('L'))  # (7, 10) uint8
    Image.fromarray(grey.astype(np.int32)).save(tmp_path / 'deep.tif')
    with Image.open(tmp_path / 'deep.tif') as img:
        img.load()
        assert img.mode == 'I'
        np.testing.assert_array_equal(grey_of(img), grey)  # not grey / 257, nearly black
        assert_same_image(upscale(model, img), upscale(model, Image.fromarray(grey).convert('RGB')))


@pytest.mark.parametrize('dtype, values, expected', [
    (np.int32, [0, 1000, 65535], [0, 4, 255]),  # 'I' reaching past 255: 16-bit samples, / 257
    (np.uint16, [0, 100, 255], [0, 0, 1]),  # 'I;16' is 16-bit even when dark, as a 16-bit viewer shows it
    (np.int32, [0, 17, 255], [0, 17, 255]),  # 'I' within 0..255: 8-bit values, as they are
    (np.int32, [-100, 0, 300], [0, 64, 255]),  # negative: stretched from min to max (100 / 400 * 255 = 63.75)
    (np.int32, [0, 70_000, 100_000], [0, 178, 255]),  # above 65535: stretched (178.5 - a hair)
    (np.float32, [0., 0.2, 1.], [0, 51, 255]),  # 'F' in [0, 1]: 1 is white
    (np.float32, [0., 2., 255.], [0, 2, 255]),  # 'F' in [0, 255]: as it is
    (np.float32, [-1., 0., 3.], [0, 64, 255]),  # 'F' out of range: stretched
    (np.float32, [np.nan, 0.25, 1.], [0, 64, 255]),  # NaN is black; the rest as in [0, 1]
    (np.int32, [7, 7, 7], [7, 7, 7]),  # a constant image in range stays itself
    (np.int32, [-5, -5, -5], [0, 0, 0]),  # a constant one out of range becomes black, not a division by 0
])
def test_integer_and_float_greyscale_are_scaled_by_their_range(dtype, values, expected):
    img = Image.fromarray(np.array([values], dtype=dtype))
    assert img.mode == {np.int32: 'I', np.uint16: 'I;16', np.float32: 'F'}[dtype]
    np.testing.assert_array_equal(grey_of(img), np.array([expected], dtype=np.uint8))


# ----------------------------------------------------------------------------------------------
# runtime.load_sr_model: the checkpoint's file and model_args are checked before building anything
# ----------------------------------------------------------------------------------------------

def save_raw_checkpoint(path, model_args, state_dict=None):
    """Save a checkpoint dict with any model_args and weights (the tiny model's by default); return the path."""
    torch.save({'model': random_model().state_dict() if state_dict is None else state_dict,
                'model_args': model_args, 'iteration': 0, 'config': {}}, path)
    return str(path)


@pytest.fixture
def no_srresnet_built(monkeypatch):
    """Make building any SRResNet fail the test: the checks must come first."""
    @functools.wraps(SRResNet)  # keeps SRResNet's signature, which load_sr_model reads
    def refuse(*args, **kwargs):
        raise AssertionError(f"an SRResNet was built with {kwargs}")
    monkeypatch.setattr(models, 'SRResNet', refuse)


@pytest.mark.parametrize('changed, mismatch', [
    ({'n_blocks': 20_000}, 'n_blocks=20000, the weights 2'),
    ({'n_channels': 64}, 'n_channels=64, the weights 16'),
    ({'scaling_factor': 2}, 'scaling_factor=2, the weights 4'),
    ({'small_kernel_size': 5}, 'small_kernel_size=5, the weights 3'),
    ({'large_kernel_size': 7}, 'large_kernel_size=7, the weights 9'),
])
def test_model_args_that_disagree_with_the_weights_are_refused_before_building(tmp_path, no_srresnet_built,
                                                                               changed, mismatch):
    path = save_raw_checkpoint(tmp_path / 'edited.pth', {**MODEL_ARGS, **changed})
    with pytest.raises(ValueError, match=f"{re.escape(path)}: model_args do not match the weights: {mismatch}"):
        runtime.load_sr_model(path)


def test_a_missing_model_args_key_is_its_default_and_checked_too(tmp_path):
    torch.manual_seed(0)
    small_kernels = SRResNet(large_kernel_size=5, n_blocks=1, n_channels=8, scaling_factor=2)
    path = save_raw_checkpoint(tmp_path / 'old.pth', {'n_blocks': 1, 'n_channels': 8, 'scaling_factor': 2},
                               small_kernels.state_dict())
    with pytest.raises(ValueError, match=r'large_kernel_size=9 \(the default: model_args lacks it\), the weights 5'):
        runtime.load_sr_model(path)
    # Keys left at their defaults that agree with the weights are fine (the tiny checkpoints rely on it).
    loaded, _ = runtime.load_sr_model(save_model(tmp_path / 'tiny.pth'))
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in random_model().parameters())


@pytest.mark.parametrize('model_args, message', [
    ({**MODEL_ARGS, 'n_block': 2}, r"unknown keys \['n_block'\]; SRResNet takes \['large_kernel_size'"),
    ({**MODEL_ARGS, 'n_blocks': '2'}, r"values must be positive ints, got \{'n_blocks': '2'\}"),
    ({**MODEL_ARGS, 'n_blocks': 2.0}, r"values must be positive ints, got \{'n_blocks': 2.0\}"),
    ({**MODEL_ARGS, 'n_channels': True}, r"values must be positive ints, got \{'n_channels': True\}"),
    ({**MODEL_ARGS, 'n_channels': -16}, r"values must be positive ints, got \{'n_channels': -16\}"),
    ([2, 16, 4], r"'model_args' must be a dict of SRResNet arguments, got a list"),
])
def test_model_args_of_unknown_keys_or_non_int_values_are_refused(tmp_path, no_srresnet_built, model_args, message):
    path = save_raw_checkpoint(tmp_path / 'odd.pth', model_args)
    with pytest.raises(ValueError, match=re.escape(path) + '.*' + message):
        runtime.load_sr_model(path)


def test_weights_that_do_not_fit_are_a_value_error_naming_the_file(tmp_path):
    state_dict = random_model().state_dict()
    cases = {'missing': {k: v for k, v in state_dict.items() if k != 'conv_block3.conv_block.0.bias'},
             'extra': {**state_dict, 'residual_blocks.0.extra': torch.ones(1)},
             'misshapen': {**state_dict, 'residual_blocks.1.conv_block1.conv_block.0.weight': torch.ones(16, 16, 5, 5)}}
    for name, weights in cases.items():
        path = save_raw_checkpoint(tmp_path / f'{name}.pth', MODEL_ARGS, weights)
        with pytest.raises(ValueError, match=re.escape(path) + ': the weights do not fit SRResNet'):
            runtime.load_sr_model(path)
    foreign = save_raw_checkpoint(tmp_path / 'foreign.pth', MODEL_ARGS, {'fc.weight': torch.ones(2, 2)})
    with pytest.raises(ValueError, match=re.escape(foreign) + r": 'model' is not an SRResNet's state_dict"):
        runtime.load_sr_model(foreign)
    # torch.save's pre-1.6 format (a pickle, not a zip) still loads.
    legacy = str(tmp_path / 'legacy.pth')
    torch.save({'model': state_dict, 'model_args': MODEL_ARGS}, legacy, _use_new_zipfile_serialization=False)
    assert isinstance(runtime.load_sr_model(legacy)[0], SRResNet)


def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path):
    cases = {'empty.pth': (b'', r'empty.pth is empty \(0 bytes\), not a checkpoint'),
             'notes.pth': (b'learning rate 1e-4, 16 blocks\n', r"notes.pth is not a PyTorch checkpoint: it holds text, "
                                                              r"starting b'learning rate"),
             'lfs.pth': (b'version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 6000000\n',
                         r'lfs.pth is a Git LFS pointer, not the checkpoint itself: fetch it with `git lfs pull`'),
             'noise.pth': (bytes(range(200, 256)), r'noise.pth is not a PyTorch checkpoint: it holds other data')}
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=message):
            runtime.load_sr_model(str(tmp_path / name))


# ----------------------------------------------------------------------------------------------
# main(): files, folders, output names, sizes, the grid, errors
# ----------------------------------------------------------------------------------------------

def png_bytes(width, height, pixels=True):
    """A valid all-black 1-bit PNG of any size, made without Pillow: a few KB even at 13000 x 13000.
    pixels=False leaves out the image data: a header Pillow can open but not decode."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    header = chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0))  # 1-bit greyscale
    rows = b'\0' * ((1 + (width + 7) // 8) * height)  # each row: filter type 0, then the packed bits
    data = chunk(b'IDAT', zlib.compress(rows, 1)) if pixels else b''
    return b'\x89PNG\r\n\x1a\n' + header + data + chunk(b'IEND', b'')


def test_folder_reports_and_skips_bad_files_and_fails_at_the_end(checkpoint, tmp_path, capsys):
    folder = tmp_path / 'inputs'
    folder.mkdir()
    textured_image(9, 6).save(folder / 'good.png')
    textured_image(5, 7).convert('L').save(folder / 'grey.jpg')
    (folder / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n' + os.urandom(200))
    png = (folder / 'good.png').read_bytes()
    (folder / 'truncated.png').write_bytes(png[:len(png) // 2])
    (folder / 'notes.txt').write_text('not an image')
    out = tmp_path / 'out'
    with pytest.raises(ValueError, match=r'2 of 5 input file\(s\) failed \(reported above\), 2 written: .*corrupt.png, '
                                         r'.*truncated.png'):
        run_main([f'--input_path={folder}', f'--output_folder={out}', f'--checkpoint={checkpoint}'])
    assert sorted(os.listdir(out)) == ['good_x4.png', 'grey_x4.png']  # the rest went on
    with Image.open(out / 'good_x4.png') as sr_img:
        assert sr_img.size == (36, 24)
    report = capsys.readouterr().out
    assert f'Failed: {folder / "corrupt.png"}: not a readable image' in report
    assert f'Failed: {folder / "truncated.png"}: not a readable image' in report
    assert 'Skipped 1 file(s) that are not images' in report and 'notes.txt' in report  # not a failure
    assert str(out / 'good_x4.png') in report  # says where each output went
    # A folder whose only non-image is a note is a success.
    (folder / 'corrupt.png').unlink()
    (folder / 'truncated.png').unlink()
    written = run_main([f'--input_path={folder}', f'--output_folder={tmp_path / "out2"}', f'--checkpoint={checkpoint}'])
    assert sorted(os.path.basename(path) for path in written) == ['good_x4.png', 'grey_x4.png']


def test_inputs_sharing_a_name_get_separate_outputs(checkpoint, tmp_path, capsys):
    folder = tmp_path / 'inputs'
    folder.mkdir()
    textured_image(9, 6, seed=1).save(folder / 'a.png')
    textured_image(9, 6, seed=2).save(folder / 'a.jpg', quality=95)
    textured_image(5, 5, seed=3).save(folder / 'b.png')
    out = tmp_path / 'out'
    written = run_main([f'--input_path={folder}', f'--output_folder={out}', f'--checkpoint={checkpoint}'])
    assert sorted(os.path.basename(path) for path in written) == ['a_jpg_x4.png', 'a_png_x4.png', 'b_x4.png']
    assert sorted(os.listdir(out)) == ['a_jpg_x4.png', 'a_png_x4.png', 'b_x4.png']
    assert (np.asarray(Image.open(out / 'a_jpg_x4.png')) != np.asarray(Image.open(out / 'a_png_x4.png'))).any()
    report = capsys.readouterr().out
    assert "a.jpg -> a_jpg_x4.png: another input is also named 'a'" in report
    assert super_resolve.output_names(['x/A.png', 'x/a.tif', 'x/c'], 'x4') == \
        {'x/A.png': 'A_png_x4.png', 'x/a.tif': 'a_tif_x4.png', 'x/c': 'c_x4.png'}  # letter case clashes too


def test_existing_files_are_never_overwritten_nor_outputs_read_again(checkpoint, tmp_path, capsys):
    folder = tmp_path / 'photos'  # the output folder is the input folder
    folder.mkdir()
    textured_image(9, 6).save(folder / 'a.png')
    textured_image(36, 24, seed=5).save(folder / 'a_x4.png')  # the user's own file, named like an output
    users_file = (folder / 'a_x4.png').read_bytes()
    args = [f'--input_path={folder}', f'--output_folder={folder}', f'--checkpoint={checkpoint}']
    assert run_main(args) == [str(folder / 'a_x4_1.png')]
    assert run_main(args) == [str(folder / 'a_x4_2.png')]  # a_x4_1.png is neither read nor overwritten
    assert sorted(os.listdir(folder)) == ['a.png', 'a_x4.png', 'a_x4_1.png', 'a_x4_2.png']
    assert (folder / 'a_x4.png').read_bytes() == users_file
    report = capsys.readouterr().out
    assert f"{folder / 'a_x4.png'} exists and is kept: wrote {folder / 'a_x4_1.png'} instead" in report
    assert "Not reading 2 file(s) named like this script's outputs as inputs: a_x4.png, a_x4_1.png" in report
    # A compare run reads neither kind of output back either.
    assert run_main(args + ['--mode=compare']) == [str(folder / 'a_compare.png')]
    assert run_main(args + ['--mode=compare']) == [str(folder / 'a_compare_1.png')]


def test_the_default_run_succeeds_twice_without_overwriting(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the defaults are paths relative to the repository
    out = tmp_path / 'outputs'
    assert run_main([f'--output_folder={out}']) == [str(out / 'chelsea_x4.png')]
    assert run_main([f'--output_folder={out}']) == [str(out / 'chelsea_x4_1.png')]
    assert f'Wrote {out / "chelsea_x4_1.png"} (768x512, from 192x128)' in capsys.readouterr().out
    assert_same_image(Image.open(out / 'chelsea_x4.png'), Image.open(out / 'chelsea_x4_1.png'))


def test_a_failed_write_leaves_no_truncated_png(checkpoint, tmp_path, monkeypatch, capsys):
    def save_until_the_disk_is_full(img, fp, format=None, **params):
        partial = b'\x89PNG\r\n\x1a\n' + b'\0' * 100
        if isinstance(fp, (str, os.PathLike)):
            with open(fp, 'wb') as f:
                f.write(partial)
        else:
            fp.write(partial)
        raise OSError(errno.ENOSPC, 'No space left on device')
    img_path = tmp_path / 'photo.png'
    textured_image(9, 6).save(img_path)
    out = tmp_path / 'out'
    monkeypatch.setattr(Image.Image, 'save', save_until_the_disk_is_full)
    with pytest.raises(ValueError, match='1 of 1 input file'):
        run_main([f'--input_path={img_path}', f'--output_folder={out}', f'--checkpoint={checkpoint}'])
    assert os.listdir(out) == []  # neither a torn photo_x4.png nor a temporary file
    # The file is named: a folder run reports it and goes on with the others.
    assert f"Failed: cannot write or read {out / 'photo_x4.png'}: No space left on device" in capsys.readouterr().out


def test_huge_images_are_refused_from_their_header_and_the_others_go_on(checkpoint, tmp_path, monkeypatch, capsys):
    folder = tmp_path / 'inputs'
    folder.mkdir()
    (folder / 'huge.png').write_bytes(png_bytes(13000, 13000))  # valid, about 20 KB; 169 megapixels
    (folder / 'bomb.png').write_bytes(png_bytes(20000, 20000, pixels=False))  # over Pillow's own limit
    textured_image(9, 6).save(folder / 'small.png')
    load = ImageFile.ImageFile.load

    def load_small_only(img):
        assert max(img.size) < 10000, f'a {img.size} image was decoded'
        return load(img)
    monkeypatch.setattr(ImageFile.ImageFile, 'load', load_small_only)
    out = tmp_path / 'out'
    with pytest.raises(ValueError, match=r'2 of 3 input file\(s\) failed.*bomb.png, .*huge.png'):
        run_main([f'--input_path={folder}', f'--output_folder={out}', f'--checkpoint={checkpoint}'])
    assert os.listdir(out) == ['small_x4.png']
    report = capsys.readouterr().out
    assert (f"Failed: {folder / 'huge.png'}: 13000x13000 px would make a 52000x52000 upscale output (2,704 megapixels, "
            f"about 60.8 GB of memory)") in report
    assert 'over max_output_megapixels=64' in report
    assert f"Failed: {folder / 'bomb.png'}: refused by Pillow's guard against decompression bombs" in report


def test_the_output_size_limit_can_be_set(checkpoint, tmp_path, capsys):
    for width, height in ((250, 250), (260, 250)):
        textured_image(width, height).save(tmp_path / f'{width}.png')
    args = [f'--output_folder={tmp_path / "out"}', f'--checkpoint={checkpoint}', '--max_output_megapixels=1']
    assert run_main([f'--input_path={tmp_path / "250.png"}'] + args) == [str(tmp_path / 'out' / '250_x4.png')]  # 1.0 MP
    with pytest.raises(ValueError, match=r'1 of 1 input file\(s\) failed'):
        run_main([f'--input_path={tmp_path / "260.png"}'] + args)
    assert '260x250 px would make a 1040x1000 upscale output' in capsys.readouterr().out
    # The compare grid holds four panels of the image (halved first with --halve).
    assert 'compare output' in super_resolve.size_problem(5000, 5000, 'compare', False, 4, 64)  # 10000 x 10000
    assert super_resolve.size_problem(5000, 5000, 'compare', True, 4, 64) == ''  # 5000 x 5000


def test_compare_reports_a_tiny_image_and_goes_on(checkpoint, tmp_path, capsys):
    folder = tmp_path / 'inputs'
    folder.mkdir()
    textured_image(3, 2).save(folder / 'a_tiny.png')  # sorted first: it must not stop the others
    textured_image(20, 16).save(folder / 'b_photo.png')
    out = tmp_path / 'out'
    with pytest.raises(ValueError, match=r'1 of 2 input file\(s\) failed \(reported above\), 1 written: .*a_tiny.png'):
        run_main([f'--input_path={folder}', f'--output_folder={out}', f'--checkpoint={checkpoint}', '--mode=compare'])
    assert os.listdir(out) == ['b_photo_compare.png']
    lines = [line for line in capsys.readouterr().out.splitlines() if 'a_tiny.png' in line]
    assert lines == [f"Failed: {folder / 'a_tiny.png'}: 3x2 px is too small to compare: "
                     f"each side must be at least 4 px"]


def test_compare_grid_is_written_with_and_without_srgan(checkpoint, tmp_path):
    srgan_checkpoint = save_model(tmp_path / 'srgan.pth', key='generator', seed=1)
    img_path = tmp_path / 'photo.png'
    textured_image(50, 35).save(img_path)
    grids = {}
    for name, extra in [('with', [f'--srgan_checkpoint={srgan_checkpoint}']), ('without', ['--srgan_checkpoint='])]:
        out = tmp_path / name
        written = run_main([f'--input_path={img_path}', f'--output_folder={out}', '--mode=compare',
                            f'--checkpoint={checkpoint}'] + extra)
        assert written == [str(out / 'photo_compare.png')]
        grids[name] = np.asarray(Image.open(written[0]).convert('RGB'))
    assert grids['with'].shape == grids['without'].shape
    assert grids['with'].shape[0] > 2 * 32 and grids['with'].shape[1] > 2 * 48  # four 48 x 32 panels and labels
    assert (grids['with'] != grids['without']).any()  # the SRGAN panel against the note


def test_the_srgan_panel_is_labelled_with_its_content_loss(checkpoint, model, tmp_path, capsys):
    assert super_resolve.srgan_label({'config': {}}) == 'SRGAN-VGG54'  # the paper's default
    assert super_resolve.srgan_label({}) == 'SRGAN-VGG54'
    assert super_resolve.srgan_label({'config': {'content_loss': 'vgg22'}}) == 'SRGAN-VGG22'
    srgan_checkpoint = save_model(tmp_path / 'srgan.pth', key='generator', seed=1, config={'content_loss': 'mse'})
    img_path = tmp_path / 'photo.png'
    textured_image(50, 35).save(img_path)
    run_main([f'--input_path={img_path}', f'--output_folder={tmp_path}', '--mode=compare',
              f'--checkpoint={checkpoint}', f'--srgan_checkpoint={srgan_checkpoint}'])
    assert f'SRGAN-MSE, {srgan_checkpoint}' in capsys.readouterr().out
    # The label is drawn: the grids differ only in the band above the bottom-left panel.
    img = textured_image(120, 80)
    plain = np.asarray(super_resolve.visualize_sr(img, model, model))
    labelled = np.asarray(super_resolve.visualize_sr(img, model, model, srgan_name='SRGAN-MSE'))
    rows, cols = np.nonzero((plain != labelled).any(axis=2))
    height, width = plain.shape[:2]
    assert len(rows) and cols.max() < width // 2  # the left column
    assert height // 2 - 30 < rows.min() and rows.max() < height - 80  # below the top panels, above the bottom one


def test_a_model_trained_on_realistic_degradations_is_named_so():
    assert super_resolve.model_label({'model': {}, 'config': {}}) == 'SRResNet'
    assert super_resolve.model_label({'model': {}, 'config': {'degradation': 'realistic'}}) == 'SRResNet-real'
    assert super_resolve.model_label({'generator': {}, 'config': {'degradation': 'realistic',
                                                                  'content_loss': 'mse'}}) == 'SRGAN-MSE-real'
    with pytest.raises(ValueError, match=r"odd.pth: config degradation is 'jpeg'"):
        super_resolve.model_label({'model': {}, 'config': {'degradation': 'jpeg'}}, 'odd.pth')


def test_compare_real_puts_each_model_beside_bicubic_without_shrinking(checkpoint, model, tmp_path, capsys):
    real_checkpoint = save_model(tmp_path / 'real.pth', seed=1, config={'degradation': 'realistic'})
    img_path = tmp_path / 'photo.png'
    textured_image(30, 20).save(img_path)
    written = run_main([f'--input_path={img_path}', f'--output_folder={tmp_path / "out"}', '--mode=compare_real',
                        f'--checkpoint={checkpoint}', f'--second_checkpoint={real_checkpoint}', '--precision=fp32'])
    assert written == [str(tmp_path / 'out' / 'photo_compare.png')]
    assert f'SRResNet-real, {real_checkpoint}' in capsys.readouterr().out
    grid = np.asarray(Image.open(written[0]).convert('RGB'))
    assert grid.shape[1] > 3 * 120 and 80 < grid.shape[0] < 2 * 80  # three 120 x 80 panels in one row
    # The middle panel is the first model's upscale of the photo itself, not of a shrunk copy.
    real = super_resolve.load_inference_model(real_checkpoint, CPU)
    img = Image.open(img_path).convert('RGB')
    direct = super_resolve.visualize_real(img, [('SRResNet', model), ('SRResNet-real', real)])
    assert np.array_equal(np.asarray(direct), grid)
    upscaled = np.asarray(super_resolve.upscale_image(model, img, CPU, 384, 16))  # (80, 120, 3)
    found = [(y, x) for y in range(grid.shape[0] - 79) for x in range(grid.shape[1] - 119)
             if np.array_equal(grid[y:y + 80, x:x + 120], upscaled)]
    assert len(found) == 1


def test_compare_grid_needs_no_installed_font(model, monkeypatch):
    truetype = ImageFont.truetype

    def no_installed_fonts(font, *args, **kwargs):  # fonts looked up by name are not there
        if isinstance(font, str):
            raise OSError(f'cannot open resource {font}')
        return truetype(font, *args, **kwargs)
    monkeypatch.setattr(ImageFont, 'truetype', no_installed_fonts)
    grid = super_resolve.visualize_sr(textured_image(50, 35), model, halve=True)  # Pillow's bundled font
    assert grid.width > 2 * 24 and grid.height > 2 * 16
    # Pillow without FreeType has only its bitmap font, and no font.getsize in Pillow >= 10.
    bitmap_font = getattr(ImageFont, 'load_default_imagefont', ImageFont.load_default)()
    monkeypatch.setattr(utils, 'grid_font', lambda size: bitmap_font)
    grid = super_resolve.visualize_sr(textured_image(50, 35), model)
    assert grid.width > 2 * 48 and grid.height > 2 * 32


def test_compare_panels_hold_the_right_images(model, tmp_path):
    """The bottom-right panel of the grid is the original (cropped to divide by 4)."""
    img = textured_image(50, 35)  # cropped to 48 x 32
    grid = np.asarray(super_resolve.visualize_sr(img, model))
    hr = np.asarray(img.crop((1, 1, 49, 33)))
    found = [(y, x) for y in range(grid.shape[0] - 31) for x in range(grid.shape[1] - 47)
             if (grid[y, x] == hr[0, 0]).all() and (grid[y:y + 32, x:x + 48] == hr).all()]
    assert len(found) == 1 and found[0][0] > grid.shape[0] // 2 and found[0][1] > grid.shape[1] // 2


def test_clear_errors_for_bad_settings_inputs_and_checkpoints(checkpoint, tmp_path):
    img_path = tmp_path / 'photo.png'
    textured_image(8, 8).save(img_path)
    missing = str(tmp_path / 'nowhere.png')
    with pytest.raises(FileNotFoundError, match='input not found.*nowhere.png'):
        run_main([f'--input_path={missing}', f'--checkpoint={checkpoint}'])
    with pytest.raises(ValueError, match="mode must be 'upscale', 'compare', 'compare_real' or 'sweep', got 'zoom'"):
        run_main([f'--input_path={img_path}', '--mode=zoom'])
    missing_checkpoint = str(tmp_path / 'no_model.pth')
    with pytest.raises(FileNotFoundError, match='(?s)no_model.pth.*train_srresnet.py'):
        run_main([f'--input_path={img_path}', f'--checkpoint={missing_checkpoint}'])
    with pytest.raises(FileNotFoundError, match='(?s)no_model.pth.*train_srgan.py'):
        run_main([f'--input_path={img_path}', '--model=srgan', f'--checkpoint={missing_checkpoint}'])
    # An SRResNet checkpoint where an SRGAN one is expected, and files that are no checkpoint at all.
    with pytest.raises(ValueError, match='srresnet.pth is not an? SRGAN checkpoint'):
        run_main([f'--input_path={img_path}', '--model=srgan', f'--checkpoint={checkpoint}'])
    not_a_checkpoint = tmp_path / 'weights.pth'
    torch.save({'weights': torch.ones(3)}, not_a_checkpoint)
    with pytest.raises(ValueError, match='weights.pth is not an? SRResNet checkpoint'):
        run_main([f'--input_path={img_path}', f'--checkpoint={not_a_checkpoint}'])
    (tmp_path / 'empty.pth').write_bytes(b'')
    with pytest.raises(ValueError, match=r'empty.pth is empty \(0 bytes\), not a checkpoint'):
        run_main([f'--input_path={img_path}', f'--checkpoint={tmp_path / "empty.pth"}'])
    (tmp_path / 'readme.pth').write_text('see the README')
    with pytest.raises(ValueError, match='readme.pth is not a PyTorch checkpoint: it holds text'):
        run_main([f'--input_path={img_path}', f'--checkpoint={tmp_path / "readme.pth"}'])
    with pytest.raises(ValueError, match="output_folder '.*photo.png' is a file, not a folder"):
        run_main([f'--input_path={img_path}', f'--output_folder={img_path}', f'--checkpoint={checkpoint}'])
    not_an_image = tmp_path / 'photo.txt'
    not_an_image.write_text('hello')
    with pytest.raises(ValueError, match='no image was written'):
        run_main([f'--input_path={not_an_image}', f'--checkpoint={checkpoint}'])


def test_errors_print_one_line_and_exit_with_status_1(checkpoint, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, 'super_resolve.py', f'--checkpoint={checkpoint}', *args], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    missing = run(f'--input_path={tmp_path / "nowhere.png"}')
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == [f"super_resolve.py: error: input not found: '{tmp_path / 'nowhere.png'}'"]
    img_path = tmp_path / 'photo.png'
    textured_image(8, 8).save(img_path)
    (tmp_path / 'a_file').write_text('in the way')
    blocked = run(f'--input_path={img_path}', f'--output_folder={tmp_path / "a_file" / "sr"}')
    assert blocked.returncode == 1
    assert blocked.stderr.splitlines() == [f"super_resolve.py: error: cannot write or read "
                                           f"{tmp_path / 'a_file' / 'sr'}: Not a directory (--output_folder)"]
    folder = tmp_path / 'inputs'
    folder.mkdir()
    textured_image(2, 2).save(folder / 'tiny.png')
    textured_image(20, 16).save(folder / 'photo.png')
    partly = run(f'--input_path={folder}', f'--output_folder={tmp_path / "grids"}', '--mode=compare')
    assert partly.returncode == 1 and os.listdir(tmp_path / 'grids') == ['photo_compare.png']
    assert partly.stderr.splitlines()[-1].startswith('super_resolve.py: error: 1 of 2 input file(s) failed')
    assert 'Traceback' not in missing.stderr + blocked.stderr + partly.stderr


def test_with_no_arguments_it_upscales_the_example(tmp_path):
    example = os.path.join(REPO, super_resolve.input_path)
    with Image.open(example) as img:
        example_size = img.size
    assert max(example_size) <= 256  # small enough to upscale in seconds in CI
    result = subprocess.run([sys.executable, 'super_resolve.py', f'--output_folder={tmp_path}'], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr  # with the shipped checkpoint
    out_path = tmp_path / (os.path.splitext(os.path.basename(example))[0] + '_x4.png')
    assert str(out_path) in result.stdout + result.stderr
    with Image.open(out_path) as sr_img:
        assert sr_img.size == (4 * example_size[0], 4 * example_size[1])


# ----------------------------------------------------------------------------------------------
# Precision
# ----------------------------------------------------------------------------------------------

def test_auto_precision_is_fp16_on_cuda_bf16_on_a_cpu_with_bf16_arithmetic_and_fp32_elsewhere(monkeypatch):
    for has_bf16, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(runtime, 'cpu_has_bf16_arithmetic', lambda: has_bf16)
        assert runtime.inference_dtype(CPU, 'auto') == expected
        assert runtime.inference_dtype(torch.device('cuda'), 'auto') == torch.float16  # no GPU needed to ask
        assert runtime.inference_dtype(torch.device('mps'), 'auto') == torch.float32
    for name, dtype in (('fp32', torch.float32), ('bf16', torch.bfloat16), ('fp16', torch.float16)):
        assert runtime.inference_dtype(CPU, name) == dtype
    with pytest.raises(ValueError, match="precision must be 'auto', 'fp32', 'bf16' or 'fp16', got 'fp8'"):
        runtime.inference_dtype(CPU, 'fp8')


@pytest.mark.parametrize('precision', ['bf16', 'fp16'])
def test_half_precision_on_the_cpu_stays_within_the_documented_difference(precision):
    """The shipped SRResNet on the bundled example, shrunk 4x as eval.py does: in half precision its
    PSNR moves by at most the 0.02 dB that precision='auto' may cost, and its pixels by at most the
    9 grey levels measured on Set14, under a quarter of one on average. The difference is not zero:
    the model really computed in half precision."""
    with Image.open(os.path.join(REPO, 'examples', 'chelsea.png')) as img:
        lr_img, hr_img = utils.ImageTransforms('test', 0, 4, '[0, 1]', '[0, 1]')(img.convert('RGB'))
    lr_pil, hr_pil = (utils.convert_image(x, source='[0, 1]', target='pil') for x in (lr_img, hr_img))
    outputs, psnrs = {}, {}
    for name in ('fp32', precision):
        model = super_resolve.load_inference_model(os.path.join(REPO, super_resolve.srresnet_checkpoint), CPU,
                                                   dtype=runtime.inference_dtype(CPU, name))
        assert {parameter.dtype for parameter in model.parameters()} == {runtime.PRECISIONS[name]}
        sr_pil = upscale(model, lr_pil, tile_size=super_resolve.tile_size, tile_overlap=super_resolve.tile_overlap)
        outputs[name] = np.asarray(sr_pil, dtype=int)
        psnrs[name] = utils.compute_psnr_ssim(sr_pil, hr_pil, crop_border=4)[0]
    difference = np.abs(outputs[precision] - outputs['fp32'])
    assert abs(psnrs[precision] - psnrs['fp32']) <= 0.02
    assert 0 < difference.mean() < 0.25 and difference.max() <= 9


def test_half_precision_outputs_are_rounded_from_float32(checkpoint):
    """The network computes in bf16, but its output is mapped to 8 bits in float32: the same image as
    rounding the bf16 output's exact float32 value (bf16 arithmetic there would move some pixels)."""
    model = super_resolve.load_inference_model(checkpoint, CPU, dtype=torch.bfloat16)
    img = textured_image(40, 70)  # 280 output rows: two of _to_pil's bands
    sr_img = super_resolve.upscale_tensor(model, utils.convert_image(img, 'pil', 'imagenet-norm')[None], 0, 0)
    assert sr_img.dtype == torch.bfloat16
    expected = utils.convert_image(sr_img[0].float(), source='[-1, 1]', target='pil')
    assert_same_image(upscale(model, img), expected)


def test_the_precision_setting_reaches_the_model(checkpoint, tmp_path, capsys):
    img_path = tmp_path / 'photo.png'
    textured_image(12, 10).save(img_path)
    outputs = {}
    for name in ('fp32', 'bf16'):
        [path] = run_main([f'--input_path={img_path}', f'--output_folder={tmp_path / name}',
                           f'--checkpoint={checkpoint}', f'--precision={name}'])
        assert f'Device: cpu, precision {name}' in capsys.readouterr().out
        outputs[name] = np.asarray(Image.open(path), dtype=int)
    assert 0 < np.abs(outputs['bf16'] - outputs['fp32']).max() <= 9
    with pytest.raises(ValueError, match="precision must be"):
        run_main([f'--input_path={img_path}', f'--output_folder={tmp_path / "never"}', '--precision=half'])
    assert not (tmp_path / 'never').exists()  # refused before anything was written
