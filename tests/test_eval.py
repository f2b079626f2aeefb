"""Tests of eval.py on generated images: the bicubic row against a computation written out here,
the NIQE column and the HR row, the results files' schema, SRGAN rows named by their content
loss, a model checkpoint saved on a GPU machine evaluated on the CPU, and clear one-line errors
for whatever can be missing or wrong. About ten seconds on two CPU cores.

    python -m pytest -q tests/test_eval.py
"""
import csv
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

import eval as eval_script  # named so, not to shadow the builtin eval
import utils
from models import SRResNet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETS = {'SetA': [(51, 43), (64, 37)], 'SetB': [(40, 40)]}  # test sets of (width, height), odd sizes included
# Big enough for NIQE's 96x96 block after the 4-px border crop; 'Set5' so that the paper's row has numbers.
NIQE_SETS = {'Set5': [(113, 106), (104, 120)]}
MODEL_ARGS = {'n_blocks': 1, 'n_channels': 8, 'scaling_factor': 4}


def run_eval(argv):
    """eval.main(argv): the script's own constants are never changed, so each call starts from them."""
    return eval_script.main(argv)


def textured_image(width, height, seed):
    """A PIL RGB image with smooth structure and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = 127.5 + 100. * np.sin(x[..., None] / 5. + np.array([0., 1., 2.])) * np.cos(y[..., None] / 4.)
    return Image.fromarray(np.clip(np.round(smooth + rng.normal(0., 15., smooth.shape)), 0, 255).astype(np.uint8))


def make_data(root, sets):
    """Images in root/<set>/ and their lists, <set>_test_images.json, in root/lists."""
    lists = root / 'lists'
    lists.mkdir()
    for set_name, sizes in sets.items():
        (root / set_name).mkdir()
        paths = []
        for i, (width, height) in enumerate(sizes):
            paths.append(str(root / set_name / f'img{i}.png'))
            textured_image(width, height, seed=len(paths) + 10 * len(set_name)).save(paths[-1])
        (lists / f'{set_name}_test_images.json').write_text(json.dumps(paths))
    return str(lists)


@pytest.fixture
def data_folder(tmp_path):
    """The tiny SETS: too small for NIQE, so the tests that use them measure PSNR and SSIM only."""
    return make_data(tmp_path, SETS)


@pytest.fixture
def niqe_data_folder(tmp_path):
    return make_data(tmp_path, NIQE_SETS)


def eval_args(data_folder, tmp_path, models, **overrides):
    args = {'data_folder': data_folder, 'test_data_names': list(SETS), 'models': models, 'device': 'cpu',
            'metrics': ['psnr', 'ssim'], 'results_file': str(tmp_path / 'results' / 'eval.json'), **overrides}
    return [f'--{key}={value}' for key, value in args.items()]


def save_srgan(path, model, **extra):
    """An SRGAN checkpoint as train_srgan.py writes one, with the generator's weights from `model`."""
    torch.save({'generator': model.state_dict(), 'discriminator': {}, 'model_args': MODEL_ARGS, 'iteration': 3,
                **extra}, path)


# The reference, written out from the definitions rather than taken from the code under test.
def y_channel(img):
    """BT.601 luma in [16, 235], unrounded: 16 + (65.481 R + 128.553 G + 24.966 B) / 255."""
    rgb = np.asarray(img.convert('RGB'), dtype=np.float64)
    return 16. + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.


def reference_metrics(sr_img, hr_img, border=4):
    sr_y, hr_y = y_channel(sr_img)[border:-border, border:-border], y_channel(hr_img)[border:-border, border:-border]
    psnr = 10. * np.log10(255. ** 2 / np.mean((sr_y - hr_y) ** 2))
    ssim = structural_similarity(sr_y, hr_y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255.)
    return psnr, ssim


