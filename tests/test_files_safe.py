"""The one rule for every file this project writes (utils.atomic_write), held against each script
that writes: nothing that exists is replaced unless the user asked (--overwrite=True); a name is
claimed when the file is complete, so a file that appears meanwhile is kept; an input is never an
output; temporaries are only ours and go only when their process has; and the errors a user can
cause (a device this machine lacks, a full disk, an unwritable folder) are one line naming what.

    python -m pytest -q tests/test_files_safe.py
"""
import errno
import json
import os
import subprocess
import sys

import pytest
import torch

import eval as eval_script
import export_onnx
import super_resolve
import train_srresnet
import utils
from conftest import TINY_SRRESNET_ARGS
from test_eval import make_data
from test_video import save_tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------
# The rule itself
# ----------------------------------------------------------------------------------------------

def write(path, text, **kwargs):
    with utils.atomic_write(str(path), 'w', **kwargs) as f:
        f.write(text)
    return f.final_path


def test_an_existing_file_is_refused_renamed_around_or_replaced_only_when_asked(tmp_path):
    target = tmp_path / 'out.txt'
    target.write_text('the user\'s')
    with pytest.raises(FileExistsError, match=r'out.txt exists and is kept \(--overwrite=True replaces it\)'):
        write(target, 'ours')
    assert write(target, 'ours', exists='next') == str(tmp_path / 'out_1.txt')
    assert write(target, 'ours again', exists='next') == str(tmp_path / 'out_2.txt')
    assert target.read_text() == 'the user\'s'
    assert write(target, 'asked for', exists='replace') == str(target) and target.read_text() == 'asked for'
    assert sorted(os.listdir(tmp_path)) == ['out.txt', 'out_1.txt', 'out_2.txt']  # no temporary left


def test_a_name_is_claimed_when_the_file_is_complete_not_when_it_was_planned(tmp_path):
    """Another program (or run) writes the same name while this one is still writing: both files live."""
    target = tmp_path / 'photo_x4.png'
    with utils.atomic_write(str(target), 'w', exists='next') as f:
        f.write('ours, written slowly')
        target.write_text('theirs, finished first')
    assert f.final_path == str(tmp_path / 'photo_x4_1.png')
    assert target.read_text() == 'theirs, finished first'
    with pytest.raises(FileExistsError):
        with utils.atomic_write(str(tmp_path / 'report.json'), 'w') as f:
            f.write('ours')
            (tmp_path / 'report.json').write_text('theirs')
    assert (tmp_path / 'report.json').read_text() == 'theirs'
    assert sorted(os.listdir(tmp_path)) == ['photo_x4.png', 'photo_x4_1.png', 'report.json']


def test_an_input_is_never_replaced_even_when_replacing_is_asked(tmp_path):
    source = tmp_path / 'model.pth'
    source.write_text('weights')
    (tmp_path / 'alias.pth').symlink_to(source)
    for name in ('model.pth', 'alias.pth'):
        with pytest.raises(utils.OutputIsInput, match=f'{name} is an input of this run'):
            write(tmp_path / name, 'export', exists='replace', inputs=[str(source)])
    assert source.read_text() == 'weights' and sorted(os.listdir(tmp_path)) == ['alias.pth', 'model.pth']


def test_temporaries_carry_a_name_only_this_project_makes(tmp_path):
    with utils.atomic_write(str(tmp_path / 'clip_x4.mp4')) as f:
        [name] = os.listdir(tmp_path)
    assert utils._TMP_NAME.fullmatch(name) and name.startswith(f'{utils.TMP_PREFIX}{os.getpid()}-')
    assert name.endswith('.mp4') and f.final_path == str(tmp_path / 'clip_x4.mp4')


def test_a_full_disk_is_an_error_that_names_the_file_and_leaves_nothing(tmp_path):
    class FullDisk:
        def write(self, data):
            raise OSError(errno.ENOSPC, 'No space left on device')
    with pytest.raises(OSError) as caught:
        with utils.atomic_write(str(tmp_path / "big.png")):
            FullDisk().write(b'x')
    assert caught.value.filename == str(tmp_path / 'big.png') and caught.value.errno == errno.ENOSPC
    assert super_resolve.runtime.error_line(caught.value) == \
        f"cannot write or read {tmp_path / 'big.png'}: No space left on device"
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# Each script that writes
# ----------------------------------------------------------------------------------------------

