"""Step 6: export a trained SRResNet or SRGAN generator to ONNX, for onnxruntime, OpenCV, chaiNNer
or a browser (onnxruntime-web).

    python export_onnx.py                                                  # the shipped SRResNet -> srresnet_x4.onnx
    python export_onnx.py --checkpoint=checkpoints/srresnet_x4.pth --output=srresnet_x4.onnx
    python export_onnx.py --checkpoint=checkpoints/srgan_mse_x4.pth      # its generator -> srgan_mse_x4.onnx
    python export_onnx.py --denoise=0.5 --texture=0.3     # a blend of the shipped models -> srresnet_d0.5_t0.3_x4.onnx
    python export_onnx.py --for_web=True     # the browser page's models -> web/models/*.onnx and models.json
    python export_onnx.py --write_calibration=True --overwrite=True   # OpenVINO int8's calibration crops, anew

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

--for_web=True writes the models of the browser page (web/): each of the four shipped checkpoints
(and each of `web_blends`), exported and checked as above, then with its weights stored in float16
and cast back to float32 inside the graph, which halves the file (3.4 MB instead of 6.6) and
leaves the arithmetic in float32. Each half-weight file is written only if its output, rounded to
8 bits, is within `web_grey_levels` of the float32 file's at every check size; then a manifest,
models.json, names the files, their labels and sizes for the page's menu.
"""
import copy
import io
import json
import os
import tempfile

import numpy as np
import onnx
import onnxruntime
import torch
import torch.nn.functional as F

import backends
import runtime
import utils
from backends import ZeroOneSR, export_model  # the graph, which backend 'openvino' compiles too
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
overwrite: bool = False  # replace an existing output file (never a checkpoint it reads); False: refuse, naming it
# Export
opset: int = 18  # ONNX opset: the lowest torch.onnx writes without converting (onnxruntime 1.14 and newer)
check_sizes: list = [[64, 48], [37, 23]]  # [width, height] LR inputs the file is checked at, at batch 2
tolerance: float = 1e-3  # largest allowed |onnxruntime - PyTorch| on the [0, 1] outputs (a quarter grey level)
seed: int = 0  # the check images
# Browser page
for_web: bool = False  # write the browser page's models (the four checkpoints above) to web_folder instead
web_folder: str = 'web/models'  # for_web: <name>.onnx with float16 weights, and the page's menu, models.json
web_blends: list = []  # for_web: [denoise, texture] blends offered too, e.g. [[0.5, 0.3]] (3.4 MB each)
web_grey_levels: int = 1  # for_web: largest allowed |float16 - float32 weights| of the 8-bit outputs
# OpenVINO int8
write_calibration: bool = False  # write int8's calibration crops (backends.CALIBRATION_FILE) from data/val_images.json instead
# ----------------------------------------------------------------------------------------------


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
    if config.for_web:
        return export_for_web(config, argv)
    if config.write_calibration:
        return save_calibration(config.overwrite)
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
    sources = [config.checkpoint] if config.checkpoint else blend.paths  # never written over
    if os.path.exists(output_path) and not config.overwrite:  # said now, before the export's work
        raise FileExistsError(f"{output_path} exists and is kept (--overwrite=True replaces it)")
    utils.check_writable(os.path.dirname(os.path.abspath(output_path)), 'output')
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
    with utils.atomic_write(output_path, exists='replace' if config.overwrite else 'refuse', inputs=sources) as f:
        f.write(model_bytes)
    print(f"Wrote {output_path} ({len(model_bytes) / 1e6:.1f} MB, opset {config.opset}, dynamic batch, height "
          f"and width; operators {', '.join(operators)})")
    return output_path


def save_calibration(overwrite):
    """Write backends.CALIBRATION_FILE, the images OpenVINO's int8 is calibrated on: the centred LR
    crops of the first validation images (backends.validation_crops), as uint8 arrays in an .npz.
    Returns its path. The file is shipped: it is replaced only with overwrite."""
    path = backends.CALIBRATION_FILE
    if os.path.exists(path) and not overwrite:  # said before the work
        raise FileExistsError(f"{path} exists and is kept (--overwrite=True replaces it)")
    crops = backends.validation_crops()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{f'crop_{i:02d}': crop for i, crop in enumerate(crops)})  # (h, w, 3) uint8 each
    with utils.atomic_write(path, exists='replace' if overwrite else 'refuse') as f:
        f.write(buffer.getvalue())
    print(f"Wrote {path}: {len(crops)} LR crops of {backends.CALIBRATION_LIST}'s first images "
          f"({len(buffer.getvalue()) / 1e6:.1f} MB)")
    return path


# ----------------------------------------------------------------------------------------------
# The browser page's models (--for_web=True)
# ----------------------------------------------------------------------------------------------

WEB_MANIFEST = 'models.json'  # in web_folder: what the page's model menu lists


