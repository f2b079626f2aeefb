"""train_srresnet.py and train_srgan.py on tiny generated images: runs from the command line,
exact resume, which step changes which network, the learning-rate drop, NaN handling, errors."""
import copy
import csv
import os
import subprocess
import sys

import pytest
import torch

import train_srgan
import train_srresnet
from models import SRResNet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SRRESNET = ['--crop_size=32', '--n_blocks=2', '--n_channels=8', '--batch_size=2', '--workers=0', '--device=cpu',
                 '--val_freq=0', '--print_freq=1']
TINY_SRGAN = ['--crop_size=32', '--batch_size=2', '--workers=0', '--device=cpu', '--val_freq=0', '--print_freq=1',
              '--n_channels_d=8', '--n_blocks_d=2', '--fc_size_d=16', '--vgg19_weights=']


def run_script(script, args, cwd=REPO):
    """Run a script as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(REPO, script)] + args, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def read_log(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def assert_same_state(a, b):
    """Two state_dicts (possibly nested, as optimizers') hold identical tensors."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_state(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y)
    else:
        assert a == b


def test_srresnet_command_line_run(tiny_data, tmp_path):
    result = run_script('train_srresnet.py', TINY_SRRESNET + [
        f'--data_folder={tiny_data}', f'--out_dir={tmp_path}', '--iterations=4', '--val_freq=2', '--print_freq=2'])
    assert result.returncode == 0, result.stderr
    assert '[4/4] loss' in result.stdout and 'samples/s' in result.stdout and 'Set5: PSNR' in result.stdout
    checkpoint = torch.load(tmp_path / 'checkpoint_srresnet.pth', weights_only=True)
    assert {'model', 'optimizer', 'scaler', 'rng', 'iteration', 'model_args', 'config'} <= checkpoint.keys()
    assert checkpoint['iteration'] == 4 and checkpoint['config']['iterations'] == 4
    SRResNet(**checkpoint['model_args']).load_state_dict(checkpoint['model'])  # strict: plain keys
    assert (tmp_path / 'checkpoint_srresnet_best.pth').is_file() and (tmp_path / 'log_srresnet.png').is_file()
    rows = read_log(tmp_path / 'log_srresnet.csv')
    assert [row['iteration'] for row in rows if row['loss']] == ['2', '4']
    assert [row['iteration'] for row in rows if row['val_psnr']] == ['2', '4']


@pytest.mark.parametrize('amp', ['off', 'bf16', 'fp16'])
def test_srresnet_resume_is_exact(tiny_data, tmp_path, amp):
    """6 iterations straight == 3 iterations, then a resume to 6 (with other workers, too).
    'bf16' and 'fp16' run the autocast and GradScaler code paths on the CPU."""
    args = TINY_SRRESNET + [f'--data_folder={tiny_data}', f'--amp={amp}', '--lr_decay_at=4', '--save_freq=3']
    straight = train_srresnet.main(args + [f'--out_dir={tmp_path / "a"}', '--iterations=6'])
    train_srresnet.main(args + [f'--out_dir={tmp_path / "b"}', '--iterations=3', '--workers=2'])
    resumed = train_srresnet.main(args + [f'--out_dir={tmp_path / "b"}', '--iterations=6',
                                          f'--checkpoint={tmp_path / "b" / "checkpoint_srresnet.pth"}'])
    assert resumed['iteration'] == straight['iteration'] == 6
    a = torch.load(tmp_path / 'a' / 'checkpoint_srresnet.pth', weights_only=True)
    b = torch.load(tmp_path / 'b' / 'checkpoint_srresnet.pth', weights_only=True)
    assert_same_state(a['model'], b['model'])
    assert_same_state(a['optimizer'], b['optimizer'])
    assert not torch.equal(a['model']['conv_block1.conv_block.0.weight'],
                           SRResNet(**a['model_args']).state_dict()['conv_block1.conv_block.0.weight'])
    # The log of the resumed run tells one story: each iteration once.
    iterations = [row['iteration'] for row in read_log(tmp_path / 'b' / 'log_srresnet.csv')]
    assert iterations == [str(i) for i in range(1, 7)]


def test_srgan_command_line_run(tiny_data, srresnet_checkpoint, tmp_path):
    result = run_script('train_srgan.py', TINY_SRGAN + [
        f'--data_folder={tiny_data}', f'--out_dir={tmp_path}', '--iterations=2', '--val_freq=2',
        f'--srresnet_checkpoint={srresnet_checkpoint}'])
    assert result.returncode == 0, result.stderr
    assert 'content' in result.stdout and 'discriminator' in result.stdout
    checkpoint = torch.load(tmp_path / 'checkpoint_srgan.pth', weights_only=True)
    assert {'generator', 'discriminator', 'optimizer_g', 'optimizer_d', 'iteration', 'model_args',
            'config'} <= checkpoint.keys()
    assert checkpoint['iteration'] == 2
    rows = read_log(tmp_path / 'log_srgan.csv')
    assert all(rows[0][field] for field in ('content_loss', 'adversarial_loss', 'discriminator_loss'))
    assert (tmp_path / 'log_srgan.png').is_file()


def test_srgan_resume_is_exact(tiny_data, srresnet_checkpoint, tmp_path):
    args = TINY_SRGAN + [f'--data_folder={tiny_data}', f'--srresnet_checkpoint={srresnet_checkpoint}',
                         '--lr_decay_at=4', '--save_freq=3']
    train_srgan.main(args + [f'--out_dir={tmp_path / "a"}', '--iterations=6'])
    train_srgan.main(args + [f'--out_dir={tmp_path / "b"}', '--iterations=3'])
    train_srgan.main(args + [f'--out_dir={tmp_path / "b"}', '--iterations=6',
                             f'--checkpoint={tmp_path / "b" / "checkpoint_srgan.pth"}'])
    a = torch.load(tmp_path / 'a' / 'checkpoint_srgan.pth', weights_only=True)
    b = torch.load(tmp_path / 'b' / 'checkpoint_srgan.pth', weights_only=True)
    for key in ('generator', 'discriminator', 'optimizer_g', 'optimizer_d'):
        assert_same_state(a[key], b[key])


def test_srgan_steps_change_only_their_own_network(tiny_data, srresnet_checkpoint, tmp_path, monkeypatch):
    """Record every network's parameters around each optimizer step of one SRGAN iteration."""
    networks = {}

    def recording(cls, name):
        class Recording(cls):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                networks[name] = self
        return Recording

    monkeypatch.setattr(train_srgan, 'Generator', recording(train_srgan.Generator, 'generator'))
    monkeypatch.setattr(train_srgan, 'Discriminator', recording(train_srgan.Discriminator, 'discriminator'))
    monkeypatch.setattr(train_srgan, 'TruncatedVGG19', recording(train_srgan.TruncatedVGG19, 'vgg'))
    snapshots = []  # (event, {network: state})

    def snapshot(event):
        snapshots.append((event, {name: copy.deepcopy({k: v for k, v in net.named_parameters()})
                                  for name, net in networks.items()}))

    class RecordingAdam(torch.optim.Adam):
        def __init__(self, params, **kwargs):
            params = list(params)
            super().__init__(params, **kwargs)
            self.network = 'generator' if params[0] is next(networks['generator'].parameters()) else 'discriminator'
            if self.network == 'discriminator':
                snapshot('start')  # both networks built, nothing trained

        def step(self, closure=None):
            result = super().step(closure)
            snapshot(f'after {self.network} step')
            return result

    monkeypatch.setattr(torch.optim, 'Adam', RecordingAdam)
    train_srgan.main(TINY_SRGAN + [f'--data_folder={tiny_data}', f'--out_dir={tmp_path}', '--iterations=1',
                                   f'--srresnet_checkpoint={srresnet_checkpoint}'])
    assert [event for event, _ in snapshots] == ['start', 'after generator step', 'after discriminator step']
    (_, start), (_, after_g), (_, after_d) = snapshots

    def same(a, b):
        return all(torch.equal(a[key], b[key]) for key in a)

    assert not same(start['generator'], after_g['generator'])  # the generator learned...
    assert same(start['discriminator'], after_g['discriminator'])  # ...and the discriminator did not
    assert not same(after_g['discriminator'], after_d['discriminator'])  # the discriminator learned...
    assert same(after_g['generator'], after_d['generator'])  # ...and the generator did not
    assert same(start['vgg'], after_d['vgg']) and not any(p.requires_grad for p in networks['vgg'].parameters())


@pytest.mark.parametrize('script', ['srresnet', 'srgan'])
def test_learning_rate_drops_at_the_right_iteration(script, tiny_data, srresnet_checkpoint, tmp_path):
    if script == 'srresnet':
        train_srresnet.main(TINY_SRRESNET + [f'--data_folder={tiny_data}', f'--out_dir={tmp_path}',
                                             '--iterations=4', '--lr_decay_at=2', '--lr=1e-3'])
    else:
        train_srgan.main(TINY_SRGAN + [f'--data_folder={tiny_data}', f'--out_dir={tmp_path}', '--iterations=4',
                                       '--lr_decay_at=2', '--lr=1e-3', f'--srresnet_checkpoint={srresnet_checkpoint}'])
    rows = read_log(tmp_path / f'log_{script}.csv')
    assert [float(row['lr']) for row in rows] == [1e-3, 1e-3, 1e-4, 1e-4]


def test_srgan_lr_drop_defaults_to_half_the_paper_run():
    assert train_srgan.lr_decay_at * 2 == train_srgan.iterations == 200_000


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    mse_loss = torch.nn.functional.mse_loss
    calls = []

    def mse_loss_going_nan(*args, **kwargs):
        calls.append(1)
        loss = mse_loss(*args, **kwargs)
        return loss * float('nan') if len(calls) >= 4 else loss

    monkeypatch.setattr(train_srresnet.F, 'mse_loss', mse_loss_going_nan)
    with pytest.raises(SystemExit, match='loss became nan between iterations 4 and 4'):
        train_srresnet.main(TINY_SRRESNET + [f'--data_folder={tiny_data}', f'--out_dir={tmp_path}',
                                             '--iterations=6', '--save_freq=2'])
    checkpoint = torch.load(tmp_path / 'checkpoint_srresnet.pth', weights_only=True)
    assert checkpoint['iteration'] == 2
    assert all(torch.isfinite(tensor).all() for tensor in checkpoint['model'].values() if tensor.is_floating_point())


def test_clear_errors(tiny_data, srresnet_checkpoint, tmp_path):
    # A missing data list.
    result = run_script('train_srresnet.py', TINY_SRRESNET + [f'--data_folder={tmp_path}', f'--out_dir={tmp_path}'])
    assert result.returncode != 0 and 'train_images.json' in result.stderr and 'Traceback' not in result.stderr
    # An unknown key, refused before anything runs.
    result = run_script('train_srresnet.py', ['--batch_sise=8'])
    assert result.returncode != 0 and "unknown key 'batch_sise'" in result.stderr
    # A missing SRResNet checkpoint.
    args = TINY_SRGAN + [f'--data_folder={tiny_data}', f'--out_dir={tmp_path}']
    with pytest.raises(FileNotFoundError, match='SRResNet checkpoint not found'):
        train_srgan.main(args + [f'--srresnet_checkpoint={tmp_path / "nope.pth"}'])
    # The wrong kind of checkpoint: an SRGAN checkpoint where an SRResNet one belongs, and back.
    torch.save({'generator': {}, 'discriminator': {}, 'model_args': {}}, tmp_path / 'srgan.pth')
    with pytest.raises(ValueError, match="is not a SRResNet checkpoint.*'model'"):
        train_srgan.main(args + [f'--srresnet_checkpoint={tmp_path / "srgan.pth"}'])
    with pytest.raises(ValueError, match='is not a SRGAN checkpoint'):
        train_srgan.main(args + [f'--checkpoint={srresnet_checkpoint}'])
    with pytest.raises(ValueError, match='is not a SRResNet checkpoint'):
        train_srresnet.main(TINY_SRRESNET + [f'--data_folder={tiny_data}', f'--out_dir={tmp_path}',
                                             f'--checkpoint={tmp_path / "srgan.pth"}'])
