"""Step 5: super-resolve your own images and videos with the shipped models, blended to fit each
photo, or with one trained SRResNet or SRGAN; or compare models.

    python super_resolve.py                                      # the bundled example, denoise read from it
    python super_resolve.py --input_path=photo.jpg               # -> outputs/photo_x4.png
    python super_resolve.py --input_path=my_photos --output_folder=sr    # every image (and video) in a folder
    python super_resolve.py --input_path=clip.mp4                # -> outputs/clip_x4.mp4, with its sound
    python super_resolve.py --input_path=photo.jpg --denoise=0.5 --texture=0.3    # a blend of your choosing
    python super_resolve.py --mode=sweep --input_path=photo.jpg  # the photo at denoise 0, 0.25, ..., 1, side by side
    python super_resolve.py --model=srgan --checkpoint=runs/srgan/checkpoint_srgan.pth   # one model, as it is
    python super_resolve.py --mode=compare --input_path=photo.png \\
        --srgan_checkpoint=runs/srgan/checkpoint_srgan.pth       # -> outputs/photo_compare.png
    python super_resolve.py --mode=compare_real --input_path=old_photo.jpg \\
        --second_checkpoint=checkpoints/srresnet_real_x4.pth     # shipped SRResNet beside the real-photo one

The model of mode 'upscale' is a blend of four shipped generators, all fine-tuned from one SRResNet,
weight by weight (network interpolation, runtime.Blend): `denoise` goes from the SRResNet (0, for
clean images) to the real-photo SRResNet (1, for blurred, noisy, JPEG'd ones), `texture` from the
SRResNets (0, smooth) to the SRGANs (1, sharper texture, partly invented). denoise='auto', the
default, reads each input's damage with a small classifier (models.DamageNet, fit_denoise.py; a
JPEG file's quantisation table included) and prints the value it chose; a video gets one value,
from its first frames. --checkpoint=FILE runs that one model as it is instead.

mode 'upscale' makes each input image 4x larger: what a user wants from a super-resolver.
mode 'compare' is the tutorial's visualize_sr(): it takes the input as the high-resolution truth,
downscales it 4x, restores it with bicubic interpolation, the SRResNet and the SRGAN, and writes
a labelled grid of the three beside the original. The SRGAN's panel is named after its content
loss, as in the paper: SRGAN-VGG54 (the default), SRGAN-VGG22 or SRGAN-MSE.
mode 'compare_real' is for real photos, which have no truth to compare with: the input itself is
the low-resolution image, upscaled by bicubic, by the first model and by --second_checkpoint's,
side by side. A model trained on degraded inputs is labelled '-real' (SRResNet-real).
mode 'sweep' sets the photo beside itself upscaled at each of `sweep_values` of denoise or texture
(`sweep`), to choose a value by eye.

Any image works: greyscale, palette, 16-bit, 32-bit integer, float and CMYK images become RGB,
an alpha channel is upscaled bicubically, and the EXIF orientation is applied. Images of any size
work: the model runs on overlapping tiles, each tile's output cut back to the tile, so memory
stays bounded and there are no seams. The defaults (384 px tiles, 16 px of overlap) turn a
1920x1080 photo into 7680x4320 within 3 GB on a CPU, and spend under 10% of extra work on the
overlaps of a 480x270 input: larger tiles cost memory, smaller ones more overlap. The whole output
is held in memory, though, so an image whose output would exceed max_output_megapixels is refused
from its header alone, before its pixels are decoded.

Videos (.mp4, .mkv, .mov, .avi, .webm, ...; read and written with PyAV, whose wheel bundles
FFmpeg) are upscaled frame by frame through the same tiled path, `video_batch` frames at a time,
and streamed: a few batches are in memory, whatever the video's length, and decoding and
encoding run on threads of their own beside the model. The output is H.264 at quality
`video_crf`, in the input's container (MP4 for one that cannot hold it well, such as WebM or
AVI), with the input's frames, their timestamps (so its frame rate, and its sync with the sound),
its pixel aspect ratio, rotation and colour tags. Each audio stream is copied packet for packet
where the container takes its codec, else re-encoded as AAC; subtitles are copied where the
container holds them, else left out with a note. Animated GIF, PNG and WebP images become
animated PNGs, every frame at its own duration. A progress bar shows frames per second and the
time left. The container work (decoding, the encoder's settings, the sound, the check for a
truncated file) is video.py's.

`precision` picks the arithmetic: 'auto' is fp16 on CUDA, bf16 on a CPU with bf16 arithmetic (AMX
or AVX-512 BF16) and fp32 elsewhere (OpenVINO's 'auto': below). With the shipped models on Set14,
bf16 and fp16 moved PSNR by at most 0.0011 dB and a pixel by at most 9 grey levels (0.2 on
average), and bf16 ran 3.6-3.8x faster than fp32 on a Xeon with AMX, 2.1-2.2x on a Zen 4 EPYC
(results/README.md has the tables); 'fp32' gives the exact float32 result.
`backend` picks the runtime: 'auto' is OpenVINO on a CPU where it is installed (backends.py: the
graph export_onnx.py writes, exported once per model into runs/openvino_cache/), PyTorch elsewhere.
Only OpenVINO takes precision 'int8' (NNCF, calibrated on the validation crops shipped in
checkpoints/int8_calibration_x4.npz, once per model: about 10 s on a 2-core CPU, then cached), and
its 'auto' is int8 on a CPU with int8 dot products (AVX-512 VNNI or AMX): with the shipped SRResNet
and SRGAN-MSE on Set14 that cost at most 0.034 dB and moved single pixels by up to 131 grey levels
(most of them in invented texture), and ran 480x270 -> 1920x1080 1.6-1.8x faster than PyTorch's
bf16 (on a 2-core Xeon with AMX and a Zen 4 EPYC). --precision=bf16 keeps within 10 grey levels
of fp32.

Outputs are named after their input: photo.jpg -> photo_x4.png (or photo_compare.png), clip.mp4
-> clip_x4.mp4. Two rules keep every output apart, and each file written is printed:
  - inputs whose outputs would share a name (a.png and a.jpg, or A.png and a.png; clip.mp4 and
    clip.webm) keep their extension in it: a_png_x4.png and a_jpg_x4.png;
  - an existing file is never overwritten: the output takes the first free name of a_x4_1.png,
    a_x4_2.png, ... So running `python super_resolve.py` twice writes outputs/chelsea_x4.png,
    then outputs/chelsea_x4_1.png. The name is claimed when the file is complete, by a rename
    that fails on a taken name, so two runs writing into one folder at once never lose a file.
    `--overwrite=True` replaces outputs of the same name instead; an input is never replaced.
Given a folder, files named like this script's outputs (*_x2.png, *_x4.png, *_x8.png,
*_compare.png, *_x4.mp4 and the like, with or without a _N) are not read as inputs, and the
script says so: an output folder can be the input folder. Every file is written atomically (a
temporary file renamed into place), so a full disk or a kill never leaves a truncated PNG, nor
half a video, under an output's name.

Errors print one line, `super_resolve.py: error: ...`, and exit with status 1. Given a folder, a
bad image or video does not stop the others: it is reported in one line and the run goes on, then
exits with status 1 if any failed (a corrupt or truncated image or video file, an image too small
to compare or too large to upscale), 0 if all were written. Files that are not images at all (their
names are not an image's, and Pillow cannot read them: notes, sidecar files) are skipped with a
note and do not count as failures.
"""
import collections
import math
import os
import re
import time
import warnings

