"""Both training scripts under torchrun: 2 processes, Gloo on the CPU, tiny generated images.
The SRResNet runs take their batches from the device stream, the SRGAN's from a DataLoader."""
import os
import socket
import subprocess
import sys

import pytest
import torch
from torch import nn

import runtime
import train_srresnet
from models import SRResNet
from test_train import TINY_SRGAN, TINY_SRRESNET, assert_same_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def torchrun(script, out_dir, args, nproc=2):
    """torchrun tests/ddp_worker.py: each rank trains, then saves its final weights as rank<N>.pth."""
    command = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}',
               f'--master_port={free_port()}', os.path.join(REPO, 'tests', 'ddp_worker.py'), script, str(out_dir)]
    return subprocess.run(command + args + [f'--out_dir={out_dir}'], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, 'OMP_NUM_THREADS': '1'})


def test_srresnet_two_processes_end_identical(tiny_data, tmp_path):
    result = torchrun('train_srresnet', tmp_path, TINY_SRRESNET + [f'--data_folder={tiny_data}', '--iterations=3',
                                                                   '--data_on_device=on'])
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'processes: 2' in result.stdout and 'Training batches: on the cpu' in result.stdout
    assert result.stdout.count('[3/3] loss') == 1  # rank 0 alone prints
    rank0 = torch.load(tmp_path / 'rank0.pth', weights_only=True)
    rank1 = torch.load(tmp_path / 'rank1.pth', weights_only=True)
    assert_same_state(rank0, rank1)
    # The checkpoint holds plain keys (no 'module.') and the model the ranks ended with.
    checkpoint = torch.load(tmp_path / 'checkpoint_srresnet.pth', weights_only=True)
    assert_same_state(checkpoint['model'], rank0['model'])
    assert not any(key.startswith('module.') for key in checkpoint['model'])

    # A 2-process checkpoint resumes in a plain 1-process run.
    result = train_srresnet.main(TINY_SRRESNET + [f'--data_folder={tiny_data}', f'--out_dir={tmp_path / "single"}',
                                                  '--iterations=4',
                                                  f'--checkpoint={tmp_path / "checkpoint_srresnet.pth"}'])
    assert result['iteration'] == 4


def test_srresnet_ranks_draw_different_samples(tiny_data):
    """Each rank's share of an iteration is disjoint from the others' (global batch = 2 x batch)."""
    from datasets import ResumableSampler
    streams = [list(ResumableSampler(6, 2, 3, seed=0, rank=rank, world_size=2)) for rank in (0, 1)]
    assert not set(streams[0]) & set(streams[1])


def test_srgan_two_processes_end_identical(tiny_data, srresnet_checkpoint, tmp_path):
    result = torchrun('train_srgan', tmp_path, TINY_SRGAN + [f'--data_folder={tiny_data}', '--iterations=2',
                                                             f'--srresnet_checkpoint={srresnet_checkpoint}',
                                                             '--data_on_device=off'])
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Training batches: DataLoader' in result.stdout
    rank0 = torch.load(tmp_path / 'rank0.pth', weights_only=True)
    rank1 = torch.load(tmp_path / 'rank1.pth', weights_only=True)
    assert_same_state(rank0, rank1)
    checkpoint = torch.load(tmp_path / 'checkpoint_srgan.pth', weights_only=True)
    assert_same_state(checkpoint['generator'], rank0['generator'])
    assert_same_state(checkpoint['discriminator'], rank0['discriminator'])


def test_sync_bn_is_refused_on_the_cpu(tiny_data, tmp_path):
    result = torchrun('train_srresnet', tmp_path, TINY_SRRESNET + [f'--data_folder={tiny_data}', '--iterations=1',
                                                                   '--sync_bn=True'])
    assert result.returncode != 0 and "SyncBatchNorm does not run on the CPU" in result.stderr


def test_sync_batchnorm_saves_plain_batchnorm_keys():
    """What the scripts save from a SyncBatchNorm model loads, strictly, into a plain SRResNet.
    (Running SyncBatchNorm itself needs CUDA, which CI does not have.)"""
    model = SRResNet(n_blocks=2, n_channels=8)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == 5
    plain = SRResNet(n_blocks=2, n_channels=8)
    plain.load_state_dict(runtime.unwrap(synced).state_dict())  # strict
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in plain.modules())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs 2 CUDA GPUs')
def test_sync_bn_on_two_gpus(tiny_data, tmp_path):
    args = [arg for arg in TINY_SRRESNET if not arg.startswith('--device')]
    result = torchrun('train_srresnet', tmp_path, args + [
        '--device=cuda', f'--data_folder={tiny_data}', '--iterations=2', '--sync_bn=True'])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count('5 SyncBatchNorm layers') == 2
    SRResNet(n_blocks=2, n_channels=8).load_state_dict(
        torch.load(tmp_path / 'checkpoint_srresnet.pth', weights_only=True)['model'])
