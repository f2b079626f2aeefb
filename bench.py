"""Benchmark: how fast this project's inference and training run on this machine, against plain PyTorch.

    python bench.py                                    # everything: about 4 minutes on an idle 2-core CPU
    python bench.py --device=cuda                      # on a GPU (also what 'auto' picks there)
    python bench.py --sections=peak,training --batch_sizes="[16]" --srgan=False      # quicker

It measures, in one run, each result against a plain PyTorch reference timed beside it (the
repeats interleaved, so a machine busy with something else slows both alike):

1. Inference: output megapixels per second of an SRResNet x4 at batch 1, float32, through the
   project's path (super_resolve.py's load_inference_model and upscale_tensor: BatchNorm folded,
   channels_last, inference_mode), and through the plain reference (the same weights, NCHW,
   eager, torch.no_grad(), nothing else). Both outputs must agree within `tolerance`.
2. Training: samples per second of a whole train_srresnet.py iteration (data pipeline, forward,
   backward, Adam step) at its own defaults, and of the plain reference pipeline: a Dataset that
   decodes the image file for every sample, Pillow crop and bicubic downscale, torchvision-style
   to-tensor, NCHW eager float32. The project's rows compute in what the scripts' amp='auto' picks
   (bf16 autocast on a GPU and on a CPU with AMX or AVX-512 BF16, where a float32 row shows what it
   buys); on a GPU also larger batches and torch.compile. Then one train_srgan.py iteration (random
   VGG19 weights: speed does not depend on them).
3. Utilisation: the GFLOP/s those rates mean (SRResNet x4 costs 2,218,176 multiply-accumulates
   per LR pixel, 2 FLOPs each; a training step counts 3x the forward), next to the peak of a large
   channels_last 3x3 convolution measured here.
4. Tiling: the cost of super_resolve.py's tiled inference at its default tile size against the
   whole image at once, on the largest inference input.
5. Precision: super_resolve.py's inference in float32 and in half precision (what its
   precision='auto' picks here, or `precisions`), with the trained `precision_checkpoint`: the
   time on the largest inference input, and on the images of `precision_images`, shrunk 4x as
   eval.py does, how far each pixel moves from float32 (grey levels) and the PSNR change.
6. Backends (section 'backends', not run by default): super_resolve.py's tiled inference of the
   trained model on each backend and precision, side by side: PyTorch fp32 and precision='auto',
   OpenVINO fp32, bf16 and int8 (backends.py), best of `inference_repeats` on the largest
   inference input, with each row's share of the measured bf16 (or fp32) convolution peak, its
   differences from PyTorch fp32 and its PSNR on `precision_images`. int8 is calibrated on the
   shipped validation crops (backends.CALIBRATION_FILE); a row that cannot run (OpenVINO, NNCF or
   the crops missing) is a note. Then each model that runs its upsampling end on column strips
   (bf16 and int8 on a CPU with AMX) is timed with each of `strip_widths`
   (super_resolve.STRIP_WIDTHS), side by side.
7. Video (section 'video', not run by default): a synthetic `video_size` clip of `video_frames`
   frames made with PyAV, and where its time goes: decoding, the model (what backend='auto' runs)
   and H.264 encoding of the 4x frames, each timed alone; then the whole clip through
   super_resolve.py with --backend=torch and with the default 'auto', in frames per second.

    python bench.py --sections=peak,backends,video --precision_images=data/Set14 --results_file=results/bench_openvino.json

The weights are random (speed does not depend on them), with random BatchNorm statistics so
that the folding has something to fold; section 5 uses trained ones, whose differences are a real
model's. Training reads the real images in `train_folder`; where that folder is missing it makes
synthetic ones, and says so. Prints a table, writes it as JSON to `results_file`. A section that
fails prints a note and the others still run; outputs that disagree stop the script with an error
after the results are written.
"""
import contextlib
import csv
import functools
import io
import itertools
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import runtime
import utils
from models import SRResNet

# ----------------------------------------------------------------------------------------------
# Data
train_folder: str = 'data/train'  # real training images (this folder and its sub-folders; synthetic if missing)
crop_size: int = 96  # HR training crop side in px (paper: 96)
synthetic_images: int = 64  # images to generate when train_folder is missing
# Model
large_kernel_size: int = 9  # SRResNet first and last convolutions (paper: 9)
small_kernel_size: int = 3  # all other convolutions (paper: 3)
n_channels: int = 64  # feature channels (paper: 64)
n_blocks: int = 16  # residual blocks (paper: 16)
scaling_factor: int = 4  # 2, 4 or 8 (paper: 4)
# Benchmark
inference_sizes: list = [[128, 128], [480, 270]]  # LR inputs as [width, height]; 480x270 -> 1920x1080
inference_repeats: int = 3  # timed runs of each inference path, interleaved (the median counts)
tolerance: float = 1e-4  # largest allowed |project - plain| on the [-1, 1] outputs
tile_size: int = 0  # tiles for section 4, in LR px (0 = super_resolve.py's default)
batch_sizes: list = [16, 64]  # training batches timed on every path (paper: 16)
gpu_batch_sizes: list = [128, 256, 512]  # on a GPU, also these for the device path: the best one is kept
compile_modes: list = ['default', 'reduce-overhead']  # on a GPU, torch.compile modes tried at the best batch
compile_batch_sizes: list = [128]  # on a GPU, also try them here (launch-bound batches gain most from graphs)
train_iterations: int = 0  # timed iterations per training run, after as many warm-up ones (0 = 4 on a CPU, 60 on a GPU)
train_rounds: int = 0  # rounds of the batch_sizes rows, in turn; a row's median counts (0 = 3 on a CPU, 1 on a GPU)
train_images: int = 200  # images of train_folder to train on (speed does not depend on how many)
plain_workers: int = 4  # DataLoader workers of the plain training pipeline (the tutorial's 4)
train_args: str = ''  # extra --key=value overrides for every train_srresnet.py / train_srgan.py run
srgan_batch_sizes: list = [16, 64]  # train_srgan.py batches timed, with the MSE and the VGG54 content losses
srgan: bool = True  # also time a train_srgan.py iteration
peak_conv_shape: list = [1, 256, 128, 128]  # (N, C, H, W) of the C->C 3x3 conv that measures the peak
precision_checkpoint: str = 'checkpoints/srresnet_x4.pth'  # section 5's model (trained: its differences are real)
precision_images: str = 'examples'  # section 5's HR images for the differences and PSNR (e.g. a Set14 folder)
precisions: list = []  # half precisions section 5 compares with fp32 ([] = the one precision='auto' picks here)
strip_widths: list = [0, 32, 48, 64, 96, 128]  # section 6: column-strip widths timed (0: none; super_resolve.STRIP_WIDTHS)
video_size: list = [854, 480]  # section 'video': [width, height] of the synthetic clip (480p)
video_frames: int = 24  # section 'video': its frames
sections: str = 'peak,inference,precision,training'  # which to run, comma-separated (tiling is part of inference;
#                                                     also 'backends' and 'video')
# Results
results_file: str = 'runs/bench/bench.json'  # the same numbers as the printed table
overwrite: bool = False  # replace an existing results_file (False: the next free name, bench_1.json)
# System
device: str = 'auto'  # 'auto' (cuda, then mps, then cpu), or e.g. 'cpu', 'cuda:1'
threads: int = 0  # torch intra-op threads (0 = torch's default, one per core)
seed: int = 0  # seeds the random weights, inputs and crops
# ----------------------------------------------------------------------------------------------