import torch
from PIL import Image, ImageOps, ImageSequence
from tqdm import tqdm

import backends
import degradations
import runtime
import utils
import video
from models import (activation_before_shuffle, fold_batchnorm, freeze_shuffled_convolutions, inplace_activations,
                    shuffle_last_convolution)

# ----------------------------------------------------------------------------------------------
# Data
input_path: str = 'examples/chelsea.png'  # an image or video file, or a folder of them
output_folder: str = 'outputs'  # outputs go here: <name>_x4.png (upscale) or <name>_compare.png, <name>_x4.mp4
overwrite: bool = False  # replace an existing output of the same name (False: take the next free name, <name>_x4_1.png)
mode: str = 'upscale'  # 'upscale': each image x4; 'compare': downscale, restore, compare in a grid;
#                        'compare_real': a real LR photo x4 by bicubic and each model, side by side;
#                        'sweep': a real LR photo x4 by bicubic and the blend at each of sweep_values
sweep: str = 'denoise'  # sweep: the value that changes, 'denoise' or 'texture' (the other keeps its setting)
sweep_values: list = [0., 0.25, 0.5, 0.75, 1.]  # sweep: the values shown, each in [0, 1]
halve: bool = False  # compare: halve the image first, so a big grid can be seen at 1:1 on a screen
# Model
denoise: str = 'auto'  # 0 to 1: from the SRResNet (0) toward the real-photo models (1); 'auto': read from each input
texture: float = 0.  # 0 to 1: from the SRResNets (0) toward the SRGANs' sharper, invented texture (1)
model: str = 'srresnet'  # what --checkpoint holds, 'srresnet' or 'srgan'
tile_size: int = 384  # side of the tiles the model runs on, in LR pixels (0 = whole image at once)
tile_overlap: int = 16  # LR pixels of context read around each tile, then cut off (hides the seams)
# Checkpoints: the blend's four corners, models fine-tuned from one SRResNet (runtime.Blend)
srresnet_checkpoint: str = 'checkpoints/srresnet_x4.pth'  # denoise 0, texture 0 (compare: the SRResNet panel)
srresnet_real_checkpoint: str = 'checkpoints/srresnet_real_x4.pth'  # denoise 1, texture 0
srgan_checkpoint: str = 'checkpoints/srgan_mse_x4.pth'  # denoise 0, texture 1 (compare: the SRGAN panel; '' = none)
srgan_real_checkpoint: str = 'checkpoints/srgan_real_x4.pth'  # denoise 1, texture 1
damage_checkpoint: str = 'checkpoints/damage_x4.pth'  # denoise 'auto': the damage classifier (fit_denoise.py)
checkpoint: str = ''  # one model file run as it is, instead of the blend (the SRGAN's with --model=srgan)
second_checkpoint: str = ''  # compare_real: a second model beside the first (e.g. the real-photo SRResNet)
# Video
video_crf: int = 18  # H.264 quality (x264's CRF): 0 lossless, 18 visually near-lossless, 23 x264's default, 51 worst
video_batch: int = 0  # frames per model call (0 = 8 on a GPU, 1 elsewhere)
# System
device: str = 'auto'  # 'auto' (cuda, then mps, then cpu), or e.g. 'cpu', 'cuda:1'
backend: str = 'auto'  # 'auto' (OpenVINO on a CPU where it is installed, else PyTorch), 'torch' or 'openvino'
precision: str = 'auto'  # 'auto' (fp16 on CUDA; on a CPU int8 in OpenVINO with AVX-512 VNNI or AMX,
#                          else bf16 with AMX or AVX-512 BF16, else fp32), 'fp32', 'bf16', 'fp16' or
#                          'int8' (backend 'openvino' only; see backends.py)
channels_last: bool = True  # NHWC memory format: faster convolutions on recent CPUs and GPUs
max_output_megapixels: int = 64  # refuse larger outputs (1920x1080 x4 is 33 MP, 2 GB on a CPU; see below)
# ----------------------------------------------------------------------------------------------

# Tiles are widened (with more of the image's own context) to a multiple of 8 LR columns: on a 2-core
# Xeon with AMX, in bf16, some other widths ran 1.3-2.9x slower per pixel in OpenVINO (317 px, the
# middle tile of a 854-wide frame: 1.7x; 293, 299, 313, 335: 2.2-2.9x) and in PyTorch (317: 1.4x), and
# every multiple of 8 from 200 to 416 at full speed; the height made no difference (results/README.md).
TILE_WIDTH_STEP = 8
# In bf16 on a CPU with AMX the upsampling end runs on column strips of about this many LR columns
# (models.in_column_strips), whose rows at 2x and 4x then stay in the cores' caches. Each backend's
# best (or within 1% of it) of 0-128 on 480x270, on a 2-core Xeon with AMX (bench.py's strip rows,
# four runs): PyTorch 1.35-1.53x, OpenVINO 1.07-1.15x faster (int8 1.17-1.26x). In fp32, bound by
# arithmetic, strips made both 1-10% slower: none there. Nor on a CPU whose bf16 is AVX-512 BF16 alone
# (a Zen 4 EPYC): there they cost OpenVINO 2-10% and gained PyTorch 1-5%.
STRIP_WIDTHS = {'torch': 48, 'openvino': 96}
AUTO_VIDEO_FRAMES = 8  # denoise='auto' reads a video's damage from this many first frames (their mean reading)
# Peak memory of an upscale, measured on a CPU from 480x270 to 1536x864 inputs: 22 bytes per output
# pixel (the float32 SR tensor is 12, the 8-bit image 3, the rest conversions and the PNG encoder),
# plus about 1.3 GB for PyTorch, the model and one default tile's activations.
BYTES_PER_OUTPUT_PIXEL = 22
FIXED_BYTES = 1.3e9
# What this script names its outputs (see the docstring): never read back as inputs.
EARLIER_OUTPUT = re.compile(r'_(x[248]|compare|sweep)(_\d+)?\.(png|'
                            + '|'.join(ext[1:] for ext in video.VIDEO_CONTAINERS) + ')$')