def with_half_weights(proto):
    """The ModelProto with every float32 weight stored as float16 and cast back to float32 by a Cast
    node in front of the graph: half the bytes to download, the same float32 arithmetic (onnxruntime
    folds the casts when it loads the file)."""
    half = copy.deepcopy(proto)
    weights = [w for w in half.graph.initializer if w.data_type == onnx.TensorProto.FLOAT]
    casts = []
    for weight in weights:
        values = onnx.numpy_helper.to_array(weight).astype(np.float16)  # rounds each weight once
        weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name + '_fp16'))
        casts.append(onnx.helper.make_node('Cast', [weight.name], [weight.name[:-len('_fp16')]],
                                           to=onnx.TensorProto.FLOAT))
    nodes = casts + list(half.graph.node)  # a graph lists its nodes in an order that runs
    del half.graph.node[:]
    half.graph.node.extend(nodes)
    onnx.checker.check_model(half, full_check=True)
    return half


def grey_level_difference(model_bytes, reference_bytes, batches):
    """max |a - b| of two ONNX files' outputs rounded to 8 bits, over the batches ([0, 1] RGB)."""
    runners = [onnxruntime.InferenceSession(b, providers=['CPUExecutionProvider'])  # a loaded model, to run
               for b in (model_bytes, reference_bytes)]
    worst = 0
    for lr_imgs in batches:
        actual, expected = (np.round(runner.run(['sr'], {'lr': lr_imgs.numpy()})[0] * 255.) for runner in runners)
        worst = max(worst, int(np.abs(actual - expected).max()))
    return worst


def export_for_web(config, argv):
    """Write the page's models to web_folder: each of the four checkpoints (and web_blends) exported
    and checked by main(), its weights halved, checked again, then the manifest; returns its path."""
    runtime.require(not config.checkpoint and config.denoise == config.texture == 0 and not config.output,
                    "--for_web=True writes the four shipped models and web_blends to --web_folder: leave out "
                    "checkpoint, denoise, texture and output")
    runtime.require(all(isinstance(b, list) and len(b) == 2 for b in config.web_blends),
                    f"web_blends must be a list of [denoise, texture] pairs, got {config.web_blends}")
    passed = [arg for arg in argv if arg.split('=')[0] not in
              ('--for_web', '--web_folder', '--web_blends', '--web_grey_levels')]  # main's own options
    jobs = [(os.path.splitext(os.path.basename(getattr(config, key)))[0], [f'--checkpoint={getattr(config, key)}'])
            for key in runtime.CORNER_KEYS]  # (name, main's arguments): srresnet_x4, ...
    jobs += [(f'srresnet_d{float(d):g}_t{float(t):g}_x4', [f'--denoise={float(d)}', f'--texture={float(t)}'])
             for d, t in config.web_blends]
    manifest_path = os.path.join(config.web_folder, WEB_MANIFEST)
    # Files this script wrote before (the manifest and what it lists) are replaced; any other file
    # is kept unless --overwrite=True, and that is said now, before the export's work.
    ours = set()
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            ours = {WEB_MANIFEST} | {entry['file'] for entry in json.load(f)['models']}
    foreign = [os.path.join(config.web_folder, file) for file in [name + '.onnx' for name, _ in jobs] + [WEB_MANIFEST]
               if file not in ours and os.path.exists(os.path.join(config.web_folder, file))]
    if foreign and not config.overwrite:
        raise FileExistsError(f"{foreign[0]} exists and {manifest_path} does not list it: it is kept "
                              f"(--overwrite=True replaces it)")
    rule = {True: 'replace', False: 'refuse'}  # atomic_write's rule for a file that is ours, or not
    batches = check_images(config.check_sizes, config.seed)
    models = []
    with tempfile.TemporaryDirectory() as folder:
        for name, arguments in jobs:
            fp32_path = main(arguments + passed + [f'--output={os.path.join(folder, name + ".onnx")}'])
            proto = onnx.load(fp32_path)
            half_bytes = with_half_weights(proto).SerializeToString()
            difference = grey_level_difference(half_bytes, proto.SerializeToString(), batches)
            print(f"Float16 weights: {len(half_bytes) / 1e6:.1f} MB, max |float16 - float32| = {difference} "
                  f"grey level(s) of the 8-bit output")
            if difference > config.web_grey_levels:
                raise ValueError(f"{name}: float16 weights move the output by {difference} grey levels, over "
                                 f"web_grey_levels={config.web_grey_levels}: nothing was written")
            label = proto.doc_string.split(' x')[0]  # main's name for it: 'SRResNet', 'SRGAN-MSE-real', ...
            s = int(next(prop.value for prop in proto.metadata_props if prop.key == 'scaling_factor'))
            models.append((name, label, s, half_bytes))
    written = []  # every file is checked before the first is written
    for name, label, s, half_bytes in models:
        path = os.path.join(config.web_folder, name + '.onnx')
        with utils.atomic_write(path, exists=rule[name + '.onnx' in ours or config.overwrite]) as f:
            f.write(half_bytes)
        written.append({'name': name, 'label': label, 'file': name + '.onnx', 'bytes': len(half_bytes),
                        'scaling_factor': s, 'weights': 'float16'})
        print(f"Wrote {path}")
    utils.save_json({'models': written}, manifest_path, exists=rule[WEB_MANIFEST in ours or config.overwrite])
    print(f"Wrote {manifest_path}: {', '.join(entry['name'] for entry in written)}")
    return manifest_path


if __name__ == '__main__':
    runtime.run_script(main, __file__)