def test_super_resolve_replaces_an_output_only_with_overwrite(tmp_path):
    from test_super_resolve import textured_image
    checkpoint = save_tiny_checkpoint(tmp_path / 'tiny.pth')
    textured_image(9, 6).save(tmp_path / 'a.png')
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'a_x4.png').write_bytes(b'a file of the user\'s')
    args = [f'--input_path={tmp_path / "a.png"}', f'--output_folder={out}', f'--checkpoint={checkpoint}']
    assert super_resolve.main(args) == [str(out / 'a_x4_1.png')]
    assert (out / 'a_x4.png').read_bytes() == b'a file of the user\'s'
    assert super_resolve.main(args + ['--overwrite=True']) == [str(out / 'a_x4.png')]  # asked for
    assert (out / 'a_x4.png').read_bytes()[:4] == b'\x89PNG' and sorted(os.listdir(out)) == ['a_x4.png', 'a_x4_1.png']


def test_export_onnx_refuses_an_existing_file_before_working_and_never_writes_over_its_checkpoint(tmp_path):
    checkpoint = save_tiny_checkpoint(tmp_path / 'tiny.pth')
    before = (tmp_path / 'tiny.pth').read_bytes()
    (tmp_path / 'model.onnx').write_bytes(b'a file of the user\'s')
    with pytest.raises(FileExistsError, match=r'model.onnx exists and is kept \(--overwrite=True replaces it\)'):
        export_onnx.main([f'--checkpoint={checkpoint}', f'--output={tmp_path / "model.onnx"}'])
    assert (tmp_path / 'model.onnx').read_bytes() == b'a file of the user\'s'
    for overwrite in ('False', 'True'):  # --output naming the checkpoint itself
        with pytest.raises((FileExistsError, utils.OutputIsInput)):
            export_onnx.main([f'--checkpoint={checkpoint}', f'--output={checkpoint}', f'--overwrite={overwrite}'])
    assert (tmp_path / 'tiny.pth').read_bytes() == before
    assert export_onnx.main([f'--checkpoint={checkpoint}', f'--output={tmp_path / "model.onnx"}',
                             '--overwrite=True']) == str(tmp_path / 'model.onnx')
    assert (tmp_path / 'model.onnx').read_bytes() != b'a file of the user\'s'


def test_eval_writes_its_results_beside_earlier_ones_unless_told_to_replace_them(tmp_path):
    lists = make_data(tmp_path, {'SetA': [(40, 36)]})
    results = tmp_path / 'results' / 'eval.json'
    args = [f'--data_folder={lists}', "--test_data_names=['SetA']", "--models=['bicubic']", "--metrics=['psnr']",
            f'--results_file={results}']
    eval_script.main(args)
    eval_script.main(args)
    assert sorted(os.listdir(results.parent)) == ['eval.csv', 'eval.json', 'eval_1.csv', 'eval_1.json']
    eval_script.main(args + ['--overwrite=True'])
    assert sorted(os.listdir(results.parent)) == ['eval.csv', 'eval.json', 'eval_1.csv', 'eval_1.json']
    assert json.loads(results.read_text())


def test_a_fresh_training_run_keeps_an_earlier_runs_log(tiny_data, tmp_path):
    (tmp_path / 'log_srresnet.csv').write_text('an earlier run\'s log')
    with pytest.raises(ValueError, match=r'log_srresnet.csv exists and is kept: start elsewhere'):
        train_srresnet.main(TINY_SRRESNET_ARGS + [f'--data_folder={tiny_data}', f'--out_dir={tmp_path}',
                                                  '--iterations=1'])
    assert (tmp_path / 'log_srresnet.csv').read_text() == 'an earlier run\'s log'


# ----------------------------------------------------------------------------------------------
# One line for what a user can cause
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('args, message', [
    (['--device=mps'], "device 'mps' asked for, but this machine has no mps device"),
    (['--device=xpu'], "device 'xpu' asked for, but this machine has no xpu device"),
    (['--device=tpu'], "device 'tpu' is not a device name"),
    (['--output_folder=/proc/version'], "output_folder '/proc/version' is a file, not a folder"),
    (['--output_folder=/proc/no_such_folder'], "cannot write or read /proc/no_such_folder"),
])
def test_options_this_machine_cannot_honour_are_one_line(args, message, tmp_path):
    if 'mps' in args[0] and torch.backends.mps.is_available() or 'xpu' in args[0] and torch.xpu.is_available():
        pytest.skip('this machine has the device')
    done = subprocess.run([sys.executable, 'super_resolve.py', *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and 'Traceback' not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith('super_resolve.py: error: ') and message in line
