"""train_srresnet.py and train_srgan.py on tiny generated images: runs from the command line,
exact resume on both data paths, which step changes which network, the learning-rate schedules,
fine-tuning, the SRGAN content losses, NaN handling, and the "nothing lost" guarantees (an
earlier run is not overwritten, stale temporaries go, a bad validation list stops the start).
The one-line command-line errors are in test_errors.py."""
import copy
import csv
import os
import shutil
import subprocess
import sys

import pytest
import torch

import models
import runtime
import train_srgan
import train_srresnet
from models import SRResNet
from runtime import ConfigError, TrainingDiverged

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SRRESNET = ['--crop_size=32', '--n_blocks=2', '--n_channels=8', '--batch_size=2', '--workers=0', '--device=cpu',
                 '--val_freq=0', '--print_freq=1']
TINY_SRGAN_ANY_LOSS = ['--crop_size=32', '--batch_size=2', '--workers=0', '--device=cpu', '--val_freq=0',
                       '--print_freq=1', '--n_channels_d=8', '--n_blocks_d=2', '--fc_size_d=16', '--vgg19_weights=']
# VGG22 is the VGG content loss that builds fast (VGG54 builds all 16 convolutions: 3 s here).
TINY_SRGAN = TINY_SRGAN_ANY_LOSS + ['--content_loss=vgg22']


