"""Tests of export_onnx.py: the file onnxruntime runs equals this project's PyTorch forward pass, at
two sizes and two batches from one export (dynamic axes), for an SRResNet and an SRGAN checkpoint;
its contract ([0, 1] RGB in and out, the normalisation inside the graph); the rewrites in the
graph; and a file that fails the check is never written.

The reference is written out here rather than taken from export_onnx.py: the plain SRResNet, as
trained, between the ImageNet normalisation and the [-1, 1] -> [0, 1] mapping.

    python -m pytest -q tests/test_export_onnx.py
"""
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import export_onnx
import runtime
from models import ShuffledConv2d, SRResNet, freeze_shuffled_convolutions
from test_super_resolve import MODEL_ARGS, random_model  # the same tiny SRResNets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save_checkpoint(path, key, seed):
    """A tiny SRResNet with non-trivial BatchNorm statistics (so folding them changes the weights),
    saved as an SRResNet ('model') or SRGAN ('generator') checkpoint."""
    torch.save({key: random_model(seed).state_dict(), 'model_args': MODEL_ARGS, 'iteration': 7,
                'config': {'content_loss': 'mse'} if key == 'generator' else {}}, path)
    return str(path)


def reference(checkpoint, lr_imgs):
    """The plain network's output for RGB images in [0, 1], mapped to [0, 1]: what the file must compute."""
    model, _ = runtime.load_sr_model(checkpoint, 'cpu')
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        return ((model((lr_imgs - mean) / std) + 1.) / 2.).numpy()


@pytest.mark.parametrize('key', ['model', 'generator'])  # an SRResNet, and an SRGAN's generator
def test_onnxruntime_equals_pytorch_at_two_sizes_from_one_export(tmp_path, key, capsys):
    checkpoint = save_checkpoint(tmp_path / f'{key}.pth', key, seed=1 if key == 'model' else 2)
    out = tmp_path / 'model.onnx'
    assert export_onnx.main([f'--checkpoint={checkpoint}', f'--output={out}']) == str(out)
    assert ('Model: SRResNet x4' if key == 'model' else 'Model: SRGAN-MSE x4') in capsys.readouterr().out
    model = onnxruntime.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    [lr], [sr] = model.get_inputs(), model.get_outputs()
    assert (lr.name, lr.type, lr.shape[1]) == ('lr', 'tensor(float)', 3) and sr.name == 'sr'
    assert all(isinstance(dim, str) for dim in lr.shape[:1] + lr.shape[2:])  # batch, height, width: dynamic
    rng = np.random.default_rng(3)
    for batch, height, width in ((1, 20, 28), (3, 13, 9)):
        lr_imgs = rng.random((batch, 3, height, width), dtype=np.float32)  # RGB in [0, 1]
        [actual] = model.run(['sr'], {'lr': lr_imgs})
        expected = reference(checkpoint, torch.from_numpy(lr_imgs))
        assert actual.shape == expected.shape == (batch, 3, 4 * height, 4 * width) and actual.dtype == np.float32
        assert 0. <= actual.min() and actual.max() <= 1.
        # Outputs that vary by far more than the tolerance, and are not a tanh saturated at 0 or 1.
        assert expected.std() > 0.02 and ((expected < 0.01) | (expected > 0.99)).mean() < 0.5
        assert np.abs(actual - expected).max() <= 1e-3


def test_the_graph_holds_the_inference_rewrites_and_says_its_contract(tmp_path):
    checkpoint = save_checkpoint(tmp_path / 'srresnet.pth', 'model', seed=1)
    out = tmp_path / 'model.onnx'
    export_onnx.main([f'--checkpoint={checkpoint}', f'--output={out}'])
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert [(opset.domain, opset.version) for opset in proto.opset_import] == [('', export_onnx.opset)]
    assert proto.ir_version == 8  # opset 18's file format, not the exporter's newest: older runtimes read it
    operators = {node.op_type for node in proto.graph.node}
    assert operators == {'Conv', 'LeakyRelu', 'Add', 'Sub', 'Div', 'Tanh', 'DepthToSpace'}  # no BatchNorm, no gather
    # 2 blocks: 1 + 2 * 2 + 1 convolutions, one per sub-pixel block (2), and the last: 9, none for the BatchNorms.
    assert sum(node.op_type == 'Conv' for node in proto.graph.node) == 9
    last_conv = [node for node in proto.graph.node if node.op_type == 'Conv'][-1]
    weights = {tensor.name: tensor for tensor in proto.graph.initializer}
    assert list(weights[last_conv.input[1]].dims) == [12, 64, 5, 5]  # the shuffled 5x5, not the 9x9 on HR pixels
    assert {prop.key: prop.value for prop in proto.metadata_props} == \
        {'scaling_factor': '4', 'input_range': '[0, 1]', 'channel_order': 'RGB'}
    assert "input 'lr' float32 RGB in [0, 1]" in proto.doc_string


def test_frozen_shuffled_convolution_computes_what_the_shuffled_one_does():
    model = SRResNet(**MODEL_ARGS).eval()
    lr_imgs = torch.randn(2, 3, 7, 6)
    with torch.no_grad():
        expected = model(lr_imgs)
        frozen = freeze_shuffled_convolutions(
            export_onnx.prepare_for_inference(model, channels_last=False))
        assert not any(isinstance(module, ShuffledConv2d) for module in frozen.modules())
        torch.testing.assert_close(frozen(lr_imgs), expected, atol=1e-5, rtol=0)


def test_a_file_that_fails_the_check_is_not_written(tmp_path, monkeypatch):
    checkpoint = save_checkpoint(tmp_path / 'srresnet.pth', 'model', seed=1)
    out = tmp_path / 'model.onnx'
    run = onnxruntime.InferenceSession.run

    def off_by_a_grey_level(self, output_names, feeds, *args, **kwargs):
        return [output + 1 / 255 for output in run(self, output_names, feeds, *args, **kwargs)]
    monkeypatch.setattr(onnxruntime.InferenceSession, 'run', off_by_a_grey_level)
    with pytest.raises(ValueError, match=r'differs from PyTorch\'s by 3\.9\de-03, over the tolerance 0\.001: '
                                         r'.*model.onnx was not written'):
        export_onnx.main([f'--checkpoint={checkpoint}', f'--output={out}'])
    assert os.listdir(tmp_path) == ['srresnet.pth']  # neither the file nor a temporary one


def test_errors_are_one_line(tmp_path):
    result = subprocess.run([sys.executable, 'export_onnx.py', f'--checkpoint={tmp_path / "missing.pth"}'],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"export_onnx.py: error: SRResNet or SRGAN checkpoint not found: "
                                          f"'{tmp_path / 'missing.pth'}'"]