# ----------------------------------------------------------------------------------------------
# Model and tiled inference
# ----------------------------------------------------------------------------------------------

def load_inference_model(checkpoint, device, channels_last=True, kind='', dtype=torch.float32):
    """Load a trained SRResNet or SRGAN generator, made ready for fast inference.

    Args:
        checkpoint: path of a checkpoint from train_srresnet.py or train_srgan.py. It is read
            with weights_only=True onto the CPU first, so a GPU-trained one loads anywhere.
        device: where the model runs.
        channels_last: store the weights in NHWC memory format (faster convolutions).
        kind: 'srresnet' or 'srgan' to insist on that kind of checkpoint, '' for either.
        dtype: what the model computes in (runtime.inference_dtype).

    Returns the model of prepare_for_inference, in eval mode.
    """
    model, _ = runtime.load_sr_model(checkpoint, device, kind)
    return prepare_for_inference(model, channels_last, dtype)


def prepare_for_inference(model, channels_last=True, dtype=torch.float32):
    """Make a plain SRResNet or generator fast to run; returns the new model, in eval mode.

    Every BatchNorm is folded into the convolution before it: the same function with one layer
    less, equal to the plain model's output within float rounding. The last convolution runs
    before the pixel shuffle, and the activations work in place. The folding is done in float32,
    before the weights are cast to `dtype`, so half precision rounds each weight only once.
    """
    model = inplace_activations(shuffle_last_convolution(fold_batchnorm(model)))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.to(dtype)


def prepare_for_backend(model, backend, device, precision, channels_last=True):
    """A plain model made fast on `backend` ('torch' or 'openvino', from backends.pick_backend).

    'torch': prepare_for_inference's model, computing in runtime.inference_dtype(device, precision).
    'openvino': that network as export_onnx.py exports it (float32, NCHW, its shuffled convolution
    frozen, the first sub-pixel block's activation before its shuffle: models.activation_before_shuffle),
    compiled by OpenVINO in `precision` with its shuffles in blocks-first order (backends.OpenVINOModel,
    backends.blocks_first_shuffles), called the same way.
    Where they compute in bf16 on a CPU with AMX (OpenVINO's int8 too, its upsampling end in bf16),
    both run the upsampling end on column strips of about STRIP_WIDTHS[backend] LR columns.
    """
    bf16_units = device.type == 'cpu' and runtime.cpu_has_bf16_matrix_units()
    if backend == 'openvino':
        exportable = freeze_shuffled_convolutions(prepare_for_inference(model, channels_last=False))
        exportable = activation_before_shuffle(exportable)  # OpenVINO joins it to the convolution
        strips = bf16_units and backends.openvino_precision(precision) in ('bf16', 'int8')
        return backends.OpenVINOModel(exportable, precision, strip_width=STRIP_WIDTHS['openvino'] if strips else 0)
    dtype = runtime.inference_dtype(device, precision)
    fast = prepare_for_inference(model, channels_last, dtype)
    if bf16_units and dtype == torch.bfloat16 and hasattr(fast, 'strip_width'):
        fast.strip_width = STRIP_WIDTHS['torch']  # models.in_column_strips
    return fast


def srgan_label(checkpoint):
    """The paper's name for an SRGAN, from its content loss: 'SRGAN-VGG54', 'SRGAN-VGG22' or 'SRGAN-MSE'.

    checkpoint: the loaded dict; train_srgan.py records the loss in checkpoint['config']['content_loss']
    ('vgg54' when a checkpoint does not say).
    """
    config = checkpoint.get('config')
    content_loss = config.get('content_loss') if isinstance(config, dict) else None
    return f"SRGAN-{str(content_loss or 'vgg54').upper()}"


def model_label(checkpoint, path=''):
    """What a model is called in outputs and grids: 'SRResNet' or its SRGAN name (srgan_label),
    with '-real' when it was trained on realistic degradations (degradation='realistic')."""
    name = srgan_label(checkpoint) if runtime.weights_key(checkpoint) == 'generator' else 'SRResNet'
    try:
        return name + ('-real' if runtime.degradation_of(checkpoint) != 'bicubic' else '')
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


class BlendedModels:
    """The models of a run from the blend's corners: the blend at each (denoise, texture) asked
    for, made fast for inference once (auto_denoise rounds to steps of 0.05, so a folder of
    photos needs a few). Blending costs milliseconds once, and nothing per image."""

    def __init__(self, blend, device, channels_last, backend, precision):
        self.blend, self.device, self.channels_last = blend, device, channels_last
        self.backend, self.precision = backend, precision
        self.models = {}

    def __call__(self, denoise, texture):
        """The fast model of the blend at (denoise, texture)."""
        if (denoise, texture) not in self.models:
            plain = self.blend.model(denoise, texture, self.device)  # float32, BatchNorm statistics blended too
            self.models[denoise, texture] = prepare_for_backend(plain, self.backend, self.device, self.precision,
                                                                self.channels_last)
        return self.models[denoise, texture]


def parse_denoise(value):
    """--denoise as 'auto' or a float in [0, 1] (a ConfigError naming the option otherwise)."""
    if value == 'auto':
        return value
    try:
        number = float(value)
    except ValueError:
        raise runtime.ConfigError(f"denoise must be 'auto' or a number in [0, 1], got {value!r}") from None
    return runtime.check_blend_value('denoise', number)


def choose_denoise(classifier, damage_map, rgb_frames, jpeg_table=None):
    """The denoise value denoise='auto' gives an image, or one value for a video's first frames
    (the value of their mean reading, so that a video's blend never changes from frame to frame).

    Args:
        classifier, damage_map: from runtime.load_damage_model.
        rgb_frames: a PIL image, or (N, h, w, 3) uint8 RGB arrays.
        jpeg_table: the JPEG file's luminance quantisation table (read_input), or None.
    Returns (value, the classifier's mean probability of each level of degradations.LADDER_LEVELS).
    """
    frames = [utils.to_rgb(rgb_frames)[0]] if isinstance(rgb_frames, Image.Image) else list(rgb_frames)
    probabilities = sum(degradations.damage_levels(classifier, utils.convert_image(
        frame if isinstance(frame, Image.Image) else Image.fromarray(frame), source='pil', target='[0, 1]'),
        jpeg_table) for frame in frames) / len(frames)  # (levels,)
    return degradations.auto_denoise(probabilities, damage_map), probabilities


def report_auto(path, value, probabilities):
    """Print the denoise value denoise='auto' chose for an input, and how the classifier read it;
    return the value."""
    reading = sorted(zip(probabilities.tolist(), degradations.LADDER_LEVELS), reverse=True)
    words = ', '.join(f"{p:.0%} {level}" for p, level in reading if p >= 0.05)
    tqdm.write(f"{os.path.basename(path)}: denoise {value:g} (auto: it reads as {words})")
    return value


