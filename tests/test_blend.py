"""Tests of the blends (runtime.Blend: network interpolation of four corner checkpoints) and of
denoise='auto' (the ladder of damage, the JPEG reading, the damage classifier), through
super_resolve.py, eval.py and export_onnx.py.

Tiny random SRResNets (2 blocks, 16 channels) and a tiny random DamageNet stand in for the
shipped files; tests/test_shipped_model.py holds the shipped ones to their promises.

    python -m pytest -q tests/test_blend.py
"""
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import degradations
import eval as evaluate
import export_onnx
import runtime
import super_resolve
import utils
from models import DamageNet, SRResNet
from test_super_resolve import MODEL_ARGS, save_model, textured_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORNER_KEYS = ('model', 'model', 'generator', 'generator')  # two SRResNets, two SRGAN generators


@pytest.fixture
def corners(tmp_path):
    """Four tiny corner checkpoints of one shape, each with its own random weights and BatchNorm statistics."""
    return [save_model(tmp_path / f'corner{i}.pth', key=key, seed=10 + i) for i, key in enumerate(CORNER_KEYS)]


def save_damage_model(path, level_denoise=(0., 0.25, 0.5, 1., 0.75), power=1., seed=0):
    """A random DamageNet saved as fit_denoise.py saves one; return the path."""
    torch.manual_seed(seed)
    model = DamageNet(len(degradations.LADDER_LEVELS), n_channels=4)
    torch.save({'model': model.state_dict(), 'model_args': {'n_levels': 5, 'n_channels': 4},
                'levels': list(degradations.LADDER_LEVELS), 'level_denoise': list(level_denoise), 'power': power,
                'config': {}}, path)
    return str(path)


def corner_args(corners):
    return [f'--srresnet_checkpoint={corners[0]}', f'--srresnet_real_checkpoint={corners[1]}',
            f'--srgan_checkpoint={corners[2]}', f'--srgan_real_checkpoint={corners[3]}']


# ----------------------------------------------------------------------------------------------
# runtime.Blend
# ----------------------------------------------------------------------------------------------

def test_each_corner_equals_its_own_file_exactly(corners):
    blend = runtime.Blend(corners)
    lr_imgs = torch.rand(1, 3, 12, 10)
    for path, (denoise, texture) in zip(corners, runtime.CORNERS):
        own, _ = runtime.load_sr_model(path)
        blended = blend.model(denoise, texture)
        for name, tensor in own.state_dict().items():
            assert torch.equal(blended.state_dict()[name], tensor), name
        with torch.inference_mode():
            assert torch.equal(blended(lr_imgs), own(lr_imgs))


@pytest.mark.parametrize('denoise, texture', [(0.5, 0.), (0.3, 0.7), (0.25, 1.)])
def test_a_blend_is_the_bilinear_mix_of_every_weight_and_statistic(corners, denoise, texture):
    states = [runtime.load_sr_model(path)[0].state_dict() for path in corners]
    blended = runtime.Blend(corners).model(denoise, texture).state_dict()
    weights = [(1 - denoise) * (1 - texture), denoise * (1 - texture), (1 - denoise) * texture, denoise * texture]
    assert sum(runtime.corner_weights(denoise, texture)) == pytest.approx(1.)
    assert runtime.corner_weights(denoise, texture) == pytest.approx(weights)
    for name, tensor in blended.items():
        if tensor.is_floating_point():  # running_mean and running_var included
            expected = sum(w * state[name].double() for w, state in zip(weights, states))
            assert torch.allclose(tensor.double(), expected, atol=1e-6), name
    assert any('running_var' in name for name in blended)


def test_corners_of_another_shape_or_not_generators_are_refused_naming_the_file(corners, tmp_path):
    other_args = dict(MODEL_ARGS, n_blocks=3)
    torch.manual_seed(0)
    other = tmp_path / 'other.pth'
    torch.save({'model': SRResNet(**other_args).state_dict(), 'model_args': other_args}, other)
    with pytest.raises(ValueError, match=r'other.pth: model_args .* differ from .*corner0.pth'):
        runtime.Blend([corners[0], str(other), corners[2], corners[3]])
    notes = tmp_path / 'notes.pth'
    torch.save({'weights': torch.ones(2)}, notes)
    with pytest.raises(ValueError, match=r'notes.pth'):
        runtime.Blend([corners[0], str(notes), corners[2], corners[3]])


