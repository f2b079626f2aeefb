"""Inference backends: the ONNX graph that runtimes outside PyTorch read, and OpenVINO's compiled model.

A trained generator runs on one of two backends (super_resolve.py's and eval.py's `backend`):
  - 'torch': PyTorch itself (super_resolve.prepare_for_inference's model);
  - 'openvino': the same network as export_onnx.py writes it (export_model), compiled by OpenVINO,
    Intel's inference runtime for CPUs (`pip install openvino`; measured on an Intel Xeon and an AMD EPYC),
    in fp32, bf16 (on a CPU with AMX or AVX-512 BF16) or int8 (quantised by NNCF, `pip install nncf`,
    calibrated on crops of the validation images shipped in checkpoints/int8_calibration_x4.npz).
'auto' is OpenVINO on a CPU where it is installed, PyTorch elsewhere; on OpenVINO, precision 'auto'
is int8 on a CPU with int8 dot products (openvino_precision). 480x270 -> 1920x1080 with
super_resolve.py's tiles ran, against PyTorch's precision='auto' (bf16): on a 2-core Xeon with AMX
1.31-1.53x in OpenVINO bf16 and 1.60-1.76x in int8 (both with column strips; two tiles at once,
map_tiles); on a 2-core Zen 4 EPYC (AVX-512 BF16 and VNNI, no AMX, no strips) 1.12-1.13x in bf16
and 1.8x in int8; in fp32 1.11-1.49x and 1.19x PyTorch's fp32 (bench.py's 'backends' section;
results/README.md).

This file is separate from runtime.py, which drives a run (config, device, checkpoints,
training), because compiling a model for another runtime is a job of its own, and because
super_resolve.py, eval.py and export_onnx.py all need the exported graph: kept in export_onnx.py,
a script built on super_resolve.py, super_resolve.py could not import it without a circle.
Importing this module imports neither onnx nor openvino: they are imported where they are used.
"""
import collections
import concurrent.futures
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import queue
import shutil
import tempfile
import warnings
import zipfile

import numpy as np
import torch
from PIL import Image
from torch import nn

import models
import runtime
import utils

BACKENDS = ('auto', 'torch', 'openvino')
OPENVINO_PRECISIONS = ('auto', 'fp32', 'bf16', 'int8')  # what backend 'openvino' takes (fp16 is for CUDA)
OPENVINO_HINT = "pip install openvino"
INT8_HINT = "pip install nncf"
EXPORT_OPSET = 18  # export_onnx.py's default opset (the lowest torch.onnx writes itself)
# The exported graphs, made once per model (5 s) and kept, named by a hash of the weights (and, for
# int8, of the calibration images): a folder of this project's own, where no user file is overwritten.
OPENVINO_CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'runs', 'openvino_cache')  # git ignores runs/
CALIBRATION_LIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'val_images.json')
# int8's calibration images, shipped, so that int8 needs no dataset: LR crops of the validation images
# (export_onnx.py --write_calibration=True makes the file from CALIBRATION_LIST; never from a test set).
CALIBRATION_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'checkpoints', 'int8_calibration_x4.npz')
CALIBRATION_IMAGES = 50  # validation images int8 is calibrated on (on held-out ones, 32 cost less than 8 or 16)
CALIBRATION_CROP = 96  # side of the centred LR crop of each, in px (statistics of whole images, at a tenth of the time)
# Several tiles run two at a time (OpenVINO streams), each on half the threads: on a 2-core Xeon with
# AMX, in bf16, 480x270 (two tiles) ran 3-6% faster than tile after tile on both threads, 854x480
# (six tiles) 11% (results/README.md).
TILE_STREAMS = 2


# ----------------------------------------------------------------------------------------------
# The exported graph (export_onnx.py writes it to a file; OpenVINO compiles it in memory)
# ----------------------------------------------------------------------------------------------