MACS_PER_LR_PIXEL_X4 = 2_218_176  # the paper's SRResNet x4, counted by macs_per_lr_pixel below


# ----------------------------------------------------------------------------------------------
# Timing and work
# ----------------------------------------------------------------------------------------------

def synchronize(device):
    """Wait for the device's queued work, so that a timer measures it (a no-op on the CPU)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_interleaved(paths, device, repeats, warmup=1, statistic=np.median):
    """Run each zero-argument callable in `paths` warmup + repeats times, round-robin.

    Interleaving matters on a shared machine: a burst of someone else's work slows every path
    a little instead of one path a lot. Returns ({name: statistic of the seconds (the median,
    or np.min for the best)}, {name: last output}).
    """
    seconds, outputs = {name: [] for name in paths}, {}
    for round_index in range(warmup + repeats):
        for name, run in paths.items():
            synchronize(device)
            start = time.perf_counter()
            outputs[name] = run()
            synchronize(device)
            if round_index >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return {name: float(statistic(values)) for name, values in seconds.items()}, outputs


def macs_per_lr_pixel(large_kernel_size, small_kernel_size, n_channels, n_blocks, scaling_factor):
    """Multiply-accumulates of one SRResNet forward pass per LR input pixel (biases and
    activations not counted). Each sub-pixel block works at 4x the pixels of the one before."""
    c, k, big = n_channels, small_kernel_size ** 2, large_kernel_size ** 2
    macs = 3 * c * big  # first convolution
    macs += (2 * n_blocks + 1) * c * c * k  # residual blocks, then the convolution before the long skip
    macs += sum(c * 4 * c * k * 4 ** i for i in range(int(np.log2(scaling_factor))))  # sub-pixel blocks
    return macs + c * 3 * big * scaling_factor ** 2  # last convolution, at the HR size


def measure_peak_gflops(device, shape, dtype=torch.float32, seconds=1.0):
    """GFLOP/s of a C->C 3x3 channels_last convolution on an (N, C, H, W) input, in `dtype`: the
    most this machine's convolution library gets out of it, the yardstick for everything else.
    On CUDA the batch is 16x larger (a GPU needs more work to fill) and float32 convolutions
    run in TF32 where torch's defaults allow it, as the model's own convolutions do."""
    n, c, h, w = shape
    if device.type == 'cuda':
        n *= 16
    x = torch.randn(n, c, h, w, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c, c, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    flops = 2 * n * c * c * 9 * h * w
    with torch.inference_mode():
        best, spent = float('inf'), 0.
        for i in range(100):
            synchronize(device)
            start = time.perf_counter()
            F.conv2d(x, weight, padding=1)
            synchronize(device)
            elapsed = time.perf_counter() - start
            best = min(best, elapsed) if i else best  # the first run pays the set-up
            spent += elapsed
            if spent > seconds and i >= 3:
                break
    return flops / best / 1e9


def training_precision(device):
    """(name, autocast dtype or None): what the training scripts' amp='auto' computes in on
    `device`, the name 'bf16', 'fp16' or 'fp32'."""
    dtype, _ = runtime.amp_settings(device, 'auto')
    return {torch.bfloat16: 'bf16', torch.float16: 'fp16', None: 'fp32'}[dtype], dtype


def device_name(device):
    """The accelerator's or the CPU's model name, for the record."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"


# ----------------------------------------------------------------------------------------------
# Random weights, images and checkpoints
# ----------------------------------------------------------------------------------------------

def random_srresnet(model_args, seed):
    """An SRResNet with random weights and random (but sane) BatchNorm statistics and affines,
    so that folding the BatchNorms changes every convolution."""
    torch.manual_seed(seed)
    model = SRResNet(**model_args)
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(c, generator=generator))
            with torch.no_grad():
                module.weight.copy_(0.5 + torch.rand(c, generator=generator))
                module.bias.copy_(0.1 * torch.randn(c, generator=generator))
    return model.eval()


def save_random_checkpoint(path, model_args, seed):
    """Write an SRResNet checkpoint of random weights, as train_srresnet.py would, and return
    its state_dict."""
    model = random_srresnet(model_args, seed)
    optimizer = torch.optim.Adam(model.parameters())
    runtime.save_checkpoint({'model': model.state_dict(), 'optimizer': optimizer.state_dict(), 'iteration': 0,
                             'model_args': model_args, 'config': {}}, path)
    return model.state_dict()


