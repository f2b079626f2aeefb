"""bench.py: its plain references compute what the project computes, and a tiny run completes."""
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

import bench
import runtime
import super_resolve
import train_srresnet
from models import SRResNet
from utils import ImageTransforms

PAPER_ARGS = dict(large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=16, scaling_factor=4)


def test_project_inference_equals_plain_reference(tmp_path):
    """super_resolve.py's path (BatchNorm folded, channels_last, inference_mode) gives the plain
    NCHW eager no_grad model's output within bench's tolerance, on non-saturated outputs."""
    path = str(tmp_path / 'random.pth')
    state_dict = bench.save_random_checkpoint(path, PAPER_ARGS, seed=0)
    plain = SRResNet(**PAPER_ARGS)
    plain.load_state_dict(state_dict)
    plain.eval()
    project = super_resolve.load_inference_model(path, torch.device('cpu'), channels_last=True)
    lr_img = torch.randn(1, 3, 10, 13, generator=torch.Generator().manual_seed(1))  # ImageNet-normed
    with torch.no_grad():
        expected = bench.plain_forward(plain, lr_img)  # (1, 3, 40, 52), in [-1, 1]
        assert (plain(lr_img) - expected).abs().max().item() <= bench.tolerance  # forward() computes the same
    actual = super_resolve.upscale_tensor(project, lr_img, 0, super_resolve.tile_overlap)
    assert actual.shape == (1, 3, 40, 52)
    # The random weights must give a real image, not a tanh saturated at +-1 where anything agrees.
    assert expected.std() > 0.05 and (expected.abs() > 0.99).float().mean() < 0.5
    # The BatchNorm statistics are not the identity, so folding changed the weights.
    assert not torch.allclose(project.conv_block2.conv_block[0].weight, plain.conv_block2.conv_block[0].weight)
    assert (actual - expected).abs().max().item() <= bench.tolerance


def test_plain_pipeline_makes_the_projects_samples():
    """The plain reference's transform (Pillow bicubic, torchvision to-tensor) and the project's
    (crop, then convert_image) turn the same crop into the same tensors: bench compares equal work."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (50, 61, 3), dtype=np.uint8))
    transform = ImageTransforms('train', 24, 4, 'imagenet-norm', '[-1, 1]')
    box = transform.crop_box(img.width, img.height, random.Random(3))
    plain_lr, plain_hr = bench.plain_pair(img.crop(box), 4)
    project_lr, project_hr = transform.to_pair(img.crop(box))
    assert plain_lr.shape == project_lr.shape == (3, 6, 6) and plain_hr.shape == project_hr.shape == (3, 24, 24)
    assert torch.allclose(plain_lr, project_lr, atol=1e-6) and torch.allclose(plain_hr, project_hr, atol=1e-6)


def test_macs_per_lr_pixel_counts_the_convolutions():
    """The formula gives the issue's 2,218,176 for the paper's x4 SRResNet, and matches a count of
    every convolution's multiply-accumulates by forward hooks, for other shapes too."""
    assert bench.macs_per_lr_pixel(**PAPER_ARGS) == bench.MACS_PER_LR_PIXEL_X4 == 2_218_176
    small_x8 = dict(large_kernel_size=5, small_kernel_size=3, n_channels=8, n_blocks=2, scaling_factor=8)
    for args in (PAPER_ARGS, small_x8):
        model, counted = SRResNet(**args), []

        def count(module, inputs, output):
            counted.append(output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1])

        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.register_forward_hook(count)
        with torch.no_grad():  # module by module, whatever shortcuts SRResNet.forward may take
            bench.plain_forward(model, torch.zeros(1, 3, 4, 5))
        assert sum(counted) == bench.macs_per_lr_pixel(**args) * 4 * 5