class ZeroOneSR(nn.Module):
    """An SRResNet between RGB images in [0, 1], the contract of SR models outside this project.

    (N, 3, h, w) RGB in [0, 1] -> (N, 3, h * s, w * s) RGB in [0, 1].
    """
    names = ('lr', 'sr')  # the exported graph's input and output

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, lr_imgs):
        lr_imgs = utils.convert_image(lr_imgs, source='[0, 1]', target='imagenet-norm')  # as the network was trained
        sr_imgs = self.model(lr_imgs)  # (N, 3, h * s, w * s), in [-1, 1]
        return utils.convert_image(sr_imgs, source='[-1, 1]', target='[0, 1]')  # (N, 3, h * s, w * s), in [0, 1]


class ZeroOneTrunk(ZeroOneSR):
    """ZeroOneSR's first part, the low-resolution trunk: (N, 3, h, w) RGB in [0, 1] -> (N, 64, h, w)."""
    names = ('lr', 'features')

    def forward(self, lr_imgs):
        return self.model.features(utils.convert_image(lr_imgs, source='[0, 1]', target='imagenet-norm'))


class ZeroOneUpsampling(ZeroOneSR):
    """ZeroOneSR's second part: (N, 64, h, w) trunk features -> (N, 3, h * s, w * s) RGB in [0, 1]."""
    names = ('features', 'sr')

    def forward(self, features):
        return utils.convert_image(self.model.upsample(features), source='[-1, 1]', target='[0, 1]')


def export_model(model, opset=EXPORT_OPSET, part=ZeroOneSR):
    """The ONNX ModelProto of part(model) (ZeroOneSR, ZeroOneTrunk or ZeroOneUpsampling), with a
    dynamic batch, height and width, written by torch.onnx's torch.export-based exporter (its
    TorchScript-based one is deprecated)."""
    if 'dynamic_shapes' not in inspect.signature(torch.onnx.export).parameters:
        raise runtime.ConfigError(f"this PyTorch ({torch.__version__}) has no torch.export-based ONNX exporter: "
                                  f"export_onnx.py needs a newer one (it was tested with 2.14)")
    example = torch.rand(2, 3, 24, 32)  # neither side 1: torch.export would fix a dimension of size 1
    if part.names[0] == 'features':
        with torch.no_grad():
            example = model.features(example)  # (2, 64, 24, 32)
    batch, height, width = (torch.export.Dim(name) for name in ('batch', 'height', 'width'))
    with warnings.catch_warnings():  # torch.export's notes on what it traced; the check below is what counts
        warnings.simplefilter('ignore')
        program = torch.onnx.export(part(model).eval(), (example,), dynamo=True, opset_version=opset,
                                    input_names=part.names[:1], output_names=part.names[1:],
                                    dynamic_shapes=({0: batch, 2: height, 3: width},), verbose=False)
    return program.model_proto


def blocks_first_shuffles(proto):
    """Make each pixel shuffle of an exported graph read its channels in blocks: the same numbers.

    torch exports nn.PixelShuffle as DepthToSpace in 'CRD' order: output channel c, phase (i, j)
    reads input channel c * r * r + i * r + j. ONNX's other order, 'DCR', reads (i * r + j) * C + c:
    each phase a run of C neighbouring channels, which a runtime that keeps channels innermost (as
    OpenVINO does) copies whole. Where the shuffle's input comes from a convolution, through
    activations that act on each value alone, that convolution's output channels are reordered to
    match and the shuffle switched to 'DCR'; any other shuffle is left as it is. On a 2-core Xeon
    with AMX, in OpenVINO bf16, the first shuffle took 30% less time and 480x270 ran 1-5% faster
    (results/README.md); onnxruntime gained nothing, so export_onnx.py's file keeps torch's order.
    Works in place on the onnx ModelProto and returns it.
    """
    from onnx import numpy_helper
    graph = proto.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    readers = collections.Counter(name for node in graph.node for name in node.input)

    def single_value(name):  # a slope that is one number: the activation acts on each value alone
        return name in initializers and numpy_helper.to_array(initializers[name]).size == 1

    for shuffle in graph.node:
        modes = [attribute for attribute in shuffle.attribute if attribute.name == 'mode']
        if shuffle.op_type != 'DepthToSpace' or not modes or modes[0].s != b'CRD':
            continue
        r = next(attribute.i for attribute in shuffle.attribute if attribute.name == 'blocksize')
        node = producer.get(shuffle.input[0])
        while node is not None and readers[node.output[0]] == 1 and (
                node.op_type in ('Relu', 'LeakyRelu') or node.op_type == 'PRelu' and single_value(node.input[1])):
            node = producer.get(node.input[0])
        if node is None or node.op_type != 'Conv' or readers[node.output[0]] != 1 \
                or not all(name in initializers and readers[name] == 1 for name in node.input[1:]):
            continue
        for name in node.input[1:]:  # the weight (C * r * r, C_in, k, k), the bias (C * r * r,)
            array = numpy_helper.to_array(initializers[name])
            channels = array.shape[0] // (r * r)
            order = [c * r * r + phase for phase in range(r * r) for c in range(channels)]
            initializers[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array[order]), name))
        modes[0].s = b'DCR'
    return proto


