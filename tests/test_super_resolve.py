"""Tests of super_resolve.py: sizes, tiling against whole-image inference, every image mode, folders
with bad files, the comparison grid, the fast inference model against the plain one, and errors.

Tiny random SRResNets (2 blocks, 16 channels) saved to tmp_path stand in for trained ones: a few
seconds in all on two CPU cores.

    python -m pytest -q tests/test_super_resolve.py
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

import super_resolve
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


def save_model(path, key='model', seed=0):
    """Save a tiny model as an SRResNet ('model') or SRGAN ('generator') checkpoint; return the path."""
    torch.save({key: random_model(seed).state_dict(), 'model_args': MODEL_ARGS, 'iteration': 0, 'config': {}}, path)
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
    model = super_resolve.load_inference_model(os.path.join(REPO, super_resolve.checkpoint), CPU)
    with Image.open(os.path.join(REPO, super_resolve.input_path)) as img:
        img = img.convert('RGB').crop((56, 24, 136, 72))  # 80 x 48, the cat's face: two tiles of 40 x 48
    whole = np.asarray(upscale(model, img), dtype=int)
    tiled = np.asarray(upscale(model, img, tile_size=48, tile_overlap=super_resolve.tile_overlap), dtype=int)
    assert np.abs(tiled - whole).max() <= 1
    seams = np.asarray(upscale(model, img, tile_size=48, tile_overlap=0), dtype=int)
    assert np.abs(seams - whole).max() > 1


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
    opened = super_resolve.open_image(path)
    assert_same_image(opened, upright)
    assert_same_image(upscale(model, opened), upscale(model, upright))
    with Image.open(path) as raw:  # handed an image straight from Image.open, upscale_image rotates it too
        raw.load()
        assert_same_image(upscale(model, raw), upscale(model, upright))


# ----------------------------------------------------------------------------------------------
# main(): files, folders, the grid, errors
# ----------------------------------------------------------------------------------------------

def test_folder_skips_and_reports_files_that_are_not_images(checkpoint, tmp_path, capsys):
    folder = tmp_path / 'inputs'
    folder.mkdir()
    textured_image(9, 6).save(folder / 'good.png')
    textured_image(5, 7).convert('L').save(folder / 'grey.jpg')
    (folder / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n' + os.urandom(200))
    (folder / 'notes.txt').write_text('not an image')
    out = tmp_path / 'out'
    written = run_main([f'--input_path={folder}', f'--output_folder={out}', f'--checkpoint={checkpoint}'])
    assert sorted(os.path.basename(path) for path in written) == ['good_x4.png', 'grey_x4.png']
    assert sorted(os.listdir(out)) == ['good_x4.png', 'grey_x4.png']
    with Image.open(out / 'good_x4.png') as sr_img:
        assert sr_img.size == (36, 24)
    printed = capsys.readouterr()
    report = printed.out + printed.err
    assert 'corrupt.png' in report and 'notes.txt' in report and 'Skipped 2' in report
    assert str(out / 'good_x4.png') in report  # says where each output went


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
    monkeypatch.setattr(super_resolve, '_font', lambda size: bitmap_font)
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


def test_clear_errors_for_missing_input_and_checkpoints(checkpoint, tmp_path):
    img_path = tmp_path / 'photo.png'
    textured_image(8, 8).save(img_path)
    missing = str(tmp_path / 'nowhere.png')
    with pytest.raises(SystemExit, match='input not found.*nowhere.png'):
        run_main([f'--input_path={missing}', f'--checkpoint={checkpoint}'])
    missing_checkpoint = str(tmp_path / 'no_model.pth')
    with pytest.raises(SystemExit, match='(?s)no_model.pth.*train_srresnet.py'):
        run_main([f'--input_path={img_path}', f'--checkpoint={missing_checkpoint}'])
    with pytest.raises(SystemExit, match='(?s)no_model.pth.*train_srgan.py'):
        run_main([f'--input_path={img_path}', '--model=srgan', f'--checkpoint={missing_checkpoint}'])
    # An SRResNet checkpoint where an SRGAN one is expected, and something that is no checkpoint at all.
    with pytest.raises(SystemExit, match='srresnet.pth is not an? SRGAN checkpoint'):
        run_main([f'--input_path={img_path}', '--model=srgan', f'--checkpoint={checkpoint}'])
    not_a_checkpoint = tmp_path / 'weights.pth'
    torch.save({'weights': torch.ones(3)}, not_a_checkpoint)
    with pytest.raises(SystemExit, match='weights.pth is not an? SRResNet checkpoint'):
        run_main([f'--input_path={img_path}', f'--checkpoint={not_a_checkpoint}'])
    not_an_image = tmp_path / 'photo.txt'
    not_an_image.write_text('hello')
    with pytest.raises(SystemExit, match='no image was written'):
        run_main([f'--input_path={not_an_image}', f'--checkpoint={checkpoint}'])


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