def test_bench_runs_and_writes_its_json(tmp_path, monkeypatch):
    """A tiny run of the whole benchmark (synthetic images, a small model) completes, writes the
    JSON with every section and a row for each training path, and leaves train_srresnet.py's
    constants as they were. bench.py is told the CPU has AMX, so the bf16 peak and the float32
    row run on any machine (the training scripts, in their own processes, decide for themselves)."""
    monkeypatch.setattr(runtime, 'cpu_has_bf16_matrix_units', lambda: True)
    monkeypatch.setattr(runtime, 'cpu_has_bf16_arithmetic', lambda: True)
    constants_before = {key: getattr(train_srresnet, key) for key in train_srresnet.__annotations__}
    results_file = tmp_path / 'bench.json'
    results = bench.main([
        '--n_blocks=1', '--n_channels=8', '--inference_sizes=[[12, 10], [20, 14]]', '--inference_repeats=1',
        '--tile_size=8', '--crop_size=24', '--batch_sizes=[2]', '--train_iterations=3', '--train_rounds=2',
        '--plain_workers=0',
        '--train_args=--workers=0', '--srgan=False', '--peak_conv_shape=[1, 8, 16, 16]',
        f'--train_folder={tmp_path / "missing"}', '--synthetic_images=2', f'--results_file={results_file}'])
    written = json.loads(results_file.read_text())
    assert written == json.loads(json.dumps(results))
    for key in ('device', 'torch', 'threads', 'macs_per_lr_pixel', 'peak_gflop_per_s', 'inference', 'training',
                'tiling', 'precision', 'notes', 'config'):
        assert key in written, key
    assert [row['precision'] for row in written['precision']['rows']] == ['fp32', 'bf16']  # 'auto' on AMX: bf16
    assert [row['lr_size'] for row in written['inference']] == [[12, 10], [20, 14]]
    for row in written['inference']:
        assert row['project_mp_per_s'] > 0 and row['plain_mp_per_s'] > 0 and row['speedup'] > 0
        assert row['max_abs_diff'] <= bench.tolerance
    runs = {run['name']: run for run in written['training']['runs']}
    assert list(runs) == ['plain reference', 'DataLoader', 'device stream', 'device stream, plain last conv',
                          'device stream, fp32', 'device stream, realistic'], written['notes']
    assert all(run['batch_size'] == 2 and run['samples_per_s'] > 0 and run['gflop_per_s'] > 0 for run in runs.values())
    for run in runs.values():  # two rounds each, and the row's figure is their median
        assert len(run['round_seconds']) == 2
        assert run['seconds_per_iteration'] == pytest.approx(np.median(run['round_seconds']))
    assert '--data_on_device=off' in runs['DataLoader']['args']
    assert '--data_on_device=on' in runs['device stream']['args']
    assert '--shuffled_last_conv=False' in runs['device stream, plain last conv']['args']
    assert '--amp=off' in runs['device stream, fp32']['args'] and written['training']['precision'] == 'bf16'
    assert '--degradation=realistic' in runs['device stream, realistic']['args']
    cost = written['training']['realistic_cost']
    assert cost['batch_size'] == 2 and cost['extra'] == pytest.approx(
        runs['device stream, realistic']['seconds_per_iteration'] / runs['device stream']['seconds_per_iteration'] - 1)
    assert written['training']['timed_iterations'] == 3 and written['training']['realistic_warmup_iterations'] == 100
    assert written['tiling']['lr_size'] == [20, 14] and written['tiling']['tile_size'] == 8
    assert any('synthetic' in note for note in written['notes'])
    assert written['peak_gflop_per_s']['fp32'] > 0 and written['peak_gflop_per_s']['bf16'] > 0
    assert {key: getattr(train_srresnet, key) for key in train_srresnet.__annotations__} == constants_before


def test_logged_seconds_per_iteration_skips_the_warm_up_report(tmp_path):
    log = tmp_path / 'log.csv'
    log.write_text('iteration,loss,ms_per_iteration,val_psnr\n2,0.5,900.0,\n2,,,20.0\n4,0.4,10.0,\n6,0.3,30.0,\n')
    assert bench.logged_seconds_per_iteration(str(log)) == pytest.approx(0.020)  # (10 + 30) / 2 ms, not the 900
    log.write_text('iteration,loss,ms_per_iteration\n2,0.5,900.0\n')
    with pytest.raises(ValueError, match='1 timed reports; the run needs at least 2'):
        bench.logged_seconds_per_iteration(str(log))


def test_bench_with_no_srresnet_batches_times_nothing_and_fails_nothing(tmp_path):
    """`--batch_sizes=[]` (to time the SRGAN or the GPU's larger batches alone) leaves the CPU's
    SRResNet rows out instead of failing the whole training section."""
    results = bench.main([
        '--sections=training', '--n_blocks=1', '--n_channels=8', '--crop_size=24', '--batch_sizes=[]',
        '--train_iterations=3', '--train_args=--workers=0', '--srgan=False', f'--train_folder={tmp_path / "missing"}',
        '--synthetic_images=2', f'--results_file={tmp_path / "bench.json"}'])
    assert results['training']['runs'] == []
    assert not any('failed' in note for note in results['notes']), results['notes']


def test_precision_section_compares_half_precision_with_float32(tmp_path, monkeypatch):
    """Section 5 times fp32 and bf16 with the shipped model, and measures bf16's differences on the
    bundled example as eval.py measures PSNR: fp32 against itself is exact, bf16 is not, and moves
    PSNR by less than the 0.02 dB that super_resolve.py's precision='auto' may cost."""
    results = bench.main(['--sections=precision', '--inference_sizes=[[20, 14]]', '--inference_repeats=1',
                          "--precisions=['bf16']", f'--results_file={tmp_path / "bench.json"}'])
    section = results['precision']
    assert section['lr_size'] == [20, 14] and section['images'] == 'examples' and section['n_images'] == 1
    fp32, bf16 = section['rows']
    assert (fp32['precision'], bf16['precision']) == ('fp32', 'bf16')
    assert fp32['max_grey_diff'] == 0 and fp32['psnr_change'] == 0 and fp32['speedup'] == 1
    assert 0 < bf16['mean_grey_diff'] < 0.25 and bf16['max_grey_diff'] <= 9 and abs(bf16['psnr_change']) <= 0.02
    assert bf16['seconds'] > 0 and bf16['mp_per_s'] > 0 and 25 < fp32['psnr'] < 40
    # Where precision='auto' keeps fp32 (a CPU without bf16 arithmetic), there is nothing to compare.
    monkeypatch.setattr(runtime, 'cpu_has_bf16_matrix_units', lambda: False)
    monkeypatch.setattr(runtime, 'cpu_has_bf16_arithmetic', lambda: False)
    results = bench.main(['--sections=precision', f'--results_file={tmp_path / "bench2.json"}'])
    assert results['precision'] is None and not results['notes']
