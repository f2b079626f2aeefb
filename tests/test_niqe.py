"""Tests of utils.niqe, the no-reference quality score, and of the pieces it is built from.

Held against MATLAB's published value on Set14's baboon.png (when the benchmark images are
beside the repository; they are not committed), against MATLAB's imresize worked out by hand,
against samples drawn from a known generalized Gaussian, and against what NIQE is for: a blurred
photo scores worse than the sharp one. A few seconds on a CPU.

    python -m pytest -q tests/test_niqe.py
"""
import os

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy import stats
from skimage import data as skimage_data

import utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BABOON = os.path.join(REPO, '..', 'shared', 'data', 'benchmarks', 'Set14', 'baboon.png')
# MATLAB R2021a on baboon.png with the LIVE release's model, Y channel, no border crop, as
# reported in XPixelGroup/BasicSR's basicsr/metrics/niqe.py (its own value: 5.7295763).
MATLAB_BABOON_NIQE = 5.72957338


def test_baboon_matches_matlab():
    if not os.path.isfile(BABOON):
        pytest.skip(f"Set14's baboon.png is not at {os.path.normpath(BABOON)} (benchmark images are not "
                    f"part of the repository)")
    assert utils.niqe(Image.open(BABOON)) == pytest.approx(MATLAB_BABOON_NIQE, abs=1e-4)


def test_an_image_without_a_whole_block_is_a_clear_error():
    with pytest.raises(ValueError, match=r'at least one 96x96 block, but the image is 120x90'):
        utils.niqe(Image.new('RGB', (120, 90)))
    # 100 px fit a block, but not once 4 px are cropped from each side.
    with pytest.raises(ValueError, match=r'100x100, 92x92 after cropping 4 px'):
        utils.niqe(Image.new('RGB', (100, 100)), crop_border=4)
    with pytest.raises(ValueError, match=r'2-D grey array'):
        utils.niqe(np.zeros((100, 100, 3)))


def test_imresize_is_matlabs_not_pillows():
    # MATLAB's imresize(x, 0.5) is Keys' cubic stretched 2x (antialiasing): at the 8 taps around an
    # output centre, 0.5 * cubic(d / 2) for d = 3.5, 2.5, ..., -3.5, which is (-3, -9, 29, 111,
    # 111, 29, -9, -3) / 256; beyond the edges it reads the mirror image, edge pixel repeated. On
    # the column 1..8 the first output reads 3 2 1 | 1 2 3 4 5 and is 371 / 256, and so on by hand:
    # MATLAB prints imresize((1:8)', 0.5) as 1.4492, 3.4883, 5.5117, 7.5508.
    ramp = np.arange(1., 9.)[:, None]  # (8, 1)
    expected = np.array([371., 893., 1411., 1933.]) / 256.
    np.testing.assert_allclose(utils._imresize_matlab(ramp, 0.5)[:, 0], expected, rtol=0, atol=1e-12)
    # Separable: an outer product shrinks to the outer product of the shrunk factors.
    np.testing.assert_allclose(utils._imresize_matlab(ramp @ ramp.T, 0.5), np.outer(expected, expected), atol=1e-12)
    # Output sizes round up, as MATLAB's ceil(scale * size); a constant stays exactly constant.
    np.testing.assert_allclose(utils._imresize_matlab(np.full((7, 9), 42.), 0.5), np.full((4, 5), 42.), atol=1e-12)
    # Pillow's bicubic (a = -0.5 too, but not mirrored at the edges) gives another first value.
    pillow = Image.fromarray(np.arange(1., 9.)[:, None].astype(np.float32), mode='F').resize((1, 4), Image.BICUBIC)
    assert abs(np.asarray(pillow)[0, 0] - 371. / 256.) > 1e-3


@pytest.mark.parametrize('shape', [0.6, 1.0, 2.0, 3.5])
def test_aggd_fit_recovers_a_known_distribution(shape):
    rng = np.random.default_rng(0)
    beta_left, beta_right = 0.5, 1.5
    # 10^5 samples a row, so that the moment estimates' own spread stays within the tolerances.
    magnitudes = np.abs(stats.gennorm.rvs(shape, size=(2, 100_000), random_state=rng))  # |x|, scale 1
    # An AGGD is negative with probability beta_left / (beta_left + beta_right), scaled on each side.
    negative = rng.random(magnitudes.shape) < beta_left / (beta_left + beta_right)
    samples = np.where(negative, -beta_left * magnitudes, beta_right * magnitudes)  # (2, 100000)
    alpha, left, right = utils._fit_aggd(samples)
    np.testing.assert_allclose(alpha, shape, rtol=0.04)
    np.testing.assert_allclose(left, beta_left, rtol=0.07)
    np.testing.assert_allclose(right, beta_right, rtol=0.07)


def test_blur_and_bicubic_upscaling_score_worse_than_the_sharp_photo():
    sharp = Image.fromarray(skimage_data.astronaut())  # 512x512 RGB, CC0
    blurred = sharp.filter(ImageFilter.GaussianBlur(2))
    upscaled = sharp.resize((128, 128), Image.BICUBIC).resize((512, 512), Image.BICUBIC)
    score = utils.niqe(sharp)
    assert 2. < score < 8.  # a sharp photo scores a few units
    assert utils.niqe(blurred) > score + 2. and utils.niqe(upscaled) > score + 2.


def test_grey_rgb_and_array_inputs_agree():
    grey = Image.fromarray(skimage_data.camera()).resize((256, 200))  # mode 'L'
    score = utils.niqe(grey, crop_border=4)
    assert utils.niqe(grey.convert('RGB'), crop_border=4) == score  # R = G = B: the same luma
    # A 2-D array is taken as the grey levels themselves: the image's rounded BT.601 luma here.
    luma = np.round(16. + np.asarray(grey, dtype=np.float64) * 219. / 255.)  # (200, 256), in [16, 235]
    assert utils.niqe(luma, crop_border=4) == pytest.approx(score, abs=1e-12)


def test_a_single_block_gives_a_finite_score():
    img = Image.fromarray(skimage_data.astronaut()[200:296, 200:296])  # exactly 96x96
    assert np.isfinite(utils.niqe(img))