def test_only_the_corners_a_blend_weighs_are_read(corners):
    blend = runtime.Blend([corners[0], corners[1], 'missing.pth', 'missing.pth'], needed=(True, True, False, False))
    blend.model(0.4, 0.)
    with pytest.raises(ValueError, match='missing.pth'):
        blend.model(0.4, 0.5)


# ----------------------------------------------------------------------------------------------
# super_resolve.py
# ----------------------------------------------------------------------------------------------

def test_fixed_blends_reach_the_output(corners, tmp_path, capsys):
    img_path = tmp_path / 'photo.png'
    textured_image(20, 16, seed=1).save(img_path)
    outputs = {}
    for denoise, texture in ((0., 0.), (1., 1.), (0.5, 0.3)):
        out = tmp_path / f'out_{denoise}_{texture}'
        super_resolve.main([f'--input_path={img_path}', f'--output_folder={out}', f'--denoise={denoise}',
                            f'--texture={texture}', '--precision=fp32'] + corner_args(corners))
        outputs[denoise, texture] = np.asarray(Image.open(out / 'photo_x4.png'))
    assert 'Model: SRResNet d0.5 t0.3, blended from' in capsys.readouterr().out
    for (denoise, texture), path in (((0., 0.), corners[0]), ((1., 1.), corners[3])):
        own = super_resolve.upscale_image(super_resolve.load_inference_model(path, torch.device('cpu')),
                                          Image.open(img_path), torch.device('cpu'), 384, 16)
        assert np.array_equal(outputs[denoise, texture], np.asarray(own))
    assert not np.array_equal(outputs[0.5, 0.3], outputs[0., 0.])


def test_auto_picks_a_value_per_image_and_prints_it(corners, tmp_path, capsys):
    folder = tmp_path / 'photos'
    folder.mkdir()
    for i in range(2):
        textured_image(24, 20, seed=i).save(folder / f'p{i}.png')
    damage = save_damage_model(tmp_path / 'damage.pth')
    super_resolve.main([f'--input_path={folder}', f'--output_folder={tmp_path / "out"}', f'--damage_checkpoint={damage}']
                       + corner_args(corners))
    out = capsys.readouterr().out
    assert 'Model: SRResNet auto t0, blended from' in out
    for i in range(2):
        assert re.search(rf'p{i}.png: denoise [0-9.]+ \(auto: it reads as \d+% ', out)
    assert len(os.listdir(tmp_path / 'out')) == 2


def test_a_video_gets_one_value_from_its_first_frames(corners, tmp_path, capsys, monkeypatch):
    from test_video import make_clip
    clip = make_clip(tmp_path / 'clip.mp4', frames=12, width=24, height=16)
    damage = save_damage_model(tmp_path / 'damage.pth')
    read = []
    real_choose = super_resolve.choose_denoise
    monkeypatch.setattr(super_resolve, 'choose_denoise', lambda *args: read.append(args[2]) or real_choose(*args))
    made = []
    real_call = super_resolve.BlendedModels.__call__
    monkeypatch.setattr(super_resolve.BlendedModels, '__call__',
                        lambda self, d, t: made.append((d, t)) or real_call(self, d, t))
    super_resolve.main([f'--input_path={clip}', f'--output_folder={tmp_path / "out"}', f'--damage_checkpoint={damage}']
                       + corner_args(corners))
    assert len(read) == 1 and read[0].shape == (super_resolve.AUTO_VIDEO_FRAMES, 16, 24, 3)  # the first 8 frames
    assert len(made) == 2  # the blend made at the start, then the video's one value: never per frame
    assert len(re.findall(r'clip.mp4: denoise ', capsys.readouterr().out)) == 1