def centre_crop_pair(path, s=4):
    """(LR, HR) PIL images: the largest centred crop with sides divisible by s, and its bicubic downscale."""
    img = Image.open(path).convert('RGB')
    width, height = img.width - img.width % s, img.height - img.height % s
    left, top = (img.width - width) // 2, (img.height - height) // 2
    hr_img = img.crop((left, top, left + width, top + height))
    return hr_img.resize((width // s, height // s), Image.BICUBIC), hr_img


def imagenet_norm(img):
    rgb = np.asarray(img, dtype=np.float32) / 255.
    rgb = (rgb - np.array([0.485, 0.456, 0.406], dtype=np.float32)) / np.array([0.229, 0.224, 0.225], dtype=np.float32)
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)  # (1, 3, h, w)


def image_paths(data_folder, set_name):
    with open(os.path.join(data_folder, f'{set_name}_test_images.json')) as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------

def test_bicubic_row_equals_a_direct_computation(data_folder, tmp_path, capsys):
    results = run_eval(eval_args(data_folder, tmp_path, ['bicubic']))
    for set_name in SETS:
        expected = []
        for path in image_paths(data_folder, set_name):
            lr_img, hr_img = centre_crop_pair(path)
            expected.append(reference_metrics(lr_img.resize(hr_img.size, Image.BICUBIC), hr_img))
        assert results['bicubic'][set_name]['psnr'] == pytest.approx(np.mean([p for p, _ in expected]), abs=1e-9)
        assert results['bicubic'][set_name]['ssim'] == pytest.approx(np.mean([s for _, s in expected]), abs=1e-9)
    table = capsys.readouterr().out
    row = f"| Bicubic (ours) | {results['bicubic']['SetA']['psnr']:.2f} | {results['bicubic']['SetA']['ssim']:.4f} |"
    assert row in table and '| Bicubic (paper) | — | — | — | — |' in table  # no paper numbers for made-up sets
    assert '| Model | SetA PSNR | SetA SSIM | SetB PSNR | SetB SSIM |' in table and '| HR |' not in table  # no NIQE


def test_results_files_schema(data_folder, tmp_path):
    results = run_eval(eval_args(data_folder, tmp_path, ['bicubic']))
    with open(tmp_path / 'results' / 'eval.json') as f:
        saved = json.load(f)
    assert saved == results
    assert list(saved) == ['bicubic'] and list(saved['bicubic']) == list(SETS)
    for set_name, sizes in SETS.items():
        entry = saved['bicubic'][set_name]
        assert sorted(entry) == ['n_images', 'psnr', 'ssim']
        assert isinstance(entry['psnr'], float) and isinstance(entry['ssim'], float) and 0 < entry['ssim'] <= 1
        assert entry['n_images'] == len(sizes) and type(entry['n_images']) is int
    with open(tmp_path / 'results' / 'eval.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ['model', 'set', 'image', 'psnr', 'ssim']
    assert [(row['set'], row['image']) for row in rows] == [('SetA', 'img0.png'), ('SetA', 'img1.png'),
                                                            ('SetB', 'img0.png')]
    set_a = [float(row['psnr']) for row in rows if row['set'] == 'SetA']
    assert np.mean(set_a) == pytest.approx(saved['bicubic']['SetA']['psnr'])


def saved_as_if_on_a_gpu(path):
    """Rewrite a CPU checkpoint as a GPU machine would have written it: its storages tagged 'cuda:0'.
    torch.load then needs map_location on a machine without CUDA."""
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as archive:
        for info, data in entries:
            if info.filename.endswith('/data.pkl'):
                assert data.count(b'X\x03\x00\x00\x00cpu') == 1  # the pickled location string
                data = data.replace(b'X\x03\x00\x00\x00cpu', b'X\x06\x00\x00\x00cuda:0')
            archive.writestr(info, data)


def test_a_gpu_saved_checkpoint_evaluates_on_the_cpu(data_folder, tmp_path):
    torch.manual_seed(0)
    model = SRResNet(**MODEL_ARGS).eval()
    path = str(tmp_path / 'srresnet.pth')
    torch.save({'model': model.state_dict(), 'model_args': MODEL_ARGS, 'iteration': 7, 'config': {}}, path)
    saved_as_if_on_a_gpu(path)
    if not torch.cuda.is_available():  # the rewrite is real: without map_location it would not load here
        with pytest.raises(RuntimeError, match='CUDA'):
            torch.load(path, weights_only=True)

    results = run_eval(eval_args(data_folder, tmp_path, ['srresnet'], srresnet_checkpoint=path))
    for set_name in SETS:
        expected = []
        for image_path in image_paths(data_folder, set_name):
            lr_img, hr_img = centre_crop_pair(image_path)
            with torch.no_grad():
                sr = model(imagenet_norm(lr_img))[0]  # (3, H, W), in [-1, 1]
            sr_8bit = np.clip(np.round((sr.permute(1, 2, 0).numpy() + 1.) / 2. * 255.), 0, 255).astype(np.uint8)
            expected.append(reference_metrics(Image.fromarray(sr_8bit), hr_img))
        assert results['srresnet'][set_name]['n_images'] == len(SETS[set_name])
        assert results['srresnet'][set_name]['psnr'] == pytest.approx(np.mean([p for p, _ in expected]), abs=1e-3)
        assert results['srresnet'][set_name]['ssim'] == pytest.approx(np.mean([s for _, s in expected]), abs=1e-4)


def test_clear_errors(data_folder, tmp_path):
    torch.manual_seed(0)
    model = SRResNet(**MODEL_ARGS)
    srresnet_path, srgan_path, other_path = (str(tmp_path / name) for name in ('srresnet.pth', 'srgan.pth', 'x.pth'))
    torch.save({'model': model.state_dict(), 'model_args': MODEL_ARGS, 'iteration': 0, 'config': {}}, srresnet_path)
    save_srgan(srgan_path, model)
    torch.save({'weights': torch.ones(2)}, other_path)

    def fails(match, models, **overrides):
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            run_eval(eval_args(data_folder, tmp_path, models, **overrides))

    fails(r'data list not found: .*SetC_test_images.json', ['bicubic'], test_data_names=['SetA', 'SetC'])
    fails(r'nowhere.pth.*Train one with `python train_srresnet.py`', ['srresnet'],
          srresnet_checkpoint=str(tmp_path / 'nowhere.pth'))
    fails(r'srresnet.pth is not an? SRGAN checkpoint.*train_srgan.py', ['srgan'], srgan_checkpoint=srresnet_path)
    fails(r'srgan.pth is not an? SRResNet checkpoint.*train_srresnet.py', ['srresnet'], srresnet_checkpoint=srgan_path)
    fails(r'x.pth is not an? SRResNet checkpoint', ['srresnet'], srresnet_checkpoint=other_path)
    fails(r"not found: ''.*--srgan_checkpoint=PATH", ['bicubic', 'srgan'], srgan_checkpoint='')  # models has 'srgan', no checkpoint
    fails(r'models must be', ['bicubic', 'esrgan'])
    fails(r'metrics must be', ['bicubic'], metrics=['psnr', 'lpips'])
    # Too small for a metric: named before any model runs (the SRResNet here is never built).
    fails(r'SetA/img0.png .*51x43, too small for NIQE at x4: it needs 96 px', ['bicubic', 'srresnet'],
          metrics=['niqe'], srresnet_checkpoint=srresnet_path)
    fails(r'SetB/img0.png .*40x40, too small for SSIM at x16: .* and has 0', ['bicubic'], scaling_factor=16,
          test_data_names=['SetB'], metrics=['ssim'])
    assert not os.path.exists(tmp_path / 'results')  # nothing was written by a failed run


def test_a_missing_image_is_one_line_on_stderr(data_folder, tmp_path):
    os.remove(image_paths(data_folder, 'SetB')[0])  # deleted after the list was made
    result = subprocess.run([sys.executable, 'eval.py'] + eval_args(data_folder, tmp_path, ['bicubic']), cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    list_path = os.path.join(data_folder, 'SetB_test_images.json')
    assert result.stderr.startswith(f'eval.py: error: data list {list_path} ')
    assert image_paths(data_folder, 'SetB')[0] in result.stderr and result.stderr.count('\n') == 1
    assert not os.path.exists(tmp_path / 'results')


def test_published_results_are_not_the_default_output():
    # A subset run must not overwrite results/eval_results.json, which git tracks: the default
    # goes under runs/, which git ignores.
    assert not os.path.normpath(eval_script.results_file).startswith('results')
    assert eval_script.results_file.startswith('runs/')
    with open(os.path.join(REPO, '.gitignore')) as f:
        assert '/runs/' in f.read().split()


def test_niqe_column_and_hr_row(niqe_data_folder, tmp_path, capsys):
    results = run_eval(eval_args(niqe_data_folder, tmp_path, ['bicubic'], test_data_names=['Set5'],
                                 metrics=['psnr', 'ssim', 'niqe']))
    assert list(results) == ['hr', 'bicubic']
    hr_niqe, bicubic_niqe = [], []
    for path in image_paths(niqe_data_folder, 'Set5'):
        lr_img, hr_img = centre_crop_pair(path)
        hr_niqe.append(utils.niqe(hr_img, crop_border=4))
        bicubic_niqe.append(utils.niqe(lr_img.resize(hr_img.size, Image.BICUBIC), crop_border=4))
    hr, bicubic = results['hr']['Set5'], results['bicubic']['Set5']
    assert hr == {'psnr': None, 'ssim': None, 'niqe': pytest.approx(np.mean(hr_niqe), abs=1e-9), 'n_images': 2}
    assert bicubic['niqe'] == pytest.approx(np.mean(bicubic_niqe), abs=1e-9) and bicubic['psnr'] > 20

    table = capsys.readouterr().out
    assert '| Model | Set5 PSNR | Set5 SSIM | Set5 NIQE |' in table
    assert f"| HR | — | — | {hr['niqe']:.2f} |" in table
    assert f"| Bicubic (ours) | {bicubic['psnr']:.2f} | {bicubic['ssim']:.4f} | {bicubic['niqe']:.2f} |" in table
    assert '| Bicubic (paper) | 28.43 | 0.8211 | — |' in table  # the paper published no NIQE

    with open(tmp_path / 'results' / 'eval.json') as f:
        assert json.load(f)['hr']['Set5'] == {'psnr': None, 'ssim': None, 'niqe': hr['niqe'], 'n_images': 2}
    with open(tmp_path / 'results' / 'eval.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ['model', 'set', 'image', 'psnr', 'ssim', 'niqe']
    assert [(row['model'], row['psnr']) for row in rows[:2]] == [('hr', ''), ('hr', '')]
    assert [float(row['niqe']) for row in rows[2:]] == pytest.approx(bicubic_niqe, abs=1e-9)


def test_srgan_rows_are_named_by_their_content_loss(niqe_data_folder, tmp_path, capsys):
    torch.manual_seed(0)
    model = SRResNet(**MODEL_ARGS)
    paths = {name: str(tmp_path / f'{name}.pth') for name in ('mse', 'old', 'bad')}
    save_srgan(paths['mse'], model, config={'content_loss': 'mse'})
    save_srgan(paths['old'], model)  # from before the variants: no config at all
    save_srgan(paths['bad'], model, config={'content_loss': 'l1'})

    def evaluate(path):
        return run_eval(eval_args(niqe_data_folder, tmp_path, ['srgan'], test_data_names=['Set5'],
                                  srgan_checkpoint=path))

    assert list(evaluate(paths['mse'])) == ['srgan_mse']
    table = capsys.readouterr().out
    assert '| SRGAN-MSE (ours) |' in table and '| SRGAN-MSE (paper) | 30.64 | 0.8701 |' in table
    assert 'VGG54' not in table
    with open(tmp_path / 'results' / 'eval.json') as f:
        assert list(json.load(f)) == ['srgan_mse']
    assert list(evaluate(paths['old'])) == ['srgan_vgg54']
    assert '| SRGAN-VGG54 (paper) | 29.40 | 0.8472 |' in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"bad.pth: config content_loss is 'l1'"):
        evaluate(paths['bad'])
    # A second SRGAN slot, for a real-photo GAN beside the bicubic-trained one, in one table.
    real_path = str(tmp_path / 'real.pth')
    save_srgan(real_path, model, config={'content_loss': 'mse', 'degradation': 'realistic'})
    both = run_eval(eval_args(niqe_data_folder, tmp_path, ['srgan', 'srgan_real'], test_data_names=['Set5'],
                              srgan_checkpoint=paths['mse'], srgan_real_checkpoint=real_path))
    assert list(both) == ['srgan_mse', 'srgan_mse_real']
    assert both['srgan_mse']['Set5'] == both['srgan_mse_real']['Set5']  # the same weights
    assert '| SRGAN-MSE-real (ours) |' in capsys.readouterr().out


def save_srresnet(path, model, **extra):
    """An SRResNet checkpoint as train_srresnet.py writes one (the keys eval.py reads)."""
    torch.save({'model': model.state_dict(), 'model_args': MODEL_ARGS, 'iteration': 3, **extra}, path)


def test_realistic_protocol_degrades_each_image_by_its_name_and_prints_no_paper_rows(niqe_data_folder, tmp_path,
                                                                                      capsys):
    import degradations
    args = dict(test_data_names=['Set5'], degradation='realistic')
    results = run_eval(eval_args(niqe_data_folder, tmp_path, ['bicubic'], **args))
    again = run_eval(eval_args(niqe_data_folder, tmp_path, ['bicubic'], **args))
    assert results == again  # a fixed protocol: the same LR images every run
    table = capsys.readouterr().out
    assert 'realistic LR images' in table and '(paper)' not in table  # the paper's protocol is bicubic
    expected = []
    for path in image_paths(niqe_data_folder, 'Set5'):
        _, hr_img = centre_crop_pair(path)
        hr = utils.convert_image(hr_img, source='pil', target='[0, 1]').unsqueeze(0)
        lr = degradations.degrade(hr, [os.path.basename(path)], 4)[0]  # keyed by the file name
        lr_img = utils.convert_image(lr, source='[0, 1]', target='pil')
        expected.append(reference_metrics(lr_img.resize(hr_img.size, Image.BICUBIC), hr_img)[0])
    assert results['bicubic']['Set5']['psnr'] == pytest.approx(np.mean(expected), abs=1e-9)
    clean = run_eval(eval_args(niqe_data_folder, tmp_path, ['bicubic'], test_data_names=['Set5']))
    assert results['bicubic']['Set5']['psnr'] < clean['bicubic']['Set5']['psnr'] - 1


def test_real_photos_are_scored_by_niqe_and_a_realistic_model_is_named_so(niqe_data_folder, tmp_path, capsys):
    photos = tmp_path / 'RealPhotos'
    photos.mkdir()
    for i, (width, height) in enumerate([(30, 28), (26, 33)]):  # upscaled x4: big enough for NIQE
        textured_image(width, height, seed=50 + i).save(photos / f'photo{i}.png')
    torch.manual_seed(0)
    paths = {name: str(tmp_path / f'{name}.pth') for name in ('plain', 'real')}
    save_srresnet(paths['plain'], SRResNet(**MODEL_ARGS), config={})
    save_srresnet(paths['real'], SRResNet(**MODEL_ARGS), config={'degradation': 'realistic'})
    results = run_eval(eval_args(niqe_data_folder, tmp_path, ['bicubic', 'srresnet', 'srresnet_real'],
                                 test_data_names=['Set5'], metrics=['psnr', 'niqe'], real_lr_folder=str(photos),
                                 srresnet_checkpoint=paths['plain'], srresnet_real_checkpoint=paths['real']))
    assert list(results) == ['hr', 'bicubic', 'srresnet', 'srresnet_real']
    assert 'RealPhotos' not in results['hr']  # no ground truth, so no HR row
    bicubic_niqe = [utils.niqe(Image.open(photos / f'photo{i}.png').convert('RGB').resize(
        (Image.open(photos / f'photo{i}.png').width * 4, Image.open(photos / f'photo{i}.png').height * 4),
        Image.BICUBIC), crop_border=4) for i in range(2)]
    assert results['bicubic']['RealPhotos'] == {'niqe': pytest.approx(np.mean(bicubic_niqe), abs=1e-9),
                                                'n_images': 2}
    table = capsys.readouterr().out
    assert '| Model | RealPhotos NIQE |' in table
    assert f"| SRResNet-real (ours) | {results['srresnet_real']['RealPhotos']['niqe']:.2f} |" in table
    assert '| SRResNet-real (paper)' not in table and '| SRResNet (paper) |' in table
    with open(tmp_path / 'results' / 'eval.csv', newline='') as f:
        rows = [row for row in csv.DictReader(f) if row['set'] == 'RealPhotos']
    assert [(row['model'], row['image']) for row in rows[:2]] == [('bicubic', 'photo0.png'), ('bicubic', 'photo1.png')]

    # The same checkpoint in both rows, or a real-photo folder without NIQE, is refused up front.
    with pytest.raises(ValueError, match='second SRResNet row'):
        run_eval(eval_args(niqe_data_folder, tmp_path, ['srresnet', 'srresnet_real'], test_data_names=['Set5'],
                           srresnet_checkpoint=paths['plain'], srresnet_real_checkpoint=paths['plain']))
    with pytest.raises(ValueError, match="NIQE only"):
        run_eval(eval_args(niqe_data_folder, tmp_path, ['bicubic'], test_data_names=['Set5'],
                           real_lr_folder=str(photos)))
    with pytest.raises(FileNotFoundError, match='nowhere'):
        run_eval(eval_args(niqe_data_folder, tmp_path, ['bicubic'], test_data_names=['Set5'], metrics=['niqe'],
                           real_lr_folder=str(tmp_path / 'nowhere')))