# ----------------------------------------------------------------------------------------------
# Choosing the backend and its precision
# ----------------------------------------------------------------------------------------------

def openvino_installed():
    """Whether `import openvino` works here."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def pick_backend(device, backend='auto', precision='auto'):
    """'torch' or 'openvino': what `backend` ('auto', 'torch' or 'openvino') runs on `device`.

    'auto' is OpenVINO on a CPU where it is installed (faster there in fp32, bf16 and int8, measured)
    and `precision` is one it takes (not fp16), else PyTorch: on CUDA and MPS always. Asked for
    by name, 'openvino' on a GPU or where it is not installed is a ConfigError naming the option.
    """
    if backend not in BACKENDS:
        raise runtime.ConfigError(f"backend must be 'auto', 'torch' or 'openvino', got {backend!r}")
    if backend == 'auto':
        openvino_fits = device.type == 'cpu' and precision in OPENVINO_PRECISIONS and openvino_installed()
        backend = 'openvino' if openvino_fits or precision == 'int8' else 'torch'  # int8: only OpenVINO has it
    if backend == 'openvino':
        runtime.require(device.type == 'cpu', f"backend 'openvino' runs on the CPU, not on {device}: "
                                              f"use --device=cpu, or --backend=torch")
        runtime.require(openvino_installed(), f"backend 'openvino' needs OpenVINO, which is not installed: "
                                              f"{OPENVINO_HINT} (or use --backend=torch)")
    check_precision(backend, precision)
    return backend


def check_precision(backend, precision):
    """Refuse a precision that `backend` ('torch' or 'openvino', as chosen) does not take: a
    ConfigError naming the option. 'int8' is OpenVINO's alone, 'fp16' PyTorch's alone."""
    if backend == 'openvino':
        runtime.require(precision in OPENVINO_PRECISIONS, f"precision must be one of {OPENVINO_PRECISIONS} "
                                                          f"on backend 'openvino', got {precision!r}")
    else:
        runtime.require(precision != 'int8', f"precision 'int8' runs on backend 'openvino' ({OPENVINO_HINT}), "
                                             f"not on {backend!r}")
        runtime.inference_dtype(torch.device('cpu'), precision)  # refuses an unknown name
    return precision


def nncf_installed():
    """Whether NNCF, which quantises a model to int8, is installed here (looked up, not imported: slow)."""
    return importlib.util.find_spec('nncf') is not None


def openvino_precision(precision='auto'):
    """What OpenVINO computes in on this CPU for `precision`: 'fp32', 'bf16' or 'int8'.

    'auto' is int8 on a CPU with int8 dot products (AVX-512 VNNI or AMX:
    runtime.cpu_has_int8_dot_products) where NNCF and the calibration file are there: with the
    shipped SRResNet and SRGAN-MSE it cost at most 0.034 dB on Set14, under the 0.05 dB bar, and ran
    1.13-1.62x OpenVINO's bf16 (results/README.md). Elsewhere it is bf16 on a CPU that computes it in
    hardware (AMX or AVX-512 BF16: runtime.cpu_has_bf16_arithmetic), else fp32, as for PyTorch.
    """
    check_precision('openvino', precision)
    if precision == 'auto':
        if runtime.cpu_has_int8_dot_products() and nncf_installed() and os.path.isfile(CALIBRATION_FILE):
            return 'int8'
        return 'bf16' if runtime.cpu_has_bf16_arithmetic() else 'fp32'
    return precision


# ----------------------------------------------------------------------------------------------
# int8 calibration
# ----------------------------------------------------------------------------------------------

def validation_crops(list_path=None, n_images=CALIBRATION_IMAGES, crop=CALIBRATION_CROP, scaling_factor=4):
    """LR crops of the validation images, to calibrate int8 on: (h, w, 3) uint8 RGB arrays.

    The first n_images of the validation list (list_path None: CALIBRATION_LIST, the images that
    utils.create_data_lists holds out of training; a test set is never used), each shrunk by
    scaling_factor as eval.py shrinks its test images (utils.ImageTransforms 'test', 8-bit), then
    cut to its centred crop x crop LR pixels (less where the image is smaller).
    """
    list_path = list_path or CALIBRATION_LIST
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"int8's calibration crops are cut from the validation images of {list_path}, "
                                f"which is missing: `python create_data_lists.py` writes it")
    with open(list_path) as f:
        paths = json.load(f)[:n_images]
    runtime.require(paths, f"{list_path} lists no images to calibrate int8 on")
    transform = utils.ImageTransforms('test', 0, scaling_factor, '[0, 1]', '[0, 1]')
    crops = []
    for path in paths:
        with Image.open(path) as img:
            lr_img, _ = transform(utils.pil_to_rgb(img))  # (3, h, w), in [0, 1], 8-bit values
        height, width = lr_img.shape[-2:]
        top, left = max(0, (height - crop) // 2), max(0, (width - crop) // 2)
        lr_crop = lr_img[:, top:top + crop, left:left + crop]  # (3, crop, crop) or less, in [0, 1]
        crops.append(np.asarray(utils.convert_image(lr_crop, source='[0, 1]', target='pil')))  # (crop, crop, 3) uint8
    return crops


def calibration_images(path=None):
    """The images int8 is calibrated on, as the graph takes them: (1, 3, h, w) float32 arrays in [0, 1].

    Read from path (None: CALIBRATION_FILE, shipped: validation_crops' crops of the 4x-shrunk
    validation images, arrays crop_00, crop_01, ... of an .npz). Any LR photo calibrates a model
    of any scale: the crops are only typical inputs.
    """
    path = path or CALIBRATION_FILE
    if not os.path.isfile(path):
        raise FileNotFoundError(f"precision 'int8' is calibrated on the images of {path}, which is missing: "
                                f"`python export_onnx.py --write_calibration=True` makes it from the validation "
                                f"images (or use another precision)")
    try:
        with np.load(path, allow_pickle=False) as crops:  # numbers only: nothing in the file can run code
            arrays = [crops[name] for name in sorted(crops.files)]
    except (OSError, ValueError, zipfile.BadZipFile):  # numpy's words would suggest loading it unsafely
        raise runtime.ConfigError(f"{path} could not be read as an .npz of images: `python export_onnx.py "
                                  f"--write_calibration=True --overwrite=True` makes it anew") from None
    runtime.require(arrays and all(a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 for a in arrays),
                    f"{path} holds no (h, w, 3) uint8 images to calibrate int8 on")
    return [utils.convert_image(Image.fromarray(a), source='pil', target='[0, 1]')[None].contiguous().numpy()
            for a in arrays]  # (1, 3, h, w) each


def quantize_int8(ov_model, images, image_out):
    """The OpenVINO model quantised to int8 by NNCF's post-training quantisation on `images`
    (the graph's inputs, float32 arrays: (1, 3, h, w) in [0, 1], calibration_images).

    Weights are int8 per output channel, activations int8 with symmetric ranges from the images'
    statistics ('performance' preset; on the trunk, asymmetric ranges ('mixed') cost about as much
    on Set14 and ran 4-7% slower on 480x270, on a 2-core Xeon with AMX). The convolutions that read
    and write the image stay in floating point: the first, and the last where the graph ends at
    the image (image_out). Quantising the last too cost SRGAN-MSE 0.048 dB on Set14 instead of
    0.034, for 1.17x the speed (on a 2-core Zen 4 EPYC, results/README.md).
    """
    # NNCF's import looks for torch's C++ toolchain, and torch warns where a CUDA build finds no CUDA:
    # a note about a GPU on a CPU-only run, which no step here needs.
    logging.getLogger('torch.utils.cpp_extension').setLevel(logging.ERROR)
    try:
        import nncf
    except ImportError:
        raise runtime.ConfigError(f"precision 'int8' needs NNCF to quantise the model: {INT8_HINT}") from None
    nncf.set_log_level(logging.WARNING)  # its notes on each layer it leaves alone are not the user's business
    print(f"int8: calibrating on {len(images)} validation crops, once for these weights (then cached)", flush=True)
    convolutions = [op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() == 'Convolution']
    in_float = [convolutions[0], convolutions[-1]] if image_out else [convolutions[0]]
    return nncf.quantize(ov_model, nncf.Dataset(images), preset=nncf.QuantizationPreset.PERFORMANCE,
                         subset_size=len(images), ignored_scope=nncf.IgnoredScope(names=in_float))


# ----------------------------------------------------------------------------------------------
# The OpenVINO model
# ----------------------------------------------------------------------------------------------

def weights_hash(model, extra=''):
    """sha256 hex of a module's state_dict (names, shapes, dtypes and bytes) and of `extra`: the
    cache's name for its compiled graph, the same for the same weights wherever they came from."""
    digest = hashlib.sha256(extra.encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cached_openvino_model(key, make, cache=None):
    """The OpenVINO model (ov.Model) cached under <cache>/<key>/ (cache None: OPENVINO_CACHE), or make()
    it and cache it.

    The folder is written under a temporary name and renamed into place when whole, so a killed
    run leaves no half model under a real name; names are content hashes, so nothing is replaced.
    A cache that cannot be written (a read-only home) only costs the time to make the model again.
    """
    import openvino as ov
    core = ov.Core()
    cache = cache or OPENVINO_CACHE
    folder = os.path.join(cache, key)
    xml_path = os.path.join(folder, 'model.xml')
    if os.path.isfile(xml_path):
        try:
            return core.read_model(xml_path)
        except RuntimeError as error:  # a damaged entry: made again, and not cached over
            warnings.warn(f"{xml_path} could not be read ({error}): the model is made again")
            return make()
    ov_model = make()
    try:
        os.makedirs(cache, exist_ok=True)
        partial = tempfile.mkdtemp(prefix=f'.{key[:16]}.', dir=cache)
        ov.save_model(ov_model, os.path.join(partial, 'model.xml'), compress_to_fp16=False)  # fp32 weights stay fp32
        try:
            os.rename(partial, folder)
        except OSError:  # another run cached it first: keep theirs
            shutil.rmtree(partial, ignore_errors=True)
    except OSError as error:
        warnings.warn(f"the compiled model could not be cached in {cache}: {error}")
    return ov_model


class OpenVINOModel(nn.Module):
    """A generator compiled by OpenVINO, called like the PyTorch model it was made from.

    Args:
        fast: the network as export_onnx.py exports it, float32 (super_resolve.prepare_for_inference
            without channels_last, its shuffled convolution frozen).
        precision: 'fp32', 'bf16' or 'int8' (openvino_precision; 'auto' is resolved here too).
        calibration: for int8, the images to calibrate on (calibration_images; None reads them).
        threads: CPU threads OpenVINO uses (0 = as many as torch uses).
        cache: where exported graphs are kept (None: OPENVINO_CACHE; cached_openvino_model).
        strip_width: > 0: the upsampling end runs on column strips of about this many LR columns
            (models.in_column_strips; super_resolve.STRIP_WIDTHS says where it pays).

    With strips the network is compiled as two graphs, the trunk (ZeroOneTrunk) and the upsampling
    end (ZeroOneUpsampling), so that the second can run strip by strip; where they compute in bf16
    the features pass between them in bf16, as they were computed. Otherwise it is one graph
    (ZeroOneSR). int8 quantises the first graph (quantize_int8):
      - one graph: every convolution but the first and the last. On a 2-core Zen 4 EPYC that ran
        1.61x bf16 and cost 0.033 dB on Set14 (SRResNet; SRGAN-MSE 1.61x and 0.034 dB), against
        1.30x and 0.023 dB for the trunk alone;
      - with strips (on AMX), the trunk, the upsampling end computing in bf16: there, quantising
        both cost 0.044 dB against 0.025 (SRResNet; SRGAN-MSE 0.036 against 0.028), at the same
        speed (results/README.md).

    forward() takes and gives what the PyTorch model does: (N, 3, h, w) ImageNet-normed in,
    (N, 3, h * s, w * s) in [-1, 1] out, float32 on the CPU, so super_resolve.upscale_tensor tiles
    it unchanged. `fast` is kept: its parameters tell the tiling code what to feed (float32, on
    the CPU), and its sub-pixel blocks tell super_resolve.scaling_factor_of the scale.
    """

    def __init__(self, fast, precision='auto', calibration=None, threads=0, cache=None, strip_width=0):
        super().__init__()
        import openvino as ov
        self.model = fast.float().cpu().eval()
        self.precision = openvino_precision(precision)
        self.strip_width = strip_width
        self.mean = torch.tensor(utils.IMAGENET_MEAN).view(1, 3, 1, 1)  # to undo the ImageNet normalisation
        self.std = torch.tensor(utils.IMAGENET_STD).view(1, 3, 1, 1)
        # The cache's key: the weights, and how the layers are arranged (the same weights arranged
        # otherwise, e.g. by models.activation_before_shuffle, are another graph).
        tag = f"openvino {ov.get_version()} opset {EXPORT_OPSET} blocks-first shuffles {self.model!r}"

        def graph(part):
            proto = blocks_first_shuffles(export_model(self.model, part=part))
            return ov.Core().read_model(proto.SerializeToString())

        # Layers left in floating point (int8's too) compute in bf16 where the CPU has bf16 arithmetic.
        float_precision = 'f32' if self.precision == 'fp32' or not runtime.cpu_has_bf16_arithmetic() else 'bf16'
        parts = (ZeroOneTrunk, ZeroOneUpsampling) if strip_width else (ZeroOneSR,)
        graphs = [cached_openvino_model(weights_hash(self.model, f"{tag} {part.__name__}"),
                                        lambda part=part: graph(part), cache) for part in parts]
        if self.precision == 'int8':  # the first graph: the whole network, or the trunk
            images = calibration_images() if calibration is None else calibration
            images_hash = hashlib.sha256(b''.join(image.tobytes() for image in images)).hexdigest()
            image_out = parts[0] is ZeroOneSR
            key = weights_hash(self.model, f"{tag} {parts[0].__name__} int8 performance {images_hash}")
            graphs[0] = cached_openvino_model(key, lambda: quantize_int8(graphs[0], images, image_out), cache)
        if len(graphs) == 2 and float_precision == 'bf16':  # the features pass in bf16
            from openvino.preprocess import PrePostProcessor
            trunk, upsampling = PrePostProcessor(graphs[0]), PrePostProcessor(graphs[1])
            trunk.output().tensor().set_element_type(ov.Type.bf16)
            upsampling.input().tensor().set_element_type(ov.Type.bf16)
            graphs = [trunk.build(), upsampling.build()]
        threads = threads or torch.get_num_threads()
        # Denormals (below 1.2e-38) are flushed to zero: far below a grey level, and 2% faster
        # (480x270 in bf16 on a 2-core Xeon with AMX, results/README.md).
        settings = {'INFERENCE_PRECISION_HINT': float_precision, 'INFERENCE_NUM_THREADS': threads,
                    'CPU_DENORMALS_OPTIMIZATION': True}
        core = ov.Core()
        # One tile on every thread; several tiles two at a time, each on half the threads (map_tiles).
        # Each request set holds one request per graph.
        single = [core.compile_model(g, 'CPU', {**settings, 'PERFORMANCE_HINT': 'LATENCY'}) for g in graphs]
        self.requests = [compiled.create_infer_request() for compiled in single]
        # OpenVINO's Python binding readies its numpy support on first use, under a lock that also
        # waits for Python's own: two tiles doing that first at once (map_tiles) could deadlock
        # (OpenVINO 2026.4: 3 of 20 processes hung). Done once here, on the calling thread.
        ov.Tensor(ov.Type.f32, ov.Shape([1])).data
        self.pair = None
        if threads >= 2:
            pair = [core.compile_model(g, 'CPU', {**settings, 'PERFORMANCE_HINT': 'THROUGHPUT',
                                                  'NUM_STREAMS': TILE_STREAMS}) for g in graphs]
            self.pair = [[compiled.create_infer_request() for compiled in pair] for _ in range(TILE_STREAMS)]

    @property
    def subpixel_convolutional_blocks(self):
        return self.model.subpixel_convolutional_blocks

    def forward(self, lr_imgs):
        """(N, 3, h, w) ImageNet-normed -> (N, 3, h * s, w * s) in [-1, 1], float32 on the CPU."""
        return self.run(self.requests, lr_imgs)

    def run(self, requests, lr_imgs):
        """forward() of one tile on one request set (one request per graph)."""
        import openvino as ov
        lr_imgs = (lr_imgs.float().cpu() * self.std + self.mean).numpy()  # (N, 3, h, w), the graph's input, in [0, 1]

        def output(request):  # the request's (N, 3, h * s, w * s) in [0, 1] -> a new tensor in [-1, 1]
            return (torch.from_numpy(request.get_output_tensor(0).data) * 2.).sub_(1.)

        if len(requests) == 1:
            requests[0].infer([lr_imgs])
            return output(requests[0])
        trunk, upsampling = requests
        trunk.infer([lr_imgs])
        features = trunk.get_output_tensor(0)  # (N, 64, h, w)
        element_type = features.get_element_type()
        # numpy has no bfloat16: bf16 features travel as their 16-bit words, only sliced and copied.
        words = features.data.view(np.uint16) if element_type == ov.Type.bf16 else features.data

        def upsample(strip):  # (N, 64, h, w') -> (N, 3, h * s, w' * s) in [-1, 1]
            strip = strip.contiguous().numpy()
            upsampling.infer([ov.Tensor(strip, strip.shape, element_type)])
            return output(upsampling)

        return models.in_column_strips(upsample, torch.from_numpy(words), self.strip_width,
                                       self.model.upsampling_margin)

    def map_tiles(self, lr_tiles):
        """forward() of each tile in the list, yielded in order; with two or more tiles and threads,
        two run at once, each on half the threads (super_resolve.upscale_tensor calls this)."""
        if len(lr_tiles) < 2 or self.pair is None:
            for lr_imgs in lr_tiles:
                yield self.run(self.requests, lr_imgs)
            return
        free = queue.SimpleQueue()  # the request sets not in use; as many as the threads below
        for requests in self.pair:
            free.put(requests)

        def run_on_a_free_set(lr_imgs):
            requests = free.get()
            try:
                return self.run(requests, lr_imgs)
            finally:
                free.put(requests)

        # OpenVINO lets go of Python's lock while it computes, so two threads run two tiles at once.
        # Leaving the `with` waits for both: a caller that stops early (an error, Ctrl-C) leaves no
        # request busy for the next call.
        with concurrent.futures.ThreadPoolExecutor(len(self.pair)) as pool:
            running = collections.deque()  # tiles started and not yet given, oldest first
            for lr_imgs in lr_tiles:
                if len(running) == len(self.pair):
                    yield running.popleft().result()
                running.append(pool.submit(run_on_a_free_set, lr_imgs))
            while running:
                yield running.popleft().result()