def test_sweep_sets_bicubic_beside_each_value_and_is_not_read_back(corners, tmp_path, monkeypatch):
    folder = tmp_path / 'photos'
    folder.mkdir()
    textured_image(20, 16, seed=2).save(folder / 'p.png')
    shown = []
    real_grid = super_resolve.visualize_real
    monkeypatch.setattr(super_resolve, 'visualize_real',
                        lambda img, models, *args: shown.append([label for label, _ in models]) or real_grid(img, models, *args))
    args = [f'--input_path={folder}', f'--output_folder={folder}', '--mode=sweep', '--sweep=texture',
            '--sweep_values=[0, 0.5, 1]', '--denoise=0.25'] + corner_args(corners)
    [written] = super_resolve.main(args)
    assert written == str(folder / 'p_sweep.png')
    assert shown == [['SRResNet d0.25 t0', 'SRResNet d0.25 t0.5', 'SRResNet d0.25 t1']]
    assert Image.open(written).width > 4 * 20 * 4  # bicubic and three upscales in a row
    super_resolve.main(args)  # p_sweep.png is an output, not an input: only p.png is read again
    assert len(shown) == 2 and sorted(os.listdir(folder)) == ['p.png', 'p_sweep.png', 'p_sweep_1.png']


@pytest.mark.parametrize('args, message', [
    (['--denoise=2'], "denoise must be a number in [0, 1], got 2.0"),
    (['--denoise=abc'], "denoise must be 'auto' or a number in [0, 1], got 'abc'"),
    (['--texture=abc'], "--texture must be of type float, got 'abc'"),
    (['--texture=-0.5'], "texture must be a number in [0, 1], got -0.5"),
])
def test_bad_blend_values_are_one_line_errors(tmp_path, args, message):
    result = subprocess.run([sys.executable, 'super_resolve.py', f'--output_folder={tmp_path}'] + args, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"super_resolve.py: error: {message}"]


def test_mismatched_corners_are_a_one_line_error_naming_the_file(corners, tmp_path):
    other_args = dict(MODEL_ARGS, n_channels=8)
    other = tmp_path / 'wide.pth'
    torch.save({'model': SRResNet(**other_args).state_dict(), 'model_args': other_args}, other)
    result = subprocess.run([sys.executable, 'super_resolve.py', f'--output_folder={tmp_path / "out"}', '--denoise=0.5',
                             f'--srresnet_checkpoint={corners[0]}', f'--srresnet_real_checkpoint={other}'],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"super_resolve.py: error: {other}: model_args ") and 'differ from' in line


def test_a_single_checkpoint_takes_no_blend_values(corners, tmp_path):
    with pytest.raises(runtime.ConfigError, match='--checkpoint runs one model as it is'):
        super_resolve.main([f'--checkpoint={corners[0]}', '--denoise=0.5', f'--output_folder={tmp_path}'])


# ----------------------------------------------------------------------------------------------
# eval.py and export_onnx.py
# ----------------------------------------------------------------------------------------------

def test_eval_rows_of_blends_and_auto_on_every_level_of_the_ladder(corners, tiny_data, tmp_path, capsys):
    damage = save_damage_model(tmp_path / 'damage.pth')
    results = evaluate.main([f'--data_folder={tiny_data}', "--test_data_names=['Set5']", '--degradation=ladder',
                             "--models=['bicubic', 'srresnet']", "--denoise=[0.0, 0.5, 'auto']",
                             "--metrics=['psnr', 'ssim']", f'--damage_checkpoint={damage}', '--device=cpu',
                             f'--results_file={tmp_path / "ladder.json"}'] + corner_args(corners)[:2])
    assert list(results) == ['bicubic', 'srresnet', 'blend d0 t0', 'blend d0.5 t0', 'blend auto t0']
    for key, per_set in results.items():
        assert list(per_set) == [f'Set5:{level}' for level in degradations.LADDER_LEVELS], key
    assert results['blend d0 t0'] == results['srresnet']  # the corner is its own file
    assert 0 <= results['blend auto t0']['Set5:heavy']['denoise'] <= 1
    out = capsys.readouterr().out
    assert '| Model | clean | light | medium | heavy | jpeg |' in out and '| SRResNet auto t0 |' in out
    header = open(tmp_path / 'ladder.csv').readline().strip()
    assert header == 'model,set,image,psnr,ssim,denoise'