def run_script(script, args, cwd=REPO):
    """Run a script as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(REPO, script)] + args, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def read_log(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def load(path):
    return torch.load(path, weights_only=True)


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


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


# ----------------------------------------------------------------------------------------------
# Runs and exact resumption
# ----------------------------------------------------------------------------------------------

def test_srresnet_command_line_run(tiny_data, tmp_path):
    result = run_script('train_srresnet.py', TINY_SRRESNET + [
        f'--data_folder={tiny_data}', f'--out_dir={tmp_path}', '--iterations=4', '--val_freq=2', '--print_freq=2'])
    assert result.returncode == 0, result.stderr
    assert '[4/4] loss' in result.stdout and 'samples/s' in result.stdout
    assert 'val: PSNR' in result.stdout  # validated on the image held out of training
    checkpoint = load(tmp_path / 'checkpoint_srresnet.pth')
    assert {'model', 'optimizer', 'scaler', 'rng', 'iteration', 'model_args', 'config'} <= checkpoint.keys()
    assert checkpoint['iteration'] == 4 and checkpoint['config']['iterations'] == 4
    SRResNet(**checkpoint['model_args']).load_state_dict(checkpoint['model'])  # strict: plain keys
    assert (tmp_path / 'checkpoint_srresnet_best.pth').is_file() and (tmp_path / 'log_srresnet.png').is_file()
    rows = read_log(tmp_path / 'log_srresnet.csv')
    assert [row['iteration'] for row in rows if row['loss']] == ['2', '4']
    assert [row['iteration'] for row in rows if row['val_psnr']] == ['2', '4']


@pytest.mark.parametrize('amp, data_on_device, degradation', [
    ('off', 'off', 'bicubic'), ('bf16', 'off', 'bicubic'), ('fp16', 'off', 'bicubic'), ('off', 'on', 'bicubic'),
    ('off', 'off', 'realistic'), ('off', 'on', 'realistic')])
def test_srresnet_resume_is_exact(tiny_data, tmp_path, capsys, amp, data_on_device, degradation):
    """6 iterations straight == 3 iterations, then a resume to 6, bit for bit, on the DataLoader
    path (resumed with other workers, too) and on the device stream, with either degradation.
    'bf16' and 'fp16' run the autocast and GradScaler code paths on the CPU."""
    args = TINY_SRRESNET + [f'--data_folder={tiny_data}', f'--amp={amp}', f'--data_on_device={data_on_device}',
                            '--lr_decay_at=4', '--save_freq=3', f'--degradation={degradation}']
    straight = train_srresnet.main(args + [f'--out_dir={tmp_path / "a"}', '--iterations=6'])
    train_srresnet.main(args + [f'--out_dir={tmp_path / "b"}', '--iterations=3', '--workers=2'])
    resumed = train_srresnet.main(args + [f'--out_dir={tmp_path / "b"}', '--iterations=6',
                                          f'--checkpoint={tmp_path / "b" / "checkpoint_srresnet.pth"}'])
    path = 'Training batches: on the cpu' if data_on_device == 'on' else 'Training batches: DataLoader'
    assert capsys.readouterr().out.count(path) == 3
    assert resumed['iteration'] == straight['iteration'] == 6
    a, b = load(tmp_path / 'a' / 'checkpoint_srresnet.pth'), load(tmp_path / 'b' / 'checkpoint_srresnet.pth')
    assert_same_state(a['model'], b['model'])
    assert_same_state(a['optimizer'], b['optimizer'])
    assert a['config']['degradation'] == degradation  # recorded, so eval.py and super_resolve.py can name it
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
    assert 'content' in result.stdout and 'discriminator' in result.stdout and 'val: PSNR' in result.stdout
    checkpoint = load(tmp_path / 'checkpoint_srgan.pth')
    assert {'generator', 'discriminator', 'optimizer_g', 'optimizer_d', 'iteration', 'model_args',
            'config'} <= checkpoint.keys()
    assert checkpoint['iteration'] == 2 and checkpoint['config']['content_loss'] == 'vgg22'
    rows = read_log(tmp_path / 'log_srgan.csv')
    assert all(rows[0][field] for field in ('content_loss', 'adversarial_loss', 'discriminator_loss'))
    assert (tmp_path / 'log_srgan.png').is_file()
    assert not list(tmp_path.glob('generator_*.pth'))  # snapshots are off by default


def test_srgan_snapshots_are_each_checkpoints_generator_in_float16(tiny_data, srresnet_checkpoint, tmp_path):
    train_srgan.main(TINY_SRGAN_ANY_LOSS + [f'--data_folder={tiny_data}', f'--out_dir={tmp_path}', '--content_loss=mse',
                                            f'--srresnet_checkpoint={srresnet_checkpoint}', '--iterations=4',
                                            '--save_freq=2', '--snapshots=True'])
    assert sorted(path.name for path in tmp_path.glob('generator_*.pth')) == ['generator_000002.pth',
                                                                              'generator_000004.pth']
    first, last = load(tmp_path / 'generator_000002.pth'), load(tmp_path / 'generator_000004.pth')
    assert (first['iteration'], last['iteration']) == (2, 4) and 'discriminator' not in last
    trained = load(tmp_path / 'checkpoint_srgan.pth')['generator']
    assert last['generator'].keys() == trained.keys()
    for name, tensor in trained.items():
        assert torch.equal(last['generator'][name], tensor.half() if tensor.is_floating_point() else tensor)
    assert not same_weights(first['generator'], last['generator'])  # two iterations apart: two models
    model, _ = runtime.load_sr_model(tmp_path / 'generator_000002.pth', kind='srgan')  # what eval.py takes
    assert not model.training


@pytest.mark.parametrize('content_loss, data_on_device, degradation', [
    ('vgg22', 'off', 'bicubic'), ('mse', 'on', 'bicubic'), ('mse', 'off', 'realistic')])
def test_srgan_resume_is_exact(tiny_data, srresnet_checkpoint, tmp_path, content_loss, data_on_device, degradation):
    args = TINY_SRGAN_ANY_LOSS + [f'--data_folder={tiny_data}', f'--srresnet_checkpoint={srresnet_checkpoint}',
                                  f'--content_loss={content_loss}', f'--data_on_device={data_on_device}',
                                  '--lr_decay_at=4', '--save_freq=3', f'--degradation={degradation}']
    train_srgan.main(args + [f'--out_dir={tmp_path / "a"}', '--iterations=6'])
    train_srgan.main(args + [f'--out_dir={tmp_path / "b"}', '--iterations=3'])
    train_srgan.main(args + [f'--out_dir={tmp_path / "b"}', '--iterations=6',
                             f'--checkpoint={tmp_path / "b" / "checkpoint_srgan.pth"}'])
    a, b = load(tmp_path / 'a' / 'checkpoint_srgan.pth'), load(tmp_path / 'b' / 'checkpoint_srgan.pth')
    for key in ('generator', 'discriminator', 'optimizer_g', 'optimizer_d', 'scaler'):
        assert_same_state(a[key], b[key])
    assert not same_weights(a['generator'], load(srresnet_checkpoint)['model'])  # it trained


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

    assert not same_weights(start['generator'], after_g['generator'])  # the generator learned...
    assert same_weights(start['discriminator'], after_g['discriminator'])  # ...and the discriminator did not
    assert not same_weights(after_g['discriminator'], after_d['discriminator'])  # the discriminator learned...
    assert same_weights(after_g['generator'], after_d['generator'])  # ...and the generator did not
    assert same_weights(start['vgg'], after_d['vgg']) and not any(p.requires_grad for p in networks['vgg'].parameters())


# ----------------------------------------------------------------------------------------------
# Learning-rate schedules, read back from the CSV log
# ----------------------------------------------------------------------------------------------

def logged_learning_rates(script, tiny_data, srresnet_checkpoint, out_dir, args):
    if script == 'srresnet':
        train_srresnet.main(TINY_SRRESNET + [f'--data_folder={tiny_data}', f'--out_dir={out_dir}'] + args)
    else:
        train_srgan.main(TINY_SRGAN + [f'--data_folder={tiny_data}', f'--out_dir={out_dir}',
                                       f'--srresnet_checkpoint={srresnet_checkpoint}'] + args)
    return [float(row['lr']) for row in read_log(out_dir / f'log_{script}.csv')]


@pytest.mark.parametrize('script', ['srresnet', 'srgan'])
@pytest.mark.parametrize('decay_at, expected', [(2, [1e-3, 1e-3, 1e-4, 1e-4]), (0, [1e-3] * 4)])
def test_learning_rate_drops_after_lr_decay_at_and_zero_means_never(script, decay_at, expected, tiny_data,
                                                                    srresnet_checkpoint, tmp_path):
    lrs = logged_learning_rates(script, tiny_data, srresnet_checkpoint, tmp_path,
                                ['--iterations=4', f'--lr_decay_at={decay_at}', '--lr_decay=0.1', '--lr=1e-3'])
    assert lrs == expected


def test_cosine_schedule_with_warmup_in_a_run(tiny_data, tmp_path):
    lrs = logged_learning_rates('srresnet', tiny_data, None, tmp_path, [
        '--iterations=6', '--lr_schedule=cosine', '--warmup_iterations=2', '--lr=1e-3'])
    expected = [runtime.learning_rate_at(i, 1e-3, 'cosine', 6, warmup=2) for i in range(1, 7)]
    assert lrs == [pytest.approx(lr, rel=1e-3) for lr in expected]
    assert lrs[:3] == [5e-4, 1e-3, 1e-3] and lrs[3] < lrs[2] and lrs[-1] < 1.5e-4


def test_default_schedules_are_the_papers():
    """The SRResNet keeps its lr (lr_decay_at=0: never); the SRGAN drops it 10x at half its run."""
    schedule = lambda module, iteration: runtime.learning_rate_at(
        iteration, module.lr, module.lr_schedule, module.iterations, module.lr_decay_at, module.lr_decay,
        module.warmup_iterations)
    assert train_srresnet.lr_decay_at == 0 and schedule(train_srresnet, train_srresnet.iterations) == 1e-4
    assert train_srgan.lr_decay_at * 2 == train_srgan.iterations == 200_000
    assert schedule(train_srgan, 100_000) == 1e-4 and schedule(train_srgan, 100_001) == pytest.approx(1e-5)


# ----------------------------------------------------------------------------------------------
# Fine-tuning and augmentation
# ----------------------------------------------------------------------------------------------

def test_init_weights_starts_from_the_checkpoint_with_a_fresh_optimizer(tiny_data, srresnet_checkpoint, tmp_path,
                                                                        monkeypatch):
    weights_at_first_forward = []

    class Recording(SRResNet):
        def forward(self, lr_imgs):
            if not weights_at_first_forward:
                weights_at_first_forward.append({k: v.detach().clone() for k, v in self.state_dict().items()})
            return super().forward(lr_imgs)

    monkeypatch.setattr(train_srresnet, 'SRResNet', Recording)
    source = load(srresnet_checkpoint)
    result = train_srresnet.main(TINY_SRRESNET + [f'--data_folder={tiny_data}', f'--out_dir={tmp_path}',
                                                  '--iterations=2', f'--init_weights={srresnet_checkpoint}'])
    assert_same_state(weights_at_first_forward[0], source['model'])
    torch.manual_seed(0)  # what a fresh run of the same seed would have started from instead
    assert not same_weights(SRResNet(**source['model_args']).state_dict(), source['model'])
    checkpoint = load(tmp_path / 'checkpoint_srresnet.pth')
    assert result['iteration'] == checkpoint['iteration'] == 2
    assert not same_weights(checkpoint['model'], source['model'])  # and then it trained
    # A fresh Adam: 2 steps of its own, where a resumed one would be at the source's 2 + 2.
    assert {float(state['step']) for state in source['optimizer']['state'].values()} == {2.}
    assert {float(state['step']) for state in checkpoint['optimizer']['state'].values()} == {2.}
    assert [row['iteration'] for row in read_log(tmp_path / 'log_srresnet.csv')] == ['1', '2']


def test_init_weights_refuses_another_model_shape(tiny_data, srresnet_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="model_args .*'n_blocks': 2.*not .*'n_blocks': 1"):
        train_srresnet.main(TINY_SRRESNET + [f'--data_folder={tiny_data}', f'--out_dir={tmp_path}', '--n_blocks=1',
                                             '--iterations=1', f'--init_weights={srresnet_checkpoint}'])
    assert not (tmp_path / 'log_srresnet.csv').exists()


@pytest.mark.parametrize('data_on_device', ['on', 'off'])
def test_augment_trains_on_other_samples(tiny_data, tmp_path, data_on_device):
    models_trained = {}
    for augment in (False, True):
        out_dir = tmp_path / str(augment)
        result = train_srresnet.main(TINY_SRRESNET + [f'--data_folder={tiny_data}', f'--out_dir={out_dir}',
                                                      '--iterations=2', f'--augment={augment}',
                                                      f'--data_on_device={data_on_device}'])
        assert result['iteration'] == 2 and load(out_dir / 'checkpoint_srresnet.pth')['config']['augment'] is augment
        models_trained[augment] = result['model'].state_dict()
        assert runtime.all_finite(models_trained[augment].values())
    assert not same_weights(models_trained[False], models_trained[True])  # the flips reached the training


# ----------------------------------------------------------------------------------------------
# The SRGAN's content losses
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('content_loss', ['vgg54', 'vgg22', 'mse'])
def test_each_srgan_content_loss_trains_and_resumes_only_as_itself(content_loss, tiny_data, srresnet_checkpoint,
                                                                   tmp_path, monkeypatch):
    if content_loss == 'mse':
        def no_vgg(*args, **kwargs):
            raise AssertionError("content_loss='mse' built a VGG19")
        monkeypatch.setattr(models, 'TruncatedVGG19', no_vgg)
        monkeypatch.setattr(train_srgan, 'TruncatedVGG19', no_vgg)
    args = TINY_SRGAN_ANY_LOSS + [f'--data_folder={tiny_data}', f'--out_dir={tmp_path}',
                                  f'--srresnet_checkpoint={srresnet_checkpoint}', f'--content_loss={content_loss}']
    result = train_srgan.main(args + ['--iterations=2'])
    checkpoint = load(tmp_path / 'checkpoint_srgan.pth')
    assert result['iteration'] == checkpoint['iteration'] == 2
    assert checkpoint['config']['content_loss'] == content_loss
    content_losses = [float(row['content_loss']) for row in read_log(tmp_path / 'log_srgan.csv')]
    assert len(content_losses) == 2 and all(0 <= loss < float('inf') for loss in content_losses)
    if content_loss == 'mse':  # pixels in [-1, 1]: a visible error (random VGG19 features are nearly 0)
        assert all(loss > 1e-4 for loss in content_losses)
    other = 'mse' if content_loss != 'mse' else 'vgg54'
    with pytest.raises(ConfigError, match=f"trained with content_loss='{content_loss}', not '{other}'"):
        train_srgan.main(args[:-1] + [f'--content_loss={other}', '--iterations=3',
                                      f'--checkpoint={tmp_path / "checkpoint_srgan.pth"}'])
    assert load(tmp_path / 'checkpoint_srgan.pth')['iteration'] == 2


def test_srgan_refuses_an_unknown_content_loss(tiny_data, srresnet_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="content_loss must be 'vgg54', 'vgg22' or 'mse', got 'vgg33'"):
        train_srgan.main(TINY_SRGAN_ANY_LOSS + [f'--data_folder={tiny_data}', f'--out_dir={tmp_path}',
                                                f'--srresnet_checkpoint={srresnet_checkpoint}', '--content_loss=vgg33'])


# ----------------------------------------------------------------------------------------------
# Nothing lost
# ----------------------------------------------------------------------------------------------

def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    mse_loss = torch.nn.functional.mse_loss
    calls = []

    def mse_loss_going_nan(*args, **kwargs):
        calls.append(1)
        loss = mse_loss(*args, **kwargs)
        return loss * float('nan') if len(calls) >= 4 else loss

    monkeypatch.setattr(train_srresnet.F, 'mse_loss', mse_loss_going_nan)
    with pytest.raises(TrainingDiverged, match='non-finite .* between iterations 4 and 4'):
        train_srresnet.main(TINY_SRRESNET + [f'--data_folder={tiny_data}', f'--out_dir={tmp_path}',
                                             '--iterations=6', '--save_freq=2'])
    checkpoint = load(tmp_path / 'checkpoint_srresnet.pth')
    assert checkpoint['iteration'] == 2
    assert runtime.all_finite(tensor for tensor in checkpoint['model'].values() if tensor.is_floating_point())


def run_in(script, out_dir, tiny_data, srresnet_checkpoint, *args):
    """A 1-iteration run of either script (the SRGAN with the MSE loss) into out_dir."""
    if script == 'srresnet':
        return train_srresnet.main(TINY_SRRESNET + [f'--data_folder={tiny_data}', f'--out_dir={out_dir}',
                                                    '--iterations=1'] + list(args))
    return train_srgan.main(TINY_SRGAN_ANY_LOSS + [f'--data_folder={tiny_data}', f'--out_dir={out_dir}',
                                                   '--content_loss=mse', f'--srresnet_checkpoint={srresnet_checkpoint}',
                                                   '--iterations=1'] + list(args))


@pytest.mark.parametrize('script', ['srresnet', 'srgan'])
def test_a_fresh_run_into_an_earlier_runs_out_dir_is_refused(script, tiny_data, srresnet_checkpoint, tmp_path):
    run_in(script, tmp_path, tiny_data, srresnet_checkpoint, '--iterations=2', '--val_freq=2')
    outputs = sorted(os.listdir(tmp_path))
    assert f'checkpoint_{script}.pth' in outputs and f'log_{script}.csv' in outputs
    before = {name: ((tmp_path / name).read_bytes(), os.stat(tmp_path / name).st_mtime_ns) for name in outputs}
    with pytest.raises(ConfigError) as error:
        run_in(script, tmp_path, tiny_data, srresnet_checkpoint)
    assert f'--checkpoint={tmp_path / f"checkpoint_{script}.pth"}' in str(error.value)
    assert '--out_dir' in str(error.value) and '--overwrite=True' in str(error.value)
    assert {name: ((tmp_path / name).read_bytes(), os.stat(tmp_path / name).st_mtime_ns) for name in outputs} == before
    # Asked for, it restarts: a new run of 1 iteration, no trace of the earlier one's.
    run_in(script, tmp_path, tiny_data, srresnet_checkpoint, '--overwrite=True')
    assert load(tmp_path / f'checkpoint_{script}.pth')['iteration'] == 1
    assert [row['iteration'] for row in read_log(tmp_path / f'log_{script}.csv')] == ['1']
    assert not (tmp_path / f'checkpoint_{script}_best.pth').exists()  # the earlier run's best went with it


def test_stale_temporaries_go_when_a_run_starts_or_resumes(tiny_data, tmp_path):
    finished = subprocess.Popen([sys.executable, '-c', 'pass'])
    finished.wait()  # its id now names no process
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
    try:
        alive = f'.srtmp-{sleeper.pid}-writing1.pth'  # another run, still writing into the same folder
        for stage, args in (('start', []), ('resume', [f'--checkpoint={tmp_path / "checkpoint_srresnet.pth"}',
                                                       '--iterations=2'])):
            dead = f'.srtmp-{finished.pid}-{stage:_<8}.pth'  # what a killed run left
            (tmp_path / dead).write_bytes(b'torn checkpoint')
            (tmp_path / alive).write_bytes(b'half written')
            train_srresnet.main(TINY_SRRESNET + [f'--data_folder={tiny_data}', f'--out_dir={tmp_path}',
                                                 '--iterations=1'] + args)
            assert not (tmp_path / dead).exists(), stage
            assert (tmp_path / alive).read_bytes() == b'half written', stage
    finally:
        sleeper.kill()
        sleeper.wait()
    assert load(tmp_path / 'checkpoint_srresnet.pth')['iteration'] == 2


def test_a_validation_list_naming_a_deleted_file_stops_the_run_before_training(tiny_data, tmp_path, monkeypatch):
    data_folder = tmp_path / 'data'
    data_folder.mkdir()
    shutil.copy(tiny_data / 'train_images.json', data_folder)
    image = tmp_path / 'val.png'
    shutil.copy(tiny_data / 'Set5' / '0.png', image)
    (data_folder / 'val_images.json').write_text(f'["{image}"]')
    image.unlink()
    losses = []
    monkeypatch.setattr(train_srresnet.F, 'mse_loss', lambda *args: losses.append(args))
    with pytest.raises(FileNotFoundError, match=f'val_images.json names 1 missing file.*{image}'):
        train_srresnet.main(TINY_SRRESNET + [f'--data_folder={data_folder}', f'--out_dir={tmp_path / "run"}',
                                             '--iterations=4', '--val_freq=4'])
    assert losses == [] and not (tmp_path / 'run' / 'log_srresnet.csv').exists()


def test_clear_errors_for_the_wrong_checkpoints(tiny_data, srresnet_checkpoint, tmp_path):
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
    # A missing training list.
    with pytest.raises(FileNotFoundError, match=f'data list not found: {tmp_path / "train_images.json"}'):
        train_srresnet.main(TINY_SRRESNET + [f'--data_folder={tmp_path}', f'--out_dir={tmp_path / "run"}'])