def scaling_factor_of(model):
    """How many times larger an SRResNet's output is than its input: one x2 per sub-pixel block."""
    return 2 ** len(model.subpixel_convolutional_blocks)


def _tile_edges(size, tile_size):
    """Cut [0, size) into the fewest near-equal tiles of at most tile_size (0: one tile).
    Equal tiles waste less than full tiles plus a thin leftover, which would cost a whole margin."""
    n_tiles = math.ceil(size / tile_size) if tile_size > 0 else 1
    return [size * i // n_tiles for i in range(n_tiles + 1)]


def _widen(left, right, width, step=TILE_WIDTH_STEP):
    """[left, right), a tile's columns with their margins, grown to a multiple of `step` columns
    with more of the image's own context (on the right, then on the left) where it has them."""
    extra = -(right - left) % step
    wider_right = min(right + extra, width)
    return max(left - (extra - (wider_right - right)), 0), wider_right


def tile_boxes(height, width, tile_size, tile_overlap):
    """The tiles of an image, row by row: (top, bottom, left, right) of each tile's own pixels and
    (top, bottom, left, right) of what the model reads for it, its margins included."""
    row_edges, col_edges = _tile_edges(height, tile_size), _tile_edges(width, tile_size)
    boxes = []
    for top, bottom in zip(row_edges, row_edges[1:]):
        for left, right in zip(col_edges, col_edges[1:]):
            # The tile and its margins, clipped to the image (at the image's own edges there is no more context).
            left_in, right_in = _widen(max(left - tile_overlap, 0), min(right + tile_overlap, width), width)
            boxes.append(((top, bottom, left, right),
                          (max(top - tile_overlap, 0), min(bottom + tile_overlap, height), left_in, right_in)))
    return boxes


@torch.inference_mode()
def upscale_tensor(model, lr_img, tile_size, tile_overlap, progress=False):
    """Super-resolve LR images tile by tile.

    Args:
        model: an SRResNet or SRGAN generator in eval mode; each tile is cast to its dtype.
        lr_img: (N, 3, h, w) ImageNet-normed, on the model's device.
        tile_size: side of the tiles in LR pixels; 0 runs the whole image at once.
        tile_overlap: LR pixels of real context each tile reads beyond its borders, where the
            image has them. Their output is thrown away: near a tile's edge the network sees zero
            padding instead of the neighbouring pixels, so that is where tiles would disagree.
            A tile reads a few columns more where its width is not a multiple of TILE_WIDTH_STEP
            (tile_boxes), for speed.
        progress: show a progress bar over the tiles.

    Returns (N, 3, h * s, w * s) in [-1, 1], in the model's dtype. The tiles are written into one
    preallocated tensor, so the memory needed is the output, the tiles' inputs (about the input's
    size) and one tile's activations (two on OpenVINO, which runs two tiles at once), whatever the
    image size.
    """
    if tile_size < 0 or tile_overlap < 0:
        raise ValueError(f"tile_size and tile_overlap must be >= 0, got {tile_size} and {tile_overlap}")
    dtype = next(model.parameters()).dtype
    height, width = lr_img.shape[-2:]
    boxes = tile_boxes(height, width, tile_size, tile_overlap)
    lr_tiles = [lr_img[:, :, top:bottom, left:right].to(dtype)
                for _, (top, bottom, left, right) in boxes]  # each (N, 3, tile h, tile w), ImageNet-normed
    # A model may run several tiles at once (backends.OpenVINOModel.map_tiles); each result comes in order.
    sr_tiles = model.map_tiles(lr_tiles) if hasattr(model, 'map_tiles') else map(model, lr_tiles)
    sr_img, s = None, None
    for ((top, bottom, left, right), (top_in, _, left_in, right_in)), sr_tile in tqdm(
            zip(boxes, sr_tiles), total=len(boxes), desc='tiles', unit='tile', leave=False, disable=not progress):
        # sr_tile: (N, 3, s * tile h, s * tile w), in [-1, 1]
        if sr_img is None:
            s = sr_tile.shape[-1] // (right_in - left_in)
            sr_img = torch.empty((lr_img.shape[0], 3, height * s, width * s), dtype=sr_tile.dtype,
                                 device=sr_tile.device)  # (N, 3, h * s, w * s)
        y, x = (top - top_in) * s, (left - left_in) * s  # where the tile's own pixels start in sr_tile
        sr_img[:, :, top * s:bottom * s, left * s:right * s] = \
            sr_tile[:, :, y:y + (bottom - top) * s, x:x + (right - left) * s]  # margins dropped
    return sr_img


# ----------------------------------------------------------------------------------------------
# From the network back to an image
# ----------------------------------------------------------------------------------------------

def _to_pil(sr_img, band_rows=256):
    """(3, H, W) in [-1, 1] -> PIL RGB, converted a band of rows at a time, so that the float
    temporaries of the conversion stay small next to a very large image. Each band is mapped to
    [0, 1] in float32: in bf16, whose steps near 1 are 1/128 (2 grey levels), that alone would move pixels."""
    height, width = sr_img.shape[-2:]
    pil_img = Image.new('RGB', (width, height))
    for top in range(0, height, band_rows):
        band = utils.convert_image(sr_img[:, top:top + band_rows].float(), source='[-1, 1]', target='pil')
        pil_img.paste(band, (0, top))
    return pil_img


def upscale_image(model, img, device, tile_size, tile_overlap, progress=False):
    """Super-resolve one PIL image of any mode and size.

    Args:
        model: from load_inference_model, on `device`.
        img: a PIL image. Its EXIF orientation is applied, its mode converted by to_rgb.
        device: where the model is.
        tile_size, tile_overlap, progress: as for upscale_tensor.

    Returns a PIL image s times larger, RGB, or RGBA if the input had an alpha channel (which is
    upscaled bicubically: the network only knows colour).
    """
    rgb_img, alpha = utils.to_rgb(ImageOps.exif_transpose(img))
    lr_img = utils.convert_image(rgb_img, source='pil', target='imagenet-norm')  # (3, h, w)
    lr_img = lr_img.unsqueeze(0).to(device)  # (1, 3, h, w), ImageNet-normed
    sr_img = upscale_tensor(model, lr_img, tile_size, tile_overlap, progress)  # (1, 3, h * s, w * s), in [-1, 1]
    sr_pil = _to_pil(sr_img[0])  # rounded to the nearest grey level, as eval.py measures it
    del lr_img, sr_img
    if alpha is not None:
        sr_pil.putalpha(alpha.resize(sr_pil.size, Image.BICUBIC))
    return sr_pil


# ----------------------------------------------------------------------------------------------
# The comparison grid
# ----------------------------------------------------------------------------------------------

def visualize_sr(img, srresnet, srgan=None, halve=False, tile_size=tile_size, tile_overlap=tile_overlap,
                 srgan_name='SRGAN'):
    """The tutorial's comparison grid: how well each model restores a downscaled image.

    Args:
        img: path of the high-resolution image (or a PIL image), taken as the truth.
        srresnet: the SRResNet, from load_inference_model.
        srgan: the SRGAN generator, or None: its panel then holds a note instead.
        halve: halve the image first (Lanczos), for images larger than the screen.
        tile_size, tile_overlap: as for upscale_tensor.
        srgan_name: the SRGAN panel's label, e.g. 'SRGAN-MSE' (srgan_label of its checkpoint).

    The largest centred crop whose sides divide by the scaling factor (as in eval.py) is
    downscaled with bicubic interpolation, then restored. Returns the grid as a PIL image:
    Bicubic and SRResNet on top, the SRGAN and the Original HR below, each panel labelled.
    """
    device = next(srresnet.parameters()).device
    hr_img, _ = utils.to_rgb(utils.open_image(img) if isinstance(img, str) else ImageOps.exif_transpose(img))
    if halve:
        hr_img = hr_img.resize((hr_img.width // 2, hr_img.height // 2), Image.LANCZOS)
    s = scaling_factor_of(srresnet)
    width, height = hr_img.width - hr_img.width % s, hr_img.height - hr_img.height % s
    if width == 0 or height == 0:
        raise ValueError(f"image of {hr_img.width}x{hr_img.height} is too small to downscale {s}x")
    left, top = (hr_img.width - width) // 2, (hr_img.height - height) // 2
    hr_img = hr_img.crop((left, top, left + width, top + height))
    lr_img = hr_img.resize((width // s, height // s), Image.BICUBIC)

    panels = [('Bicubic', lr_img.resize((width, height), Image.BICUBIC)),
              ('SRResNet', upscale_image(srresnet, lr_img, device, tile_size, tile_overlap)),
              (srgan_name, upscale_image(srgan, lr_img, device, tile_size, tile_overlap) if srgan else None),
              ('Original HR', hr_img)]
    return utils.labelled_grid(panels, columns=2, missing=('no SRGAN checkpoint:', 'pass --srgan_checkpoint'))


def visualize_real(img, models, tile_size=tile_size, tile_overlap=tile_overlap):
    """A real low-resolution photo (no ground truth) upscaled by bicubic and by each model, side by side.

    Args:
        img: path of the photo (or a PIL image), taken as the LR input itself: nothing is shrunk.
        models: (label, model) pairs, from load_inference_model; all of one scaling factor.
        tile_size, tile_overlap: as for upscale_tensor.

    Returns the grid as a PIL image, one labelled panel per row entry: Bicubic, then each model.
    """
    lr_img, _ = utils.to_rgb(utils.open_image(img) if isinstance(img, str) else ImageOps.exif_transpose(img))
    _, first = models[0]
    s, device = scaling_factor_of(first), next(first.parameters()).device
    panels = [('Bicubic', lr_img.resize((lr_img.width * s, lr_img.height * s), Image.BICUBIC))]
    panels += [(label, upscale_image(model, lr_img, device, tile_size, tile_overlap)) for label, model in models]
    return utils.labelled_grid(panels, columns=len(panels))


# ----------------------------------------------------------------------------------------------
# Inputs and outputs
# ----------------------------------------------------------------------------------------------

class NotAnImage(Exception):
    """A file that is not an image at all (a note beside the photos): skipped, not a failure."""


class BadImage(Exception):
    """An image that cannot be super-resolved (corrupt, truncated, too small, too large): the run goes
    on without it. (A video's is video.BadVideo.)"""


def _input_files(path):
    """(inputs, earlier outputs): the file itself, or the files directly in a folder (not
    sub-folders, not hidden), less those named like this script's outputs, which are set apart."""
    if not os.path.isdir(path):
        return [path], []
    names = sorted(name for name in os.listdir(path) if not name.startswith('.'))
    files = [os.path.join(path, name) for name in names if os.path.isfile(os.path.join(path, name))]
    earlier = [file for file in files if EARLIER_OUTPUT.search(os.path.basename(file))]
    return [file for file in files if file not in earlier], earlier


def output_extension(path):
    """An input's output extension: '.png' for an image; for a video its own container's where
    that holds H.264 (video.VIDEO_CONTAINERS: '.mkv', '.mov', ...), else '.mp4'."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in video.VIDEO_EXTENSIONS:
        return '.png'
    return extension if extension in video.VIDEO_CONTAINERS else '.mp4'


def plain_output_name(path, suffix):
    """<stem>_<suffix><output extension>: an input's output name when no other input claims it."""
    return f'{os.path.splitext(os.path.basename(path))[0]}_{suffix}{output_extension(path)}'


def output_names(paths, suffix):
    """{input path: output file name}: plain_output_name, or <stem>_<extension>_<suffix><output
    extension> for inputs whose plain names clash (compared without letter case, as some disks
    compare names): a.png and a.jpg, or clip.mp4 and clip.webm."""
    claims = collections.Counter(plain_output_name(path, suffix).casefold() for path in paths)
    names = {}
    for path in paths:
        stem, extension = os.path.splitext(os.path.basename(path))
        if claims[plain_output_name(path, suffix).casefold()] > 1 and extension:
            stem = f'{stem}_{extension[1:]}'
        names[path] = f'{stem}_{suffix}{output_extension(path)}'
    return names


def output_size(width, height, mode, halve, s, panels=3):
    """(width, height) of what `mode` makes of a width x height input: its upscale; for 'compare',
    the grid of the largest crop whose sides divide by s, four panels of it; for 'compare_real',
    `panels` upscales in a row (labels and margins left out)."""
    if mode == 'upscale':
        return width * s, height * s
    if mode == 'compare_real':
        return panels * width * s, height * s
    if halve:
        width, height = width // 2, height // 2
    return 2 * (width - width % s), 2 * (height - height % s)


def size_problem(width, height, mode, halve, s, max_megapixels, panels=3):
    """Why a width x height input cannot be processed, as a sentence, or '' if it can."""
    out_width, out_height = output_size(width, height, mode, halve, s, panels)
    if out_width == 0 or out_height == 0:
        return (f"{width}x{height} px is too small to compare: each side must be at least {s} px"
                + (" after halving" if halve else ""))
    megapixels = out_width * out_height / 1e6
    if megapixels > max_megapixels:
        memory_gb = (megapixels * 1e6 * BYTES_PER_OUTPUT_PIXEL + FIXED_BYTES) / 1e9
        return (f"{width}x{height} px would make a {out_width}x{out_height} {mode} output ({megapixels:,.0f} "
                f"megapixels, about {memory_gb:,.1f} GB of memory), over max_output_megapixels={max_megapixels}: "
                f"shrink or crop it, or raise --max_output_megapixels if this machine has the memory")
    return ''


def read_input(path, mode, halve, s, max_megapixels, panels=3):
    """Open one input, check from its header alone that its output can be made, then decode it.

    Returns the PIL image with its EXIF orientation applied, and the luminance quantisation table
    of a JPEG file (64 steps, for denoise='auto'), else None. Raises BadImage for an image that
    cannot be used (unreadable, truncated, too small, too large), and NotAnImage for a file that
    Pillow cannot read and whose name is not an image's.
    """
    unreadable = BadImage if path.lower().endswith(utils.IMAGE_EXTENSIONS) else NotAnImage
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)  # size_problem decides, below
            img = Image.open(path)  # the header only: the size, not the pixels
    except Image.DecompressionBombError as error:
        raise BadImage(f"{path}: refused by Pillow's guard against decompression bombs: {error}") from None
    except Exception as error:  # Pillow raises many kinds of errors on a bad file; all mean "not readable"
        raise unreadable(f"{path}: not a readable image ({type(error).__name__}: {error})") from None
    with img:
        problem = size_problem(img.width, img.height, mode, halve, s, max_megapixels, panels)
        if problem:
            raise BadImage(f"{path}: {problem}")
        tables = getattr(img, 'quantization', None)  # a JPEG's, from its header; the upright copy has none
        try:
            upright = ImageOps.exif_transpose(img)  # decoded now (a truncated file fails here), turned upright
            return upright, list(tables[0]) if tables and 0 in tables and len(tables[0]) == 64 else None
        except Exception as error:
            raise unreadable(f"{path}: not a readable image ({type(error).__name__}: {error})") from None


ANIMATION_FORMATS = ('GIF', 'PNG', 'WEBP')  # Pillow formats whose files can hold an animation


def is_animation(path):
    """Whether a file is an animated image (GIF, PNG or WebP with more than one frame)."""
    try:
        with Image.open(path) as img:
            return img.format in ANIMATION_FORMATS and getattr(img, 'n_frames', 1) > 1
    except Exception:  # not an image: read_input says so
        return False


def upscale_animation(model, path, out_path, device, tile_size, tile_overlap, max_megapixels, exists, inputs):
    """Super-resolve every frame of an animated GIF, PNG or WebP into an animated PNG s times larger.

    Each frame is shown for its own duration and the animation loops as the input's does. APNG is
    lossless and plays in every current browser; a GIF would lose the colours to a 256-colour
    palette. Every frame is held until the file is written (Pillow's APNG writer needs them all),
    so the frames' outputs together must stay under max_megapixels. Returns (the path written, a
    description). Raises BadImage for a file that cannot be read or is too large.
    """
    s = scaling_factor_of(model)
    try:
        with Image.open(path) as img:
            count, loop = img.n_frames, img.info.get('loop', 0)
            problem = size_problem(img.width * count, img.height, 'upscale', False, s, max_megapixels)
            if problem:
                raise BadImage(f"{path}: its {count} frames of {img.width}x{img.height} px together: {problem}")
            frames, durations = [], []
            for frame in ImageSequence.Iterator(img):  # each frame whole, as the animation shows it
                rgba = frame.convert('RGBA')  # decoded now: WebP sets a frame's duration only then
                durations.append(frame.info.get('duration', 100))  # 100 ms: browsers' usual default
                frames.append(upscale_image(model, rgba, device, tile_size, tile_overlap))
    except BadImage:
        raise
    except Exception as error:  # Pillow raises many kinds of errors on a bad frame
        raise BadImage(f"{path}: not a readable animation ({type(error).__name__}: {error})") from None
    with utils.atomic_write(out_path, exists=exists, inputs=inputs) as f:
        # disposal 0, blend 0: each frame replaces the last whole, as it was composed from the input
        frames[0].save(f, format='PNG', save_all=True, append_images=frames[1:], duration=durations, loop=loop,
                       disposal=0, blend=0)
    return f.final_path, (f"an animated PNG of {count} frames of {frames[0].width}x{frames[0].height}, "
                          f"{sum(durations) / 1000:.2f} s, from {img.width}x{img.height}")


# ----------------------------------------------------------------------------------------------
# Videos (the container work, PyAV's, is in video.py)
# ----------------------------------------------------------------------------------------------

def is_video(path):
    """Whether a file is taken for a video: by its extension (video.VIDEO_EXTENSIONS)."""
    return os.path.splitext(path)[1].lower() in video.VIDEO_EXTENSIONS


def upscale_frames(model, rgb_frames, device, tile_size, tile_overlap):
    """Super-resolve a batch of video frames through upscale_tensor, the images' tiled path.

    rgb_frames: (N, h, w, 3) uint8 RGB arrays, as video.write_upscaled decodes them.
    Returns (N, h * s, w * s, 3) uint8 RGB arrays, rounded to the nearest grey level as
    upscale_image rounds.
    """
    lr_imgs = torch.from_numpy(rgb_frames).to(device).permute(0, 3, 1, 2).float() / 255.  # (N, 3, h, w), in [0, 1]
    lr_imgs = utils.convert_image(lr_imgs, source='[0, 1]', target='imagenet-norm')  # (N, 3, h, w)
    sr_imgs = upscale_tensor(model, lr_imgs, tile_size, tile_overlap)  # (N, 3, h * s, w * s), in [-1, 1]
    sr_imgs = utils.convert_image(sr_imgs.float(), source='[-1, 1]', target='[0, 255]')  # float32: bf16 has no 8 bits
    return sr_imgs.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # (N, h * s, w * s, 3)


@torch.inference_mode()
def upscale_video(model, path, out_path, device, tile_size, tile_overlap, crf=video_crf, batch_size=1,
                  max_megapixels=max_output_megapixels, progress=True, exists='refuse', inputs=()):
    """Super-resolve every frame of a video into an H.264 video s times larger, keeping its sound.

    Args:
        model: from load_inference_model, on `device`.
        path: the video file.
        out_path: the output file; its extension names its container (video.VIDEO_CONTAINERS).
        device: where the model is.
        tile_size, tile_overlap: as for upscale_tensor, which every frame goes through.
        crf: x264's constant rate factor (lower: better and larger).
        batch_size: frames per model call.
        max_megapixels: refuse a video whose frames' outputs are larger (size_problem), from its header.
        progress: show a progress bar over the frames, with frames per second and the time left.
        exists, inputs: as for utils.atomic_write (what to do if out_path is taken when the video is done).

    The frames are streamed (a few batches in memory; decoding and encoding overlap the model),
    keep their timestamps, pixel aspect ratio, rotation and colours, and the sound and subtitles
    are kept: video.py says how. The file is written under a temporary name and takes its own
    when it is complete.

    Returns {'frames': frames written, 'size': the input's (width, height), 'rate': its frame
    rate, 'audio': what became of each audio stream, 'notes': what was left out or changed,
    'path': the file written}. Raises video.BadVideo for a file that
    FFmpeg cannot read or write, one without a video stream, frames too large, or a video that
    ends before its header says (truncated).
    """
    s = scaling_factor_of(model)
    with video.open_video(path) as source:
        width, height = source.video.width, source.video.height
        problem = size_problem(width, height, 'upscale', False, s, max_megapixels)
        if problem:
            raise video.BadVideo(f"{path}: its frames of {problem}")

        def upscale(rgb_frames):  # (N, h, w, 3) -> (N, h * s, w * s, 3), uint8 RGB
            return upscale_frames(model, rgb_frames, device, tile_size, tile_overlap)

        with tqdm(total=source.expected_frames, desc=os.path.basename(path), unit='frame', leave=False,
                  disable=not progress, dynamic_ncols=True,
                  bar_format='{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]') as bar:
            result = video.write_upscaled(source, out_path, upscale, s, crf, batch_size, on_batch=bar.update,
                                          exists=exists, inputs=inputs)
    return {**result, 'size': (width, height), 'rate': source.rate}


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------

def report_written(planned_path, out_path, what, after=''):
    """Print where an output went, saying so when an existing file kept the planned name."""
    if out_path != planned_path:
        tqdm.write(f"{planned_path} exists and is kept: wrote {out_path} instead")
    tqdm.write(f"Wrote {out_path} ({what}){after}")


def main(argv):
    """Upscale (or compare) every input image, and upscale every input video; return the paths written.

    Raises ValueError or FileNotFoundError for a setting, input or checkpoint that cannot work,
    OSError when an output cannot be written, and, after writing the others, ValueError if any
    input failed.
    """
    config = runtime.parse_config(globals(), argv)
    runtime.require(config.mode in ('upscale', 'compare', 'compare_real', 'sweep'),
                    f"mode must be 'upscale', 'compare', 'compare_real' or 'sweep', got {config.mode!r}")
    runtime.require(config.model in ('srresnet', 'srgan'), f"model must be 'srresnet' or 'srgan', got {config.model!r}")
    runtime.require(config.mode == 'upscale' or config.model == 'srresnet',
                    "mode 'compare' takes the SRResNet from --checkpoint and the SRGAN from --srgan_checkpoint; "
                    "leave --model at 'srresnet'")
    runtime.require(config.tile_size >= 0 and config.tile_overlap >= 0, "tile_size and tile_overlap must be >= 0")
    runtime.require(config.max_output_megapixels > 0, "max_output_megapixels must be > 0")
    runtime.require(config.output_folder != '', "output_folder must not be empty ('.' is the current folder)")
    runtime.require(0 <= config.video_crf <= 51, f"video_crf must be in 0..51 (x264's scale), got {config.video_crf}")
    runtime.require(config.video_batch >= 0, f"video_batch must be >= 0 (0 = automatic), got {config.video_batch}")
    # The backend and its precision are checked before anything is written.
    backend = backends.pick_backend(runtime.pick_device(config.device), config.backend, config.precision)
    denoise, texture = parse_denoise(config.denoise), runtime.check_blend_value('texture', config.texture)
    blending = config.mode in ('upscale', 'sweep') and not config.checkpoint  # else one model, as it is
    runtime.require((denoise == 'auto' and texture == 0) or blending,
                    "denoise and texture blend the four corner checkpoints in modes 'upscale' and 'sweep'; "
                    "--checkpoint runs one model as it is, and the compare modes take their models as they are: "
                    "leave them out")
    runtime.require(config.mode != 'sweep' or not config.checkpoint, "mode 'sweep' blends the corner checkpoints: "
                                                                     "leave out --checkpoint")
    runtime.require(config.sweep in ('denoise', 'texture'), f"sweep must be 'denoise' or 'texture', got {config.sweep!r}")
    sweep_values = [runtime.check_blend_value('sweep_values', value) for value in config.sweep_values] \
        if config.mode == 'sweep' else []
    runtime.require(config.mode != 'sweep' or sweep_values, "sweep_values is empty: nothing to show")
    if not os.path.exists(config.input_path):
        raise FileNotFoundError(f"input not found: {config.input_path!r}")
    utils.check_writable(config.output_folder, 'output_folder')
    utils.remove_stale_temporaries(config.output_folder)  # what a killed run was writing, never a finished output
    device = runtime.pick_device(config.device)
    precision = backends.openvino_precision(config.precision) if backend == 'openvino' else next(
        name for name, dtype in runtime.PRECISIONS.items() if dtype == runtime.inference_dtype(device, config.precision))
    video_batch = config.video_batch or (8 if device.type == 'cuda' else 1)
    missing_openvino = device.type == 'cpu' and not backends.openvino_installed()
    print(f"Device: {device}, precision {precision}, backend {backend}"
          + (f" (OpenVINO runs faster on a CPU: {backends.OPENVINO_HINT})" if missing_openvino else ''))

    first_path = config.checkpoint or config.srresnet_checkpoint  # the model of a run without a blend
    blended, damage = None, None
    if blending:
        denoise_range = sweep_values if config.sweep == 'denoise' and sweep_values else (denoise,)
        texture_range = sweep_values if config.sweep == 'texture' and sweep_values else (texture,)
        try:
            blend = runtime.load_blend(config, denoise_range, texture_range)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{error}: the blend's corners are --srresnet_checkpoint, "
                                    f"--srresnet_real_checkpoint, --srgan_checkpoint and --srgan_real_checkpoint "
                                    f"(or pass one model file with --checkpoint=PATH)") from None
        blended = BlendedModels(blend, device, config.channels_last, backend, precision)
        auto = denoise == 'auto' and not (config.mode == 'sweep' and config.sweep == 'denoise')  # read per input
        damage = runtime.load_damage_model(config.damage_checkpoint) if auto else None
        sr_model = blended(0. if denoise_range[0] == 'auto' else denoise_range[0], texture_range[0])  # checks it builds
        model_name = runtime.blend_label(denoise, texture) if config.mode == 'upscale' else \
            f"SRResNet {config.sweep} {', '.join(f'{value:g}' for value in sweep_values)}"
        read = [path for path, state in zip(blend.paths, blend.states) if state is not None]
        print(f"Model: {model_name}, blended from {', '.join(read)}")
    else:
        try:
            sr_model, sr_checkpoint = runtime.load_sr_model(first_path, device, kind=config.model)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{error}. {runtime.train_hint(config.model)} and pass the checkpoint it "
                                    f"writes with --checkpoint=PATH (the README says where the repository's "
                                    f"trained SRResNet comes from).") from None
        sr_model = prepare_for_backend(sr_model, backend, device, precision, config.channels_last)
        model_name = model_label(sr_checkpoint, first_path)
    srgan, srgan_name = None, 'SRGAN'
    if config.mode == 'compare' and config.srgan_checkpoint:
        srgan, srgan_checkpoint = runtime.load_sr_model(config.srgan_checkpoint, device, kind='srgan')
        srgan = prepare_for_backend(srgan, backend, device, precision, config.channels_last)
        srgan_name = model_label(srgan_checkpoint, config.srgan_checkpoint)
    real_models = [(model_name, sr_model)]  # compare_real: the grid's models, beside bicubic
    if config.mode == 'compare_real' and config.second_checkpoint:
        second, second_checkpoint = runtime.load_sr_model(config.second_checkpoint, device)
        runtime.require(scaling_factor_of(second) == scaling_factor_of(sr_model),
                        f"--second_checkpoint={config.second_checkpoint} is x{scaling_factor_of(second)}, "
                        f"{first_path} x{scaling_factor_of(sr_model)}: a grid compares one scaling factor")
        real_models.append((model_label(second_checkpoint, config.second_checkpoint),
                            prepare_for_backend(second, backend, device, precision, config.channels_last)))
    if blended is None:
        print(f"Model: {model_name}, {first_path}" + (f"; {srgan_name}, {config.srgan_checkpoint}" if srgan else '')
              + (f"; {real_models[1][0]}, {config.second_checkpoint}" if len(real_models) > 1 else ''))
    if config.mode == 'compare' and srgan is None:
        print("No --srgan_checkpoint given: the grid's SRGAN panel holds a note instead")

    paths, earlier_outputs = _input_files(config.input_path)
    if not paths:
        raise ValueError(f"{config.input_path}: holds no file to upscale")
    if earlier_outputs:
        print(f"Not reading {len(earlier_outputs)} file(s) named like this script's outputs as inputs: "
              f"{', '.join(os.path.basename(path) for path in earlier_outputs)}")
    s = scaling_factor_of(sr_model)
    suffix = {'upscale': f'x{s}', 'sweep': 'sweep'}.get(config.mode, 'compare')
    names = output_names(paths, suffix)
    for path in paths:
        if names[path] != plain_output_name(path, suffix):
            stem = os.path.splitext(os.path.basename(path))[0]
            print(f"{os.path.basename(path)} -> {names[path]}: another input is also named {stem!r}")

    exists = 'replace' if config.overwrite else 'next'  # the name is claimed when the file is complete
    written, not_images, failed = [], [], []
    for path in tqdm(paths, desc='inputs', unit='file', disable=len(paths) == 1):
        planned_path = os.path.join(config.output_folder, names[path])
        if is_video(path) and config.mode != 'upscale':
            tqdm.write(f"Skipping {path}: a video (mode {config.mode!r} takes images)")
            not_images.append(path)
            continue
        try:
            if is_video(path):
                model = sr_model if blended is None else blended(
                    denoise if denoise != 'auto' else report_auto(path, *choose_denoise(
                        *damage, video.first_frames(path, AUTO_VIDEO_FRAMES))), texture)  # one value: no flicker
                started = time.perf_counter()
                result = upscale_video(model, path, planned_path, device, config.tile_size, config.tile_overlap,
                                       config.video_crf, video_batch, config.max_output_megapixels,
                                       exists=exists, inputs=paths)
                (width, height), frames = result['size'], result['frames']
                report_written(planned_path, result['path'], (
                    f"{frames} frames of {width * s}x{height * s}, from {width}x{height}, "
                    f"{float(result['rate']):.3g} fps; audio: {', '.join(result['audio']) or 'none'}"
                    + ''.join(f"; {note}" for note in result['notes'])),
                    f" at {frames / (time.perf_counter() - started):.2f} frames/s")
                written.append(result['path'])
                continue
            if config.mode == 'upscale' and is_animation(path):
                if damage:  # one value for every frame, read from the first: no flicker
                    with Image.open(path) as first:
                        denoise_value = report_auto(path, *choose_denoise(*damage, first.convert('RGB')))
                model = sr_model if blended is None else blended(denoise_value if damage else denoise, texture)
                out_path, what = upscale_animation(model, path, planned_path, device, config.tile_size,
                                                   config.tile_overlap, config.max_output_megapixels, exists, paths)
                report_written(planned_path, out_path, what)
                written.append(out_path)
                continue
            img, jpeg_table = read_input(path, 'compare_real' if config.mode == 'sweep' else config.mode,
                                         config.halve, s, config.max_output_megapixels,
                                         1 + len(sweep_values or real_models))
            image_denoise = report_auto(path, *choose_denoise(*damage, img, jpeg_table)) if damage else denoise
            if config.mode == 'upscale':
                model = sr_model if blended is None else blended(image_denoise, texture)
                out_img = upscale_image(model, img, device, config.tile_size, config.tile_overlap, progress=True)
            elif config.mode == 'sweep':
                points = [(value, texture) if config.sweep == 'denoise' else (image_denoise, value)
                          for value in sweep_values]
                out_img = visualize_real(img, [(runtime.blend_label(*point), blended(*point)) for point in points],
                                         config.tile_size, config.tile_overlap)
            elif config.mode == 'compare_real':
                out_img = visualize_real(img, real_models, config.tile_size, config.tile_overlap)
            else:
                out_img = visualize_sr(img, sr_model, srgan, config.halve, config.tile_size, config.tile_overlap,
                                       srgan_name)
            out_path = utils.save_image(out_img, planned_path, exists, inputs=paths)  # atomic: never a torn PNG
            report_written(planned_path, out_path, f"{out_img.width}x{out_img.height}, from {img.width}x{img.height}")
            written.append(out_path)
        except NotAnImage as error:
            tqdm.write(f"Skipping {error}")
            not_images.append(path)
        except (BadImage, video.BadVideo, utils.OutputIsInput, OSError) as error:  # this file's, not the run's
            tqdm.write(f"Failed: {runtime.error_line(error)}")
            failed.append(path)

    if not_images:
        print(f"Skipped {len(not_images)} file(s) that are not images: {', '.join(not_images)}")
    if failed:
        raise ValueError(f"{len(failed)} of {len(paths)} input file(s) failed (reported above), "
                         f"{len(written)} written: {', '.join(failed)}")
    if not written:
        raise ValueError(f"no image was written from {config.input_path!r}")
    return written


if __name__ == '__main__':
    runtime.run_script(main, __file__)
