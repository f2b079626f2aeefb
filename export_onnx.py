"""Step 6: export a trained SRResNet or SRGAN generator to ONNX, for onnxruntime, OpenCV, chaiNNer
or a browser (onnxruntime-web).

    python export_onnx.py                                                  # the shipped SRResNet -> srresnet_x4.onnx
    python export_onnx.py --checkpoint=checkpoints/srresnet_x4.pth --output=srresnet_x4.onnx
    python export_onnx.py --checkpoint=checkpoints/srgan_mse_x4.pth      # its generator -> srgan_mse_x4.onnx
    python export_onnx.py --denoise=0.5 --texture=0.3     # a blend of the shipped models -> srresnet_d0.5_t0.3_x4.onnx

The file keeps the contract other super-resolution tools expect, so that it runs without this
project's code: one input 'lr', float32 RGB in [0, 1], NCHW, and one output 'sr', float32 RGB in
[0, 1], (N, 3, H * s, W * s). The ImageNet normalisation in front of the network and the mapping
of its tanh output from [-1, 1] to [0, 1] are part of the graph. The batch, the height and the
width are dynamic: one file takes any image size and any batch.

The graph is that of super_resolve.py's fast model (prepare_for_inference), where the rewrite
exports cleanly: the BatchNorms folded into the convolutions, single-slope PReLUs as LeakyRelu,
and the last 9x9 convolution as the equivalent 5x5 convolution before the last pixel shuffle
(frozen into a plain Conv and DepthToSpace, so no weight gathering is left in the graph; with
it the whole model ran 1.56x faster in onnxruntime than with the plain last convolution).
channels_last is PyTorch's memory format, not a graph operation, so it is left out: each
runtime picks its own layout. The file holds only the ONNX operators Conv, LeakyRelu, Add, Sub,
Div, Tanh and DepthToSpace, none of which has changed meaning since opset 13. Opset 18 is the
lowest that torch.onnx's exporter writes itself: lower ones go through ONNX's version converter
(17 converts; 13 does not, and is refused here rather than silently written as 18). The file is
stamped with IR version 8, opset 18's own, so onnxruntime 1.14 (2023) and newer can read it.

Before it reports success, the script runs the file in onnxruntime at each of `check_sizes` and
compares it with this project's PyTorch forward pass of the plain, unrewritten network: the file
is written under its name only if every output agrees within `tolerance`.
"""
import copy
import inspect
import os
import warnings

import numpy as np
import onnx
import onnxruntime
import torch
import torch.nn.functional as F
from torch import nn

import runtime
import utils
from models import freeze_shuffled_convolutions
from super_resolve import model_label, prepare_for_inference, scaling_factor_of

# ----------------------------------------------------------------------------------------------
# Checkpoints
checkpoint: str = ''  # an SRResNet or SRGAN checkpoint, exported as it is ('' = the blend of the corners below)
denoise: float = 0.  # the blend's denoise value in [0, 1], as in super_resolve.py (a fixed value: a file has one)
texture: float = 0.  # the blend's texture value in [0, 1]
srresnet_checkpoint: str = 'checkpoints/srresnet_x4.pth'  # the blend's corners (runtime.Blend): denoise 0, texture 0
srresnet_real_checkpoint: str = 'checkpoints/srresnet_real_x4.pth'  # denoise 1, texture 0
srgan_checkpoint: str = 'checkpoints/srgan_mse_x4.pth'  # denoise 0, texture 1
srgan_real_checkpoint: str = 'checkpoints/srgan_real_x4.pth'  # denoise 1, texture 1
output: str = ''  # the ONNX file ('' = the checkpoint's name (a blend's corner, or srresnet_d<d>_t<t>_x4) with .onnx)
# Export
opset: int = 18  # ONNX opset: the lowest torch.onnx writes without converting (onnxruntime 1.14 and newer)
check_sizes: list = [[64, 48], [37, 23]]  # [width, height] LR inputs the file is checked at, at batch 2
tolerance: float = 1e-3  # largest allowed |onnxruntime - PyTorch| on the [0, 1] outputs (a quarter grey level)
seed: int = 0  # the check images
# ----------------------------------------------------------------------------------------------


class ZeroOneSR(nn.Module):
    """An SRResNet between RGB images in [0, 1], the contract of SR models outside this project.

    (N, 3, h, w) RGB in [0, 1] -> (N, 3, h * s, w * s) RGB in [0, 1].
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, lr_imgs):
        lr_imgs = utils.convert_image(lr_imgs, source='[0, 1]', target='imagenet-norm')  # as the network was trained
        sr_imgs = self.model(lr_imgs)  # (N, 3, h * s, w * s), in [-1, 1]
        return utils.convert_image(sr_imgs, source='[-1, 1]', target='[0, 1]')  # (N, 3, h * s, w * s), in [0, 1]


def export_model(model, opset):
    """The ONNX ModelProto of ZeroOneSR(model), with a dynamic batch, height and width, written by
    torch.onnx's torch.export-based exporter (its TorchScript-based one is deprecated)."""
    if 'dynamic_shapes' not in inspect.signature(torch.onnx.export).parameters:
        raise runtime.ConfigError(f"this PyTorch ({torch.__version__}) has no torch.export-based ONNX exporter: "
                                  f"export_onnx.py needs a newer one (it was tested with 2.14)")
    example = torch.rand(2, 3, 24, 32)  # neither side 1: torch.export would fix a dimension of size 1
    batch, height, width = (torch.export.Dim(name) for name in ('batch', 'height', 'width'))
    with warnings.catch_warnings():  # torch.export's notes on what it traced; the check below is what counts
        warnings.simplefilter('ignore')
        program = torch.onnx.export(ZeroOneSR(model).eval(), (example,), dynamo=True, opset_version=opset,
                                    input_names=['lr'], output_names=['sr'],
                                    dynamic_shapes={'lr_imgs': {0: batch, 2: height, 3: width}}, verbose=False)
    return program.model_proto