def make_synthetic_images(folder, n_images, seed):
    """Write n_images JPEGs of 481x321 (the size of most BSDS500 images): smooth random colour
    fields with noise, so that decoding and resizing cost what real photos cost."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((481, 321), Image.BICUBIC), dtype=np.float32)  # (321, 481, 3)
        pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f'synthetic_{i:03d}.jpg'), quality=90)
    return folder


def image_folders(root):
    """`root` and its direct sub-folders, those that hold image files."""
    if not os.path.isdir(root):
        return []
    candidates = [root] + sorted(os.path.join(root, name) for name in os.listdir(root)
                                 if os.path.isdir(os.path.join(root, name)))
    return [folder for folder in candidates if utils.list_images(folder)]


# ----------------------------------------------------------------------------------------------
# The plain references
# ----------------------------------------------------------------------------------------------

def plain_forward(model, lr_imgs):
    """The tutorial's SRResNet forward pass, module by module: the plain reference runs this, so
    that it stays plain whatever shortcuts models.SRResNet.forward may learn.
    (N, 3, h, w) ImageNet-normed -> (N, 3, h * s, w * s) in [-1, 1]."""
    output = model.conv_block1(lr_imgs)  # (N, 64, h, w)
    output = model.conv_block2(model.residual_blocks(output)) + output  # (N, 64, h, w)
    return model.conv_block3(model.subpixel_convolutional_blocks(output))  # (N, 3, h * s, w * s)


def plain_pair(hr_img, scaling_factor):
    """The tutorial's transform of an already-cropped RGB PIL image: bicubic downscale with Pillow,
    then torchvision-style to-tensor. Returns (lr_img ImageNet-normed, hr_img in [-1, 1])."""
    import torchvision.transforms.functional as TF  # imported here: only the plain pipeline needs it
    lr_img = hr_img.resize((hr_img.width // scaling_factor, hr_img.height // scaling_factor), Image.BICUBIC)
    lr_img = TF.normalize(TF.to_tensor(lr_img), utils.IMAGENET_MEAN, utils.IMAGENET_STD)  # (3, h, w)
    hr_img = TF.to_tensor(hr_img) * 2. - 1.  # (3, h * s, w * s), in [-1, 1]
    return lr_img, hr_img


class PlainSRDataset(Dataset):
    """The plain training pipeline: every sample decodes its whole image file, converts it to RGB,
    takes a random crop and makes the pair with plain_pair. No cache, no cropping before converting."""

    def __init__(self, paths, crop_size, scaling_factor):
        self.paths, self.crop_size, self.scaling_factor = paths, crop_size, scaling_factor

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        img = Image.open(self.paths[index]).convert('RGB')
        left = random.randint(0, img.width - self.crop_size)
        top = random.randint(0, img.height - self.crop_size)
        return plain_pair(img.crop((left, top, left + self.crop_size, top + self.crop_size)), self.scaling_factor)


def plain_training_seconds(paths, model_args, config, device, batch_size, warmup, iterations):
    """Seconds per iteration of the plain reference: PlainSRDataset, NCHW eager float32 SRResNet,
    Adam, MSE. Timed from the end of iteration `warmup` to the end of iteration warmup + iterations."""
    torch.manual_seed(config.seed)
    dataset = PlainSRDataset(paths, config.crop_size, config.scaling_factor)
    # Persistent workers: a small (synthetic) set is an epoch every batch or two, and restarting the
    # workers every epoch would time process start-up rather than the pipeline.
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=config.plain_workers,
                        pin_memory=device.type == 'cuda', drop_last=True, persistent_workers=config.plain_workers > 0)
    model = SRResNet(**model_args).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def batches():  # as many epochs as the iterations need (a small synthetic set is few batches)
        while True:
            yield from loader

    stream, start = batches(), None
    with warnings.catch_warnings():  # more workers than cores is the tutorial's choice, timed as it is
        warnings.filterwarnings('ignore', message='This DataLoader will create')
        for iteration in range(1, warmup + iterations + 1):
            lr_imgs, hr_imgs = next(stream)  # (N, 3, 24, 24) ImageNet-normed, (N, 3, 96, 96) in [-1, 1]
            lr_imgs, hr_imgs = lr_imgs.to(device), hr_imgs.to(device)
            loss = F.mse_loss(plain_forward(model, lr_imgs), hr_imgs)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if iteration == warmup:
                synchronize(device)
                start = time.perf_counter()
        synchronize(device)
        seconds = (time.perf_counter() - start) / iterations
        del stream  # shuts the loader's workers down
    return seconds


def run_script_process(script, argv):
    """Run `python script argv...` in a fresh process, as a user would, and raise with the tail of
    its output if it fails. A fresh process per row: no row inherits another's allocator settings
    (train_*.py tune the C allocator on a CPU), compiled kernels or memory, and none leaks them
    into the plain reference, which runs in this process."""
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))  # the threads this process uses
    done = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.abspath(__file__)))
    if done.returncode:
        raise RuntimeError(f"{script} exited with {done.returncode}: {(done.stdout + done.stderr)[-3000:]}")


def logged_seconds_per_iteration(log_path):
    """Mean seconds per iteration that a training run logged after its first report (the first
    covers the warm-up: cuDNN's algorithm search, compilation, the allocator filling up)."""
    with open(log_path, newline='') as f:
        rows = [row for row in csv.DictReader(f) if row['ms_per_iteration']]
    if len(rows) < 2:
        raise ValueError(f"{log_path} has {len(rows)} timed reports; the run needs at least 2")
    return float(np.mean([float(row['ms_per_iteration']) for row in rows[1:]])) / 1000


# ----------------------------------------------------------------------------------------------
# The sections
# ----------------------------------------------------------------------------------------------

def bench_inference(config, device, checkpoint_path, state_dict, model_args, macs):
    """Sections 1 and 4: project path against plain reference, and tiled against whole."""
    import super_resolve
    plain = SRResNet(**model_args)
    plain.load_state_dict(state_dict)
    plain = plain.to(device).eval()
    project = super_resolve.load_inference_model(checkpoint_path, device, super_resolve.channels_last)
    tile_size = config.tile_size or super_resolve.tile_size
    largest = max(config.inference_sizes, key=lambda size: size[0] * size[1])
    rows, tiling = [], None
    generator = torch.Generator().manual_seed(config.seed)
    for index, (width, height) in enumerate(config.inference_sizes):
        lr_img = torch.randn(1, 3, height, width, generator=generator).to(device)  # (1, 3, h, w), ImageNet-normed

        def run_plain():
            with torch.no_grad():
                return plain_forward(plain, lr_img)  # (1, 3, h * s, w * s), in [-1, 1]

        paths = {'plain': run_plain,
                 'project': lambda: super_resolve.upscale_tensor(project, lr_img, 0, super_resolve.tile_overlap)}
        if [width, height] == list(largest):
            paths['tiled'] = lambda: super_resolve.upscale_tensor(project, lr_img, tile_size,
                                                                  super_resolve.tile_overlap)
        print(f"  inference {width}x{height}: {', '.join(paths)}, {config.inference_repeats} timed runs each")
        # One warm-up run per path. A CPU has no allocator cache to fill, so after the first size
        # it would only repeat the page faults that every run pays anyway: saved, on big inputs.
        warmup = 1 if index == 0 or device.type != 'cpu' else 0
        seconds, outputs = time_interleaved(paths, device, config.inference_repeats, warmup)
        difference = strict_difference(outputs['plain'], outputs['project'], device, run_plain, paths['project'])
        out_pixels = outputs['plain'].shape[-1] * outputs['plain'].shape[-2]
        rows.append({'lr_size': [width, height], 'sr_size': list(outputs['plain'].shape[-2:][::-1]),
                     'plain_s': seconds['plain'], 'project_s': seconds['project'],
                     'plain_mp_per_s': out_pixels / seconds['plain'] / 1e6,
                     'project_mp_per_s': out_pixels / seconds['project'] / 1e6,
                     'speedup': seconds['plain'] / seconds['project'],
                     'project_gflop_per_s': 2 * macs * width * height / seconds['project'] / 1e9,
                     'plain_gflop_per_s': 2 * macs * width * height / seconds['plain'] / 1e9,
                     'max_abs_diff': difference})
        if 'tiled' in seconds:
            tiling = {'lr_size': [width, height], 'tile_size': tile_size, 'tile_overlap': super_resolve.tile_overlap,
                      'whole_s': seconds['project'], 'tiled_s': seconds['tiled'],
                      'overhead': seconds['tiled'] / seconds['project'] - 1,
                      'max_abs_diff_tiled_vs_whole': (outputs['tiled'] - outputs['project']).abs().max().item()}
        del outputs
    return rows, tiling


def strict_difference(plain_out, project_out, device, run_plain, run_project):
    """max |project - plain|. On CUDA both run again with TF32 off, so that the comparison is of
    true float32 (TF32 convolutions, torch's default there, differ by ~1e-3 on their own)."""
    if device.type != 'cuda':
        return (project_out.float() - plain_out.float()).abs().max().item()
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return (run_project().float() - run_plain().float()).abs().max().item()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def training_images(config, tmp, notes):
    """(data folder with train_images.json, its paths, where they came from): up to train_images
    images of train_folder, evenly spread over it, or synthetic ones where it is missing."""
    folders = image_folders(config.train_folder)
    if folders:
        source = config.train_folder
    else:
        source = make_synthetic_images(os.path.join(tmp, 'synthetic'), config.synthetic_images, config.seed)
        folders = [source]
        notes.append(f"{config.train_folder} not found: training used {config.synthetic_images} synthetic 481x321 "
                     f"JPEGs instead")
        print(f"  note: {notes[-1]}")
    data_folder = os.path.join(tmp, 'lists')
    with contextlib.redirect_stdout(io.StringIO()):
        utils.create_data_lists(folders, [], config.crop_size, data_folder)
    with open(os.path.join(data_folder, 'train_images.json')) as f:
        paths = json.load(f)
    paths = paths[::max(1, len(paths) // config.train_images)][:config.train_images]
    with open(os.path.join(data_folder, 'train_images.json'), 'w') as f:
        json.dump(paths, f)
    return data_folder, paths, source


def bench_training(config, device, tmp, checkpoint_path, model_args, macs, notes, save_partial):
    """Section 2: samples per second of each training path (the plain reference; train_srresnet.py
    with a DataLoader and with the device stream) at each batch size, and on a GPU the device
    stream at larger batches and under torch.compile (at the fastest batch and compile_batch_sizes);
    the device stream with the plain last convolution, for what the shuffled one buys, and with
    degradation='realistic', for what it costs; then train_srgan.py. Each project run is timed by
    the ms/iteration its own log records after the first report (the warm-up; 100 iterations for
    the realistic row on a CPU). save_partial(result) is called after every row, so a run cut
    short keeps what it measured."""
    iterations = config.train_iterations or (60 if device.type == 'cuda' else 4)
    warmup = 20 if device.type == 'cuda' else 2
    data_folder, paths, source = training_images(config, tmp, notes)
    lr_pixels = (config.crop_size // config.scaling_factor) ** 2
    precision, _ = training_precision(device)
    result = {'warmup_iterations': warmup, 'timed_iterations': iterations, 'crop_size': config.crop_size,
              'images': len(paths), 'image_source': source, 'precision': precision, 'runs': []}
    # The realistic degradation's first hundred or so batches on a CPU are slower (about 45 against
    # 30 ms to degrade 16 crops): oneDNN compiles a convolution for each image shape it has not seen
    # yet. A training run is thousands of iterations, so its row is timed after that warm-up. (A
    # bicubic run has no such start, so the device-stream row it is compared with keeps its own.)
    realistic_warmup = warmup if device.type == 'cuda' else 100
    result['realistic_warmup_iterations'] = realistic_warmup

    common = [f'--data_folder={data_folder}', f'--crop_size={config.crop_size}', '--val_freq=0',
              '--save_freq=1000000000', f'--device={device}', f'--seed={config.seed}', '--overwrite=True']
    model_flags = [f'--{key}={value}' for key, value in model_args.items()]
    run_numbers = itertools.count()  # each project run's own out_dir

    def record(name, batch_size, seconds, script, args):
        """Add a timing to its row (made at the first), whose figures are its rounds' median."""
        run = next((run for run in result['runs'] if (run['name'], run['batch_size']) == (name, batch_size)), None)
        if run is None:
            run = {'name': name, 'batch_size': batch_size, 'script': script, 'args': args, 'round_seconds': []}
            result['runs'].append(run)
        run['round_seconds'].append(seconds)
        samples = batch_size / float(np.median(run['round_seconds']))
        gflops = 3 * 2 * macs * lr_pixels * samples / 1e9 if script != 'train_srgan.py' else None
        run.update(seconds_per_iteration=batch_size / samples, samples_per_s=samples, gflop_per_s=gflops)
        save_partial(result)
        print(f"    {name}, batch {batch_size}: {seconds * 1000:.1f} ms/iteration, {samples:.1f} samples/s"
              + (f", {gflops:.0f} GFLOP/s" if gflops else ''))
        return run

    def project_run(name, script, batch_size, flags, warmup=warmup):
        out_dir = os.path.join(tmp, f'run{next(run_numbers)}')
        # The last --key wins, so train_args override the flags before them, as they always have.
        args = (common + [f'--iterations={warmup + iterations}', f'--print_freq={warmup}'] + config.train_args.split()
                + [f'--batch_size={batch_size}', f'--out_dir={out_dir}'] + flags)
        print(f"  training: {script} batch {batch_size} {' '.join(flags)}")
        try:
            run_script_process(script, args)
            log_name = 'log_srresnet.csv' if script == 'train_srresnet.py' else 'log_srgan.csv'
            seconds = logged_seconds_per_iteration(os.path.join(out_dir, log_name))
            return record(name, batch_size, seconds, script, flags)
        except Exception as error:  # an optional row (compile without a compiler, say)
            notes.append(f"{script} {' '.join(flags)} batch {batch_size} failed: {type(error).__name__}: {error}")
            print(f"    note: {notes[-1]}")
            return None

    # Rounds of the rows in turn: a machine that slows down for a while slows every row alike.
    for _ in range(config.train_rounds or (1 if device.type == 'cuda' else 3)):
        for batch_size in config.batch_sizes:
            print(f"  training: plain reference, batch {batch_size}")
            record('plain reference', batch_size, plain_training_seconds(
                paths, model_args, config, device, batch_size, warmup, iterations), 'bench.py', [])
            project_run('DataLoader', 'train_srresnet.py', batch_size, model_flags + ['--data_on_device=off'])
            project_run('device stream', 'train_srresnet.py', batch_size, model_flags + ['--data_on_device=on'])
        # What the shuffled last convolution buys: the same run with the plain one (on a GPU, at its best batch).
        if device.type != 'cuda' and config.batch_sizes:  # `--batch_sizes=[]` times no SRResNet rows here
            project_run('device stream, plain last conv', 'train_srresnet.py', config.batch_sizes[0],
                        model_flags + ['--data_on_device=on', '--shuffled_last_conv=False'])
            # What bf16 buys on a CPU with bf16 arithmetic: the same run in float32.
            if precision != 'fp32':
                project_run('device stream, fp32', 'train_srresnet.py', config.batch_sizes[0],
                            model_flags + ['--data_on_device=on', '--amp=off'])
        # What the realistic degradation (degradations.py) costs a training step.
        if config.batch_sizes:
            project_run('device stream, realistic', 'train_srresnet.py', config.batch_sizes[0],
                        model_flags + ['--data_on_device=on', '--degradation=realistic'], realistic_warmup)
    if config.srgan:
        for batch_size in config.srgan_batch_sizes:
            for content_loss in ('mse', 'vgg54'):
                project_run(f'SRGAN-{content_loss.upper()} device stream', 'train_srgan.py', batch_size, [
                    '--data_on_device=on', f'--content_loss={content_loss}', '--vgg19_weights=',
                    f'--srresnet_checkpoint={checkpoint_path}'])
    realistic = {run['batch_size']: run for run in result['runs'] if run['name'] == 'device stream, realistic'}
    for run in result['runs']:  # the extra share of a training step that the realistic degradation costs
        if run['name'] == 'device stream' and run['batch_size'] in realistic:
            result['realistic_cost'] = {'batch_size': run['batch_size'], 'extra': realistic[run['batch_size']][
                'seconds_per_iteration'] / run['seconds_per_iteration'] - 1}
    if device.type == 'cuda':
        for batch_size in config.gpu_batch_sizes:
            project_run('device stream', 'train_srresnet.py', batch_size, model_flags + ['--data_on_device=on'])
        device_runs = [run for run in result['runs'] if run['name'] == 'device stream']
        if device_runs:
            best = max(device_runs, key=lambda run: run['samples_per_s'])
            result['best_batch_size'] = best['batch_size']
            project_run('device stream, plain last conv', 'train_srresnet.py', best['batch_size'],
                        model_flags + ['--data_on_device=on', '--shuffled_last_conv=False'])
            for batch_size in sorted({best['batch_size'], *config.compile_batch_sizes}):
                for mode in config.compile_modes:
                    project_run(f'device stream + compile {mode}', 'train_srresnet.py', batch_size,
                                model_flags + ['--data_on_device=on', f'--compile={mode}'])
    return result


def outputs_and_psnrs(models, config, device, s, tile_size, tile_overlap):
    """Each model's 8-bit outputs and PSNRs on precision_images, shrunk s times as eval.py does,
    through upscale_tensor with these tiles: (number of images, {key: [(H, W, 3) int16 arrays]},
    {key: [PSNR on Y]})."""
    import super_resolve
    paths = utils.list_images(config.precision_images)
    if not paths:
        raise FileNotFoundError(f"precision_images {config.precision_images!r} holds no images")
    transform = utils.ImageTransforms('test', 0, s, 'imagenet-norm', '[0, 1]')
    outputs, psnrs = {key: [] for key in models}, {key: [] for key in models}
    for path in paths:
        with Image.open(path) as img:
            lr_norm, hr = transform(utils.pil_to_rgb(img))  # (3, h, w) ImageNet-normed, (3, h * s, w * s) in [0, 1]
        hr_pil = utils.convert_image(hr, source='[0, 1]', target='pil')
        for key, model in models.items():
            sr = super_resolve.upscale_tensor(model, lr_norm.unsqueeze(0).to(device), tile_size,
                                              tile_overlap)[0]  # (3, H, W), in [-1, 1]
            sr_pil = utils.convert_image(sr.float(), source='[-1, 1]', target='pil')  # rounded to 8 bits, as eval.py
            outputs[key].append(np.asarray(sr_pil, dtype=np.int16))
            psnrs[key].append(utils.compute_psnr_ssim(sr_pil, hr_pil, crop_border=s)[0])
    return len(paths), outputs, psnrs


def bench_precision(config, device):
    """Section 5: super_resolve.py's inference in float32 and each half precision, with trained weights.

    Speed: the whole largest inference input (upscale_tensor, no tiles), batch 1, the precisions
    interleaved. Differences: each image of precision_images is centre-cropped to divide by the
    scale and shrunk with Pillow's bicubic filter, as eval.py does, and super-resolved in every
    precision; the 8-bit outputs are compared with float32's, and PSNR is measured on Y as eval.py
    measures it. Returns the section's dict, or None where there is no half precision to compare.
    """
    import super_resolve
    halves = config.precisions or [name for name, dtype in runtime.PRECISIONS.items() if name != 'fp32'
                                    and dtype == runtime.inference_dtype(device, 'auto')]
    if not halves:
        print("  precision='auto' keeps fp32 on this device: nothing to compare (--precisions=\"['bf16']\" asks)")
        return None
    models = {name: super_resolve.load_inference_model(config.precision_checkpoint, device, super_resolve.channels_last,
                                                       dtype=runtime.inference_dtype(device, name))
              for name in ['fp32'] + halves}
    s = super_resolve.scaling_factor_of(models['fp32'])
    width, height = max(config.inference_sizes, key=lambda size: size[0] * size[1])
    generator = torch.Generator().manual_seed(config.seed)
    lr_img = torch.randn(1, 3, height, width, generator=generator).to(device)  # (1, 3, h, w), ImageNet-normed
    print(f"  precision {width}x{height}: {', '.join(models)}, {config.inference_repeats} timed runs each")
    seconds, _ = time_interleaved({name: lambda model=model: super_resolve.upscale_tensor(model, lr_img, 0, 0)
                                   for name, model in models.items()}, device, config.inference_repeats)

    n_images, outputs, psnrs = outputs_and_psnrs(models, config, device, s, 0, 0)
    rows = []
    for name in models:
        differences = np.concatenate([np.abs(a - b).ravel() for a, b in zip(outputs[name], outputs['fp32'])])
        psnr = float(np.mean(psnrs[name]))
        rows.append({'precision': name, 'seconds': seconds[name],
                     'mp_per_s': width * height * s * s / seconds[name] / 1e6,
                     'speedup': seconds['fp32'] / seconds[name], 'max_grey_diff': int(differences.max()),
                     'mean_grey_diff': float(differences.mean()), 'psnr': psnr,
                     'psnr_change': psnr - float(np.mean(psnrs['fp32']))})
    return {'checkpoint': config.precision_checkpoint, 'lr_size': [width, height], 'images': config.precision_images,
            'n_images': n_images, 'rows': rows}


def bench_backends(config, device, macs):
    """Section 6: super_resolve.py's inference on each backend and precision, side by side.

    Each row is the trained precision_checkpoint made fast by super_resolve.prepare_for_backend and
    run through upscale_tensor with super_resolve.py's default tiles: the best of inference_repeats
    on the largest inference input, the rows interleaved. Differences and PSNR are measured on
    precision_images as section 5 measures them, against PyTorch fp32. Returns the section's dict.
    """
    import backends
    import super_resolve
    auto_torch = next(name for name, dtype in runtime.PRECISIONS.items() if dtype == runtime.inference_dtype(device, 'auto'))
    rows = [('torch', 'fp32'), ('torch', auto_torch)] if auto_torch != 'fp32' else [('torch', 'fp32')]
    rows += [('openvino', name) for name in ('fp32', 'bf16', 'int8')]
    auto_backend = backends.pick_backend(device, 'auto')
    auto_row = (auto_backend, backends.openvino_precision('auto') if auto_backend == 'openvino' else auto_torch)
    models, notes = {}, []
    for backend, precision in rows:
        try:
            plain, _ = runtime.load_sr_model(config.precision_checkpoint, device)
            backends.pick_backend(device, backend, precision)
            started = time.perf_counter()
            models[backend, precision] = super_resolve.prepare_for_backend(plain, backend, device, precision)
            if backend == 'openvino':
                print(f"  openvino {precision}: ready in {time.perf_counter() - started:.1f} s")
        except (Exception, SystemExit) as error:  # OpenVINO, NNCF or the calibration crops missing: a note
            notes.append(f"backend {backend} {precision} was not timed: {type(error).__name__}: {error}")
            print(f"  note: {notes[-1]}")
    s = super_resolve.scaling_factor_of(models['torch', 'fp32'])
    width, height = max(config.inference_sizes, key=lambda size: size[0] * size[1])
    generator = torch.Generator().manual_seed(config.seed)
    lr_img = torch.randn(1, 3, height, width, generator=generator).to(device)  # (1, 3, h, w), ImageNet-normed
    print(f"  backends {width}x{height}: {', '.join(f'{b} {p}' for b, p in models)}, best of {config.inference_repeats}")
    seconds, _ = time_interleaved({key: lambda model=model: super_resolve.upscale_tensor(
        model, lr_img, super_resolve.tile_size, super_resolve.tile_overlap) for key, model in models.items()},
        device, config.inference_repeats, statistic=np.min)

    n_images, outputs, psnrs = outputs_and_psnrs(models, config, device, s, super_resolve.tile_size,
                                                 super_resolve.tile_overlap)
    reference = ('torch', 'fp32')
    result_rows = []
    for key in models:
        differences = np.concatenate([np.abs(a - b).ravel() for a, b in zip(outputs[key], outputs[reference])])
        result_rows.append({'backend': key[0], 'precision': key[1], 'auto': key == auto_row, 'seconds': seconds[key],
                            'gflop_per_s': 2 * macs * width * height / seconds[key] / 1e9,
                            'speedup_vs_torch_fp32': seconds[reference] / seconds[key],
                            'max_grey_diff': int(differences.max()), 'mean_grey_diff': float(differences.mean()),
                            'psnr': float(np.mean(psnrs[key])),
                            'psnr_change': float(np.mean(psnrs[key]) - np.mean(psnrs[reference]))})
    torch_auto = ('torch', auto_torch)
    return {'checkpoint': config.precision_checkpoint, 'lr_size': [width, height], 'tile_size': super_resolve.tile_size,
            'tile_overlap': super_resolve.tile_overlap, 'statistic': f'best of {config.inference_repeats}',
            'images': config.precision_images, 'n_images': n_images, 'auto': list(auto_row),
            'auto_speedup_vs_torch_auto': seconds[torch_auto] / seconds[auto_row] if auto_row in seconds else None,
            'rows': result_rows, 'strips': bench_strips(config, device, models, lr_img), 'notes': notes}


def bench_strips(config, device, models, lr_img):
    """The 'backends' section's strip rows: each model that runs its upsampling end on column strips
    (super_resolve.STRIP_WIDTHS: bf16 and int8 on a CPU with AMX) timed with each of strip_widths,
    side by side, best of inference_repeats. Width 0 is the upsampling end at once: for OpenVINO what it
    compiles without strips (one graph; int8's two). Returns a list of rows ([] where no model uses strips)."""
    import backends
    import super_resolve
    striped = {key: model for key, model in models.items() if getattr(model, 'strip_width', 0)}
    if not striped or not config.strip_widths:
        return []
    def timed(model, run_model, strip_width):  # run_model: model, or its one-graph twin for width 0
        model.strip_width = strip_width
        return super_resolve.upscale_tensor(run_model, lr_img, super_resolve.tile_size, super_resolve.tile_overlap)

    paths, widths = {}, {}
    for (backend, precision), model in striped.items():
        widths[backend, precision] = model.strip_width
        for strip_width in config.strip_widths:
            run_model = model
            if backend == 'openvino' and strip_width == 0:  # the one-graph model, as without strips
                run_model = backends.OpenVINOModel(model.model, precision)
            paths[backend, precision, strip_width] = functools.partial(timed, model, run_model, strip_width)
    print(f"  strips: {', '.join(f'{b} {p}' for b, p in striped)}, widths {config.strip_widths}")
    seconds, _ = time_interleaved(paths, device, config.inference_repeats, statistic=np.min)
    for key, model in striped.items():
        model.strip_width = widths[key]  # as super_resolve sets it
    return [{'backend': backend, 'precision': precision, 'strip_width': strip_width,
             'seconds': seconds[backend, precision, strip_width],
             'speedup_vs_no_strips': seconds[backend, precision, 0] / seconds[backend, precision, strip_width]
             if (backend, precision, 0) in seconds else None,
             'default': strip_width == widths[backend, precision]}
            for backend, precision, strip_width in paths]


def make_test_clip(path, width, height, frames, rate=24):
    """Write an H.264 clip of moving smooth colour fields with noise (what a real video costs to
    decode and encode, roughly), `frames` frames at `rate` fps, with PyAV."""
    import av
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width + 64, height + 64), Image.BICUBIC), dtype=np.float32)
    with av.open(path, 'w') as container:
        stream = container.add_stream('libx264', rate=rate, options={'crf': '18'})
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        for index in range(frames):
            shifted = field[index:index + height, 2 * index:2 * index + width]  # a slow pan
            pixels = np.clip(shifted + rng.normal(0, 6, shifted.shape), 0, 255).astype(np.uint8)  # (h, w, 3)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def bench_video(config, device, macs, tmp):
    """Section 7: where a 480p clip's time goes, and its frames per second through super_resolve.py.

    Decoding (all frames to RGB arrays, PyAV with its threads), the model (super_resolve.upscale_frames
    on each frame with what backend='auto' and precision='auto' run) and encoding (the 4x frames to
    H.264 at super_resolve.py's CRF, as video.py writes them) are each timed alone, one after the
    other. Then super_resolve.py upscales the clip with --backend=torch and with the default 'auto'.
    """
    import av
    import backends
    import super_resolve
    width, height = config.video_size
    clip = os.path.join(tmp, f'clip_{height}p.mp4')
    make_test_clip(clip, width, height, config.video_frames)
    started = time.perf_counter()
    with av.open(clip) as container:
        stream = container.streams.video[0]
        stream.thread_type = 'AUTO'
        frames = [frame.to_ndarray(format='rgb24') for frame in container.decode(stream)]  # (h, w, 3) uint8 each
    decode_s = time.perf_counter() - started
    backend = backends.pick_backend(device, 'auto')
    precision = backends.openvino_precision('auto') if backend == 'openvino' else next(
        name for name, dtype in runtime.PRECISIONS.items() if dtype == runtime.inference_dtype(device, 'auto'))
    plain, _ = runtime.load_sr_model(config.precision_checkpoint, device)
    model = super_resolve.prepare_for_backend(plain, backend, device, precision)
    s = super_resolve.scaling_factor_of(model)
    super_resolve.upscale_frames(model, frames[0][None], device, super_resolve.tile_size, super_resolve.tile_overlap)
    started, sr_frames = time.perf_counter(), []
    for rgb in frames:
        sr_frames.append(super_resolve.upscale_frames(model, rgb[None], device, super_resolve.tile_size,
                                                      super_resolve.tile_overlap)[0])  # (h * s, w * s, 3) uint8
    model_s = time.perf_counter() - started
    started = time.perf_counter()
    with av.open(os.path.join(tmp, 'encoded.mp4'), 'w') as container:
        stream = container.add_stream('libx264', rate=24, options={'crf': str(super_resolve.video_crf)})
        stream.width, stream.height, stream.pix_fmt = width * s, height * s, 'yuv420p'
        for rgb in sr_frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    encode_s = time.perf_counter() - started
    del sr_frames
    n = len(frames)
    result = {'size': [width, height], 'frames': n, 'backend': backend, 'precision': precision,
              'decode_s_per_frame': decode_s / n, 'model_s_per_frame': model_s / n, 'encode_s_per_frame': encode_s / n,
              'model_gflop_per_s': 2 * macs * width * height * n / model_s / 1e9, 'script_fps': {}}
    total = decode_s + model_s + encode_s
    result['shares'] = {'decode': decode_s / total, 'model': model_s / total, 'encode': encode_s / total}
    print(f"  video {width}x{height}, {n} frames: decode {decode_s / n * 1000:.0f} ms, model ({backend} {precision}) "
          f"{model_s / n * 1000:.0f} ms, encode {encode_s / n * 1000:.0f} ms per frame")
    for name in ('torch', 'auto'):
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            super_resolve.main([f'--input_path={clip}', f'--output_folder={os.path.join(tmp, "sr_" + name)}',
                                f'--backend={name}', '--denoise=0', f'--device={device}'])
        result['script_fps'][name] = n / (time.perf_counter() - started)
        print(f"  super_resolve.py --backend={name}: {result['script_fps'][name]:.3f} frames/s")
    result['script_speedup'] = result['script_fps']['auto'] / result['script_fps']['torch']
    return result


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------

def print_table(results):
    """The short table a person reads; the JSON holds the same numbers and more."""
    print(f"\n{results['device']}, torch {results['torch']}, {results['threads']} threads")
    inference = results.get('inference') or []
    if inference:
        print(f"\n1. Inference, batch 1, fp32 ({results['macs_per_lr_pixel']:,} MACs per LR pixel)")
        print(f"   {'LR -> SR':<22}{'plain MP/s':>11}{'project MP/s':>14}{'speedup':>9}{'GFLOP/s':>9}"
              f"{'max |diff|':>12}")
        for row in inference:
            (w, h), (sw, sh) = row['lr_size'], row['sr_size']
            print(f"   {f'{w}x{h} -> {sw}x{sh}':<22}{row['plain_mp_per_s']:>11.3f}{row['project_mp_per_s']:>14.3f}"
                  f"{row['speedup']:>8.2f}x{row['project_gflop_per_s']:>9.1f}{row['max_abs_diff']:>12.1e}")
    training = results.get('training')
    if training:
        print(f"\n2. Training, {training['crop_size']} px crops, {training['precision']}, "
              f"{training['timed_iterations']} "
              f"timed iterations after {training['warmup_iterations']} warm-up, {training['images']} images from "
              f"{training['image_source']}")
        print(f"   {'run':<34}{'batch':>6}{'ms/it':>9}{'samples/s':>11}{'GFLOP/s':>10}{'of peak':>9}")
        for run in training['runs']:
            gflops = f"{run['gflop_per_s']:.0f}" if run['gflop_per_s'] else ''
            share = f"{run['percent_of_peak']:.1f}%" if run.get('percent_of_peak') else ''
            print(f"   {run['name']:<34}{run['batch_size']:>6}{run['seconds_per_iteration'] * 1000:>9.1f}"
                  f"{run['samples_per_s']:>11.1f}{gflops:>10}{share:>9}")
        cost = training.get('realistic_cost')
        if cost:
            print(f"   the realistic degradation costs {cost['extra']:+.1%} of a device-stream step at batch "
                  f"{cost['batch_size']} (its row timed after {training['realistic_warmup_iterations']} warm-up "
                  f"iterations)")
    peaks = results.get('peak_gflop_per_s') or {}
    if peaks:
        print("\n3. Utilisation: peak 3x3 channels_last convolution "
              + ', '.join(f"{value:.0f} GFLOP/s in {name}" for name, value in peaks.items()))
        for row in inference:
            peak = peaks.get('fp32')
            print(f"   inference {row['lr_size'][0]}x{row['lr_size'][1]}: project {row['project_gflop_per_s']:.1f} "
                  f"GFLOP/s ({row['project_gflop_per_s'] / peak:.0%} of the fp32 peak), "
                  f"plain {row['plain_gflop_per_s']:.1f} ({row['plain_gflop_per_s'] / peak:.0%})")
    tiling = results.get('tiling')
    if tiling:
        print(f"\n4. Tiling, {tiling['lr_size'][0]}x{tiling['lr_size'][1]} LR, tiles of {tiling['tile_size']} px "
              f"(overlap {tiling['tile_overlap']}): whole {tiling['whole_s']:.2f} s, tiled {tiling['tiled_s']:.2f} s, "
              f"overhead {tiling['overhead']:+.1%}")
    precision = results.get('precision')
    if precision:
        (w, h), n = precision['lr_size'], precision['n_images']
        print(f"\n5. Precision, {precision['checkpoint']}: time on {w}x{h} at batch 1; differences from fp32 and "
              f"PSNR on {n} image(s) of {precision['images']}, shrunk 4x")
        print(f"   {'precision':<11}{'s':>8}{'MP/s':>8}{'speedup':>9}{'max |diff|':>12}{'mean |diff|':>13}"
              f"{'PSNR dB':>9}{'change':>9}")
        for row in precision['rows']:
            print(f"   {row['precision']:<11}{row['seconds']:>8.3f}{row['mp_per_s']:>8.3f}{row['speedup']:>8.2f}x"
                  f"{row['max_grey_diff']:>12}{row['mean_grey_diff']:>13.3f}{row['psnr']:>9.3f}"
                  f"{row['psnr_change']:>+9.4f}")
    backends_section = results.get('backends')
    if backends_section:
        (w, h), n = backends_section['lr_size'], backends_section['n_images']
        peak_name = 'bf16' if 'bf16' in peaks else 'fp32'
        print(f"\n6. Backends, {backends_section['checkpoint']}: {w}x{h} -> {w * 4}x{h * 4}, tiles of "
              f"{backends_section['tile_size']}, {backends_section['statistic']}; differences from PyTorch fp32 and "
              f"PSNR on {n} image(s) of {backends_section['images']}, shrunk 4x")
        print(f"   {'backend':<10}{'precision':<11}{'s':>7}{'vs fp32':>9}{'of ' + peak_name + ' peak':>14}"
              f"{'max |diff|':>12}{'mean |diff|':>13}{'PSNR dB':>9}{'change':>9}")
        for row in backends_section['rows']:
            share = f"{row['gflop_per_s'] / peaks[peak_name]:.0%}" if peaks.get(peak_name) else ''
            print(f"   {row['backend']:<10}{row['precision'] + (' (auto)' if row['auto'] else ''):<11}"
                  f"{row['seconds']:>7.3f}{row['speedup_vs_torch_fp32']:>8.2f}x{share:>14}{row['max_grey_diff']:>12}"
                  f"{row['mean_grey_diff']:>13.3f}{row['psnr']:>9.3f}{row['psnr_change']:>+9.4f}")
        if backends_section['auto_speedup_vs_torch_auto']:
            print(f"   backend='auto' ({' '.join(backends_section['auto'])}) runs "
                  f"{backends_section['auto_speedup_vs_torch_auto']:.2f}x as fast as PyTorch's precision='auto'")
        if backends_section.get('strips'):
            print(f"   column strips of the upsampling end (0: none), {backends_section['statistic']}:")
            for row in backends_section['strips']:
                print(f"   {row['backend']:<10}{row['precision']:<11}{row['strip_width']:>4} columns"
                      f"{row['seconds']:>8.3f} s{row['speedup_vs_no_strips'] or 0:>8.2f}x{'  (default)' if row['default'] else ''}")
    clip = results.get('video')
    if clip:
        peak_name = 'bf16' if 'bf16' in peaks else 'fp32'
        share = f", {clip['model_gflop_per_s'] / peaks[peak_name]:.0%} of the {peak_name} peak" if peaks.get(peak_name) else ''
        print(f"\n7. Video, {clip['size'][0]}x{clip['size'][1]}, {clip['frames']} frames: per frame decode "
              f"{clip['decode_s_per_frame'] * 1000:.0f} ms ({clip['shares']['decode']:.0%}), model "
              f"{clip['model_s_per_frame'] * 1000:.0f} ms ({clip['shares']['model']:.0%}; {clip['backend']} "
              f"{clip['precision']}, {clip['model_gflop_per_s']:.0f} GFLOP/s{share}), encode "
              f"{clip['encode_s_per_frame'] * 1000:.0f} ms ({clip['shares']['encode']:.0%})")
        print(f"   super_resolve.py: {clip['script_fps']['torch']:.3f} frames/s with --backend=torch, "
              f"{clip['script_fps']['auto']:.3f} with 'auto' ({clip['script_speedup']:.2f}x)")
    for note in results['notes']:
        print(f"note: {note}")


def main(argv):
    """Run the benchmark; returns the results dict that is also written to results_file."""
    config = runtime.parse_config(globals(), argv)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = runtime.pick_device(config.device)
    print(f"Device: {device} ({device_name(device)}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    started = time.perf_counter()
    model_args = dict(large_kernel_size=config.large_kernel_size, small_kernel_size=config.small_kernel_size,
                      n_channels=config.n_channels, n_blocks=config.n_blocks, scaling_factor=config.scaling_factor)
    macs = macs_per_lr_pixel(**model_args)
    load_average = (lambda: list(os.getloadavg())) if hasattr(os, 'getloadavg') else (lambda: None)
    results = {'device': device_name(device), 'device_type': device.type, 'torch': torch.__version__,
               'threads': torch.get_num_threads(), 'interop_threads': torch.get_num_interop_threads(),
               'cpu_count': os.cpu_count(), 'load_average_start': load_average(),
               'config': vars(config), 'macs_per_lr_pixel': macs, 'inference': None, 'training': None,
               'peak_gflop_per_s': None, 'tiling': None, 'precision': None, 'backends': None, 'video': None,
               'notes': []}
    notes, peaks = results['notes'], {}
    precisions = {'fp32': torch.float32}
    precision, autocast_dtype = training_precision(device)
    if autocast_dtype is not None:  # the training rows' yardstick is a peak in their own precision
        precisions[precision] = autocast_dtype

    def measure_peaks():  # the best of every measurement: one is easily cut short on a busy machine
        for name, dtype in precisions.items():
            peaks[name] = max(peaks.get(name, 0.), measure_peak_gflops(device, config.peak_conv_shape, dtype))
    claimed = {}  # the results file's name, taken by its first write; the later ones replace it

    def save_results(data):
        if 'path' not in claimed:
            claimed['path'] = utils.save_json(data, config.results_file, 'replace' if config.overwrite else 'next')
            if claimed['path'] != config.results_file:
                print(f"{config.results_file} exists and is kept: writing {claimed['path']}")
        else:
            utils.save_json(data, claimed['path'], exists='replace')

    # Imported now, not at its first plot: the last training iteration's plot would pay for it.
    import matplotlib.pyplot  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint_path = os.path.join(tmp, 'srresnet_random.pth')
        state_dict = save_random_checkpoint(checkpoint_path, model_args, config.seed)
        sections = [
            ('peak', measure_peaks),
            ('inference', lambda: results.update(zip(('inference', 'tiling'), bench_inference(
                config, device, checkpoint_path, state_dict, model_args, macs)))),
            ('precision', lambda: results.update(precision=bench_precision(config, device))),
            ('backends', lambda: results.update(backends=bench_backends(config, device, macs))),
            ('video', lambda: results.update(video=bench_video(config, device, macs, tmp))),
            ('training', lambda: results.update(training=bench_training(
                config, device, tmp, checkpoint_path, model_args, macs, notes,
                lambda training: save_results({**results, 'peak_gflop_per_s': peaks, 'training': training})))),
            ('peak', measure_peaks),  # again at the end
        ]
        for name, run in sections:
            if name not in config.sections.split(','):
                continue
            print(f"{name} ({time.perf_counter() - started:.0f} s)")
            try:
                run()
            except (Exception, SystemExit) as error:  # one broken section must not lose the others' numbers
                notes.append(f"section {name} failed: {type(error).__name__}: {error}")
                print(f"  note: {notes[-1]}")

    results['peak_gflop_per_s'] = peaks
    for run in (results['training'] or {}).get('runs', []):
        peak = peaks.get(results['training']['precision'])
        run['percent_of_peak'] = 100 * run['gflop_per_s'] / peak if run['gflop_per_s'] and peak else None
    results['seconds'] = time.perf_counter() - started
    results['load_average_end'] = load_average()
    print_table(results)
    save_results(results)
    print(f"\nWrote {claimed['path']} ({results['seconds']:.0f} s)")
    mismatched = [row for row in results['inference'] or [] if not row['max_abs_diff'] <= config.tolerance]
    if mismatched:
        raise AssertionError(f"the project's inference differs from the plain reference by more than "
                             f"{config.tolerance}: {[(row['lr_size'], row['max_abs_diff']) for row in mismatched]}")
    return results


if __name__ == '__main__':
    runtime.run_script(main, __file__)
