"""Every script's expected failures, run as a user runs them: one line on stderr,
`<script>: error: <what and where>`, exit status 1, and no traceback.

    python -m pytest -q tests/test_errors.py
"""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SRRESNET = ['--crop_size=32', '--n_blocks=2', '--n_channels=8', '--batch_size=2', '--workers=0', '--device=cpu',
                 '--val_freq=0', '--iterations=2']


def srresnet_run(data, out_dir, *args):
    return 'train_srresnet.py', TINY_SRRESNET + [f'--data_folder={data.folder}', f'--out_dir={out_dir}'] + list(args)


def resume_from(data, tmp_path, edit, *args):
    """A copy of the tiny SRResNet checkpoint changed by edit(state), resumed by train_srresnet.py."""
    state = torch.load(data.checkpoint, weights_only=True)
    edit(state)
    path = tmp_path / 'edited.pth'
    torch.save(state, path)
    return srresnet_run(data, tmp_path / 'run', f'--checkpoint={path}', *args)


def list_naming_a_deleted_file(tmp_path, data, list_name):
    """A copy of the tiny data lists whose `list_name` names an image that has since been deleted."""
    folder = tmp_path / 'data'
    folder.mkdir()
    for name in ('train_images.json', 'Set5_test_images.json'):
        (folder / name).write_text((data.folder / name).read_text())
    gone = tmp_path / 'deleted.png'
    paths = json.loads((data.folder / 'Set5_test_images.json').read_text()) + [str(gone)]
    (folder / list_name).write_text(json.dumps(paths))
    return folder


def write(path, content):
    path.write_bytes(content)
    return path


# Each case: (data, tmp_path) -> (script, arguments), and a regular expression the message must match.
CASES = {
    'device cuda without CUDA': (lambda data, tmp: srresnet_run(data, tmp, '--device=cuda'),
                                 r"device 'cuda' asked for, but this machine has no CUDA GPU"),
    'save_freq 0': (lambda data, tmp: srresnet_run(data, tmp, '--save_freq=0'),
                    r'save_freq must be a positive integer, got 0'),
    'print_freq 0': (lambda data, tmp: srresnet_run(data, tmp, '--print_freq=0'),
                     r'print_freq must be a positive integer, got 0'),
    'crop_size 0': (lambda data, tmp: srresnet_run(data, tmp, '--crop_size=0'),
                    r'crop_size must be a positive integer, got 0'),
    'iterations 0': (lambda data, tmp: srresnet_run(data, tmp, '--iterations=0'),
                     r'iterations must be a positive integer, got 0'),
    'unknown key': (lambda data, tmp: srresnet_run(data, tmp, '--batch_sise=8'),
                    r"unknown key 'batch_sise'; known keys: data_folder, "),
    'out_dir under a regular file': (lambda data, tmp: srresnet_run(data, write(tmp / 'a_file', b'') / 'run'),
                                     r'cannot write or read .*a_file/run: Not a directory'),
    'missing training list': (lambda data, tmp: srresnet_run(data, tmp, f'--data_folder={tmp}'),
                              r'data list not found: .*train_images.json \(make it with create_data_lists.py\)'),
    'validation list naming a deleted file': (
        lambda data, tmp: srresnet_run(data, tmp / 'run', '--val_freq=2',
                                       f'--data_folder={list_naming_a_deleted_file(tmp, data, "val_images.json")}'),
        r'val_images.json names 1 missing file\(s\), first .*deleted.png'),
    'model_args that do not match the weights': (
        lambda data, tmp: resume_from(data, tmp, lambda state: state['model_args'].update(n_blocks=3), '--n_blocks=3'),
        r'edited.pth: its SRResNet state does not fit this run: .*Missing key\(s\) .*residual_blocks.2'),
    "checkpoint lacking 'scaler'": (lambda data, tmp: resume_from(data, tmp, lambda state: state.pop('scaler')),
                                    r"edited.pth is not a SRResNet checkpoint: it lacks the keys \['scaler'\]"),
    "checkpoint lacking 'rng'": (lambda data, tmp: resume_from(data, tmp, lambda state: state.pop('rng')),
                                 r"edited.pth is not a SRResNet checkpoint: it lacks the keys \['rng'\]"),
    'SRGAN with a text file for VGG19 weights': (
        lambda data, tmp: ('train_srgan.py', [
            '--crop_size=32', '--batch_size=2', '--workers=0', '--device=cpu', '--iterations=1', '--n_channels_d=8',
            '--n_blocks_d=1', '--fc_size_d=16', '--content_loss=vgg22', f'--data_folder={data.folder}',
            f'--out_dir={tmp / "run"}', f'--srresnet_checkpoint={data.checkpoint}',
            f'--vgg19_weights={write(tmp / "vgg19.pth", b"weights are on the shared drive")}']),
        r'vgg19.pth is not a VGG19 state_dict file that torch.load can read'),
    'eval with a list naming a deleted file': (
        lambda data, tmp: ('eval.py', [
            f'--data_folder={list_naming_a_deleted_file(tmp, data, "Set5_test_images.json")}',
            "--test_data_names=['Set5']", "--models=['bicubic']", '--device=cpu',
            f'--results_file={tmp / "eval.json"}']),
        r'Set5_test_images.json names 1 missing file\(s\), first .*deleted.png'),
    'create_data_lists with a missing folder': (
        lambda data, tmp: ('create_data_lists.py', [f"--train_folders=['{tmp / 'nowhere'}']", '--test_folders=[]',
                                                    f'--output_folder={tmp / "lists"}']),
        r'image folder not found: .*nowhere'),
    'super_resolve with a zero-byte checkpoint': (
        lambda data, tmp: ('super_resolve.py', [f'--checkpoint={write(tmp / "model.pth", b"")}',
                                                f'--output_folder={tmp / "out"}']),
        r'model.pth is empty \(0 bytes\), not a checkpoint'),
    'super_resolve with a text checkpoint': (
        lambda data, tmp: ('super_resolve.py', [f'--checkpoint={write(tmp / "model.pth", b"see the README")}',
                                                f'--output_folder={tmp / "out"}']),
        r"model.pth is not a PyTorch checkpoint: it holds text, starting b'see the README'"),
}


class TinyData:
    """The shared tiny data folder and SRResNet checkpoint (tests/conftest.py), for the cases above."""

    def __init__(self, folder, checkpoint):
        self.folder, self.checkpoint = folder, checkpoint


@pytest.mark.parametrize('case', list(CASES))
def test_expected_errors_are_one_line_on_stderr_and_exit_status_1(case, tiny_data, srresnet_checkpoint, tmp_path):
    if case == 'device cuda without CUDA' and torch.cuda.is_available():
        pytest.skip('this machine has CUDA: the error cannot happen')
    make, message = CASES[case]
    script, args = make(TinyData(tiny_data, srresnet_checkpoint), tmp_path)
    result = subprocess.run([sys.executable, os.path.join(REPO, script)] + args, cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert 'Traceback' not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f'{script}: error: '), lines[0]
    assert re.search(message, lines[0]), lines[0]