def check_images(sizes, seed):
    """Smooth random RGB images in [0, 1], one (2, 3, h, w) batch per [width, height]: textured enough
    that the network's output is not a flat tanh saturated at 0 or 1, where any two models agree."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for width, height in sizes:
        coarse = torch.rand(2, 3, max(1, height // 4), max(1, width // 4), generator=generator)
        smooth = F.interpolate(coarse, size=(height, width), mode='bilinear', align_corners=False)
        batches.append((0.8 * smooth + 0.2 * torch.rand(2, 3, height, width, generator=generator)).clamp(0, 1))
    return batches


def onnxruntime_differences(model_bytes, reference, batches):
    """max |onnxruntime - reference| over each batch (the reference: a PyTorch module on [0, 1] images)."""
    model = onnxruntime.InferenceSession(model_bytes, providers=['CPUExecutionProvider'])
    differences = []
    for lr_imgs in batches:
        with torch.inference_mode():
            expected = reference(lr_imgs).numpy()  # (2, 3, h * s, w * s), in [0, 1]
        actual = model.run(['sr'], {'lr': lr_imgs.numpy()})[0]
        if actual.shape != expected.shape:
            raise ValueError(f"onnxruntime's output for a {tuple(lr_imgs.shape)} input is {actual.shape}, "
                             f"PyTorch's {expected.shape}")
        differences.append(float(np.abs(actual - expected).max()))
    return differences


def main(argv):
    """Export the checkpoint's network, check the file in onnxruntime, then write it; returns its path."""
    config = runtime.parse_config(globals(), argv)
    runtime.require(config.tolerance > 0, f"tolerance must be > 0, got {config.tolerance}")
    runtime.require(config.check_sizes and all(isinstance(size, list) and len(size) == 2 and min(size) >= 1
                                               for size in config.check_sizes),
                    f"check_sizes must be a list of [width, height] pairs, got {config.check_sizes}")
    denoise, texture = runtime.check_blend_value('denoise', config.denoise), runtime.check_blend_value('texture', config.texture)
    runtime.require(not config.checkpoint or denoise == texture == 0,
                    "denoise and texture blend the four corner checkpoints; --checkpoint exports one model as it "
                    "is: leave one of them out")
    if config.checkpoint:
        plain, state = runtime.load_sr_model(config.checkpoint, 'cpu')  # the generator of an SRGAN checkpoint
        source, kind = config.checkpoint, model_label(state, config.checkpoint)
    else:
        weights = runtime.corner_weights(denoise, texture)
        blend = runtime.load_blend(config, [denoise], [texture])
        plain = blend.model(denoise, texture)
        if max(weights) == 1:  # a corner: its own file, exactly
            corner = weights.index(1)
            source, state = blend.paths[corner], blend.checkpoints[corner]
            kind = model_label(state, source)
        else:
            source, state = ' + '.join(path for path, weight in zip(blend.paths, weights) if weight > 0), {}
            kind = runtime.blend_label(denoise, texture)
    stem = os.path.splitext(os.path.basename(source))[0] if state else f'srresnet_d{denoise:g}_t{texture:g}_x{scaling_factor_of(plain)}'
    output_path = config.output or stem + '.onnx'
    s = scaling_factor_of(plain)
    print(f"Model: {kind} x{s}, {source} (iteration {state.get('iteration', '?')})")

    fast = freeze_shuffled_convolutions(prepare_for_inference(copy.deepcopy(plain), channels_last=False))
    proto = export_model(fast, config.opset)
    written_opset = next(entry.version for entry in proto.opset_import if entry.domain in ('', 'ai.onnx'))
    if written_opset != config.opset:
        raise ValueError(f"torch.onnx could not write opset {config.opset} (it wrote {written_opset}): "
                         f"try --opset=17 or newer")
    # The file format's version: the exporter stamps its newest (10, which onnxruntime reads from 1.18
    # on), but the graph needs only its opset's own: IR 8 for opset 18, which onnxruntime reads from 1.14.
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import))
    onnx.checker.check_model(proto, full_check=True)
    proto.doc_string = (f"{kind} x{s} from {source}: input 'lr' float32 RGB in [0, 1], "
                        f"NCHW, any size; output 'sr' float32 RGB in [0, 1], {s}x the height and width")
    onnx.helper.set_model_props(proto, {'scaling_factor': str(s), 'input_range': '[0, 1]', 'channel_order': 'RGB'})
    model_bytes = proto.SerializeToString()
    operators = sorted({node.op_type for node in proto.graph.node})

    batches = check_images(config.check_sizes, config.seed)
    differences = onnxruntime_differences(model_bytes, ZeroOneSR(plain).eval(), batches)
    for lr_imgs, difference in zip(batches, differences):
        print(f"Checked {tuple(lr_imgs.shape)} -> {s}x in onnxruntime: max |ONNX - PyTorch| = {difference:.1e}")
    if not max(differences) <= config.tolerance:
        raise ValueError(f"the exported model differs from PyTorch's by {max(differences):.2e}, over the "
                         f"tolerance {config.tolerance}: {output_path} was not written")
    with utils.atomic_write(output_path) as f:
        f.write(model_bytes)
    print(f"Wrote {output_path} ({len(model_bytes) / 1e6:.1f} MB, opset {config.opset}, dynamic batch, height "
          f"and width; operators {', '.join(operators)})")
    return output_path


if __name__ == '__main__':
    runtime.run_script(main, __file__)