def test_export_onnx_writes_a_blend_under_its_name_and_a_corner_under_its_file_name(corners, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = export_onnx.main(['--denoise=0.5', '--texture=0.25'] + corner_args(corners))
    assert path == 'srresnet_d0.5_t0.25_x4.onnx' and os.path.isfile(tmp_path / path)
    assert export_onnx.main(['--denoise=1', '--texture=0'] + corner_args(corners)) == 'corner1.onnx'
    with pytest.raises(runtime.ConfigError, match='exports one model as it is'):
        export_onnx.main([f'--checkpoint={corners[0]}', '--denoise=0.5'])


# ----------------------------------------------------------------------------------------------
# degradations: the ladder and the reading of damage
# ----------------------------------------------------------------------------------------------

def hr_batch(n=3, side=64, seed=0):
    """(n, 3, side, side) textured images in [0, 1] on 8-bit levels."""
    return torch.stack([utils.convert_image(textured_image(side, side, seed=seed + i), source='pil', target='[0, 1]')
                        for i in range(n)])


def test_the_ladder_keeps_the_protocols_it_contains():
    hr_imgs = hr_batch()
    keys = ['a.png', 'b.png', 'c.png']
    # 'heavy' is the realistic chain with the same key; 'clean' is Pillow's bicubic shrink.
    assert torch.equal(degradations.degrade_by('ladder:heavy', hr_imgs, keys, 4), degradations.degrade(hr_imgs, keys, 4))
    clean = degradations.degrade_by('ladder:clean', hr_imgs, keys, 4)
    for hr_img, lr_img in zip(hr_imgs, clean):
        pil = utils.convert_image(hr_img, source='[0, 1]', target='pil').resize((16, 16), Image.BICUBIC)
        assert torch.equal(lr_img, utils.convert_image(pil, source='pil', target='[0, 1]'))


def test_the_ladder_draws_a_level_per_key_and_each_level_is_a_function_of_the_key():
    hr_imgs = hr_batch(n=8)
    keys = list(range(100, 108))
    mixed = degradations.degrade_by('ladder', hr_imgs, keys, 4)
    for i, key in enumerate(keys):
        level = degradations.ladder_level(key)
        alone = degradations.degrade_by(f'ladder:{level}', hr_imgs[i:i + 1], [key], 4)
        assert torch.equal(mixed[i:i + 1], alone), (key, level)
        assert torch.equal(mixed[i], torch.round(mixed[i] * 255) / 255)  # 8-bit levels
    draws = [degradations.ladder_level(key) for key in range(4000)]
    for level, weight in zip(degradations.LADDER_LEVELS, degradations.LADDER_WEIGHTS):
        assert abs(draws.count(level) / len(draws) - weight) < 0.03
    with pytest.raises(ValueError, match='degradation must be one of'):
        degradations.degrade_by('ladder:extreme', hr_imgs, keys, 4)


def test_damage_grows_up_the_ladder():
    """Mean squared error against the clean shrink: light < medium < heavy, on average."""
    hr_imgs = hr_batch(n=6, side=96, seed=5)
    keys = [f'img{i}.png' for i in range(6)]
    clean = degradations.degrade_by('ladder:clean', hr_imgs, keys, 4)
    errors = [float(((degradations.degrade_by(f'ladder:{level}', hr_imgs, keys, 4) - clean) ** 2).mean())
              for level in ('light', 'medium', 'heavy')]
    assert errors[0] < errors[1] < errors[2]


@pytest.mark.parametrize('quality', [25, 50, 75])
def test_a_jpeg_is_read_from_its_pixels_as_from_its_table(quality):
    """jpeg_scale_of_pixels recovers the quantisation of a decoded JPEG that Pillow wrote; a PNG reads 0."""
    img = textured_image(96, 80, seed=3)
    buffer = io.BytesIO()
    img.save(buffer, 'JPEG', quality=quality)
    jpeg = Image.open(io.BytesIO(buffer.getvalue()))
    from_table = degradations.jpeg_scale_of_table(jpeg.quantization[0])
    expected = (200 - 2 * quality) / 100 if quality >= 50 else 50 / quality
    assert from_table == pytest.approx(expected, rel=0.1)
    decoded = utils.convert_image(jpeg.convert('RGB'), source='pil', target='[0, 1]')
    assert degradations.jpeg_scale(decoded) == pytest.approx(from_table, rel=0.15)
    assert degradations.jpeg_scale(utils.convert_image(img, source='pil', target='[0, 1]')) == 0.


def test_the_classifier_reads_large_images_from_a_bounded_grid_of_crops():
    small = torch.rand(3, 50, 70)
    assert degradations.damage_crops(small).shape == (1, 3, 50, 70)
    large = torch.rand(3, 1080, 1920)
    crops = degradations.damage_crops(large)
    side = degradations.AUTO_CROP
    assert crops.shape == (degradations.AUTO_CROPS ** 2, 3, side, side)
    assert torch.equal(crops[0], large[:, :side, :side])
    assert torch.equal(crops[-1], large[:, (1080 - side) // 8 * 8:(1080 - side) // 8 * 8 + side,
                                   (1920 - side) // 8 * 8:(1920 - side) // 8 * 8 + side])


def test_auto_denoise_is_the_probability_weighted_value_rounded_to_a_twentieth(tmp_path):
    damage_map = {'level_denoise': [0., .2, .5, 1., .7], 'power': 1.}
    assert degradations.auto_denoise(torch.tensor([1., 0, 0, 0, 0]), damage_map) == 0.
    assert degradations.auto_denoise(torch.tensor([0., 0, 0, 1, 0]), damage_map) == 1.
    assert degradations.auto_denoise(torch.tensor([.5, 0, .5, 0, 0]), damage_map) == 0.25
    assert degradations.auto_denoise(torch.tensor([0, .5, .5, 0, 0]), damage_map) == 0.35
    # A power of 2 weighs 0.75 and 0.25 as 9 to 1: 0.9 * 0 + 0.1 * 0.5.
    assert degradations.auto_denoise(torch.tensor([.75, 0, .25, 0, 0]), dict(damage_map, power=2.)) == 0.05
    model, found = runtime.load_damage_model(save_damage_model(tmp_path / 'damage.pth', power=2.))
    assert found == {'level_denoise': [0., 0.25, 0.5, 1., 0.75], 'power': 2.}
    probabilities = degradations.damage_levels(model, torch.rand(3, 40, 30))
    assert probabilities.shape == (5,) and float(probabilities.sum()) == pytest.approx(1.)
    broken = tmp_path / 'broken.pth'
    torch.save({'model': {}, 'model_args': {}, 'levels': ['clean'], 'level_denoise': [0.], 'power': 1.}, broken)
    with pytest.raises(ValueError, match='broken.pth: its levels'):
        runtime.load_damage_model(str(broken))


def test_the_map_fit_leaves_power_1_when_the_curves_are_flat_there(monkeypatch):
    """Two levels the classifier tells apart only softly (0.55 against 0.45): the second level's images
    gain only above denoise 0.7, which their mix reaches at powers above 4.2, and the curves are flat
    around power 1. A fit from power 1 alone stays there; the fit from several powers does not."""
    import fit_denoise
    grid = np.linspace(0., 1., 11)
    first = np.where(grid <= 0.3, 30., 30. - 10. * (grid - 0.3))  # (11,): best at 0, flat up to 0.3
    second = np.where(grid <= 0.7, 20., 20. + 10. * (grid - 0.7))  # (11,): flat up to 0.7, best at 1
    probabilities = np.array([[0.55, 0.45]] * 4 + [[0.45, 0.55]] * 4)  # (8 images, 2 levels)
    curves = [first] * 4 + [second] * 4
    damage_map = fit_denoise.fit_map(probabilities, curves, grid, [0., 1.])
    assert damage_map['power'] > 4.2
    best = fit_denoise.mean_psnr(damage_map['level_denoise'] + [np.log(damage_map['power'])], probabilities, curves, grid)
    assert best > (30. + 20. + 2.5) / 2  # the first level keeps its 30 dB, the second gains 2.5 of its 3 or more
    monkeypatch.setattr(fit_denoise, 'POWER_STARTS', (1.,))
    assert fit_denoise.fit_map(probabilities, curves, grid, [0., 1.])['power'] < 1.5  # what the one start did
