"""Step 4: measure PSNR, SSIM and NIQE on the test sets, the way the super-resolution literature does.

    python eval.py                                   # bicubic and the SRResNet, on Set5, Set14, BSD100
    python eval.py --models="['bicubic', 'srresnet', 'srgan']" --srgan_checkpoint=runs/srgan/checkpoint_srgan.pth
    python eval.py --models="['bicubic']" --test_data_names="['Set5']" --metrics="['psnr', 'ssim']"
    python eval.py --results_file=results/eval_results.json --overwrite=True   # publish: replace results/'s numbers
    python eval.py --degradation=realistic --test_data_names="['Set14', 'BSD100']" \\
        --models="['bicubic', 'srresnet', 'srresnet_real']" --real_lr_folder=data/RealSRSet   # real photos
    python eval.py --degradation=ladder --test_data_names="['Set14']" --denoise="[0.5, 'auto']" --precision=auto

Make the lists of test images first, with create_data_lists.py. How the numbers are made (the
conventions of Ledig et al. 2017 and of most SR papers since):
- the HR image is each test image's largest centred crop whose sides divide by the scaling
  factor, and the LR image is Pillow's bicubic downscale of it;
- the SR image is rounded and clamped to 8 bits, as a saved image would be;
- PSNR and SSIM compare it with the HR image on the luma Y (ITU-R BT.601, in [16, 235]), with
  `scaling_factor` pixels cropped off every border (utils.compute_psnr_ssim);
- NIQE needs no reference: it scores how natural the SR image alone looks, lower is better, on
  its Y rounded to integers with the same border crop (utils.niqe, MATLAB's niqe). The 'HR' row
  is the NIQE of the HR images themselves, the floor to compare with. PSNR rewards blur and NIQE
  penalises it: together they show the trade-off the SRGAN paper is about;
- each metric is averaged over the images of a set;
- 'bicubic' is Pillow's bicubic upscale of the same LR image: the baseline every SR table carries.

For models meant for real photos there are two more measures, each in its own table:
- degradation='realistic': the LR image is the HR crop put through degradations.degrade (blur,
  resizes, noise, JPEG, twice) keyed by the image's file name, so every run on every machine
  degrades each test image the same way. The paper's rows are not printed beside it: its
  protocol is bicubic;
- real_lr_folder: real low-resolution photos with no ground truth (RealSRSet, from BSRGAN), each
  upscaled whole; only NIQE can score them;
- degradation='ladder': each test set at every level of degradations.LADDER_LEVELS (clean to
  heavy, each keyed by the file name), a table per set. `denoise` adds rows of blends of the four
  checkpoints (runtime.Blend), 'auto' the value super_resolve.py would read from each image.

Prints a Markdown table with the paper's numbers beside ours, and writes `results_file` (JSON,
the means) and a CSV beside it (one row per image). The default is under runs/, which git
ignores: the published results/eval_results.json changes only when named with --results_file.
"""
import csv
import os

import torch
from PIL import Image
from tqdm import tqdm

import backends
import runtime
import utils
from datasets import SRDataset, data_list_path, read_data_list
from degradations import DEGRADATIONS, LADDER_LEVELS, auto_denoise, damage_levels
from super_resolve import prepare_for_backend

# ----------------------------------------------------------------------------------------------
# Data
data_folder: str = 'data'  # where the <name>_test_images.json lists are (create_data_lists.py)
test_data_names: list = ['Set5', 'Set14', 'BSD100']  # test sets, in the table's order
scaling_factor: int = 4  # for 'bicubic' and the HR row; a model uses the one its checkpoint was trained for
degradation: str = 'bicubic'  # test LR images: 'bicubic' (the paper's protocol), 'realistic' (fixed per image)
#                               or 'ladder' (each image at every level of degradations.LADDER_LEVELS)
real_lr_folder: str = ''  # real LR photos without ground truth, NIQE only (e.g. 'data/RealSRSet'; '' = none)
# Model
models: list = ['bicubic', 'srresnet']  # any of 'bicubic', 'srresnet', 'srresnet_real', 'srgan', 'srgan_real'
denoise: list = []  # more rows: the four checkpoints below blended at each of these denoise values (in [0, 1],
#                     or 'auto': chosen from each LR image, as super_resolve.py does), e.g. "[0.5, 'auto']"
texture: float = 0.  # the texture value of those blends, in [0, 1] (0: the SRResNets only)
# Metrics
metrics: list = ['psnr', 'ssim', 'niqe']  # any of these; NIQE takes about 0.1 s a 500x500 image on a CPU
# Checkpoints
srresnet_checkpoint: str = 'checkpoints/srresnet_x4.pth'  # from train_srresnet.py
srresnet_real_checkpoint: str = 'checkpoints/srresnet_real_x4.pth'  # a second SRResNet, e.g. for real photos
srgan_checkpoint: str = 'checkpoints/srgan_mse_x4.pth'  # from train_srgan.py (when models has 'srgan')
srgan_real_checkpoint: str = 'checkpoints/srgan_real_x4.pth'  # a second SRGAN, e.g. for real photos
damage_checkpoint: str = 'checkpoints/damage_x4.pth'  # denoise 'auto': the damage classifier (fit_denoise.py)
# Output
results_file: str = 'runs/eval/eval_results.json'  # mean metrics; the per-image CSV goes beside it ('' = none)
overwrite: bool = False  # replace an existing results_file and its CSV (False: the next free name, eval_results_1.json)
# System
device: str = 'auto'  # 'auto' (cuda, then mps, then cpu), or e.g. 'cpu', 'cuda:1'
precision: str = 'fp32'  # the models' arithmetic: 'fp32' (exact), or 'auto', 'bf16', 'fp16', 'int8' as in super_resolve.py
backend: str = 'torch'  # 'torch' (the published numbers), or 'openvino' or 'auto' as in super_resolve.py (faster on a CPU)
# ----------------------------------------------------------------------------------------------

MODEL_NAMES = ('bicubic', 'srresnet', 'srresnet_real', 'srgan', 'srgan_real')
METRIC_NAMES = ('psnr', 'ssim', 'niqe')
# The smallest image side each metric can measure, after the border crop: SSIM's 7x7 window, NIQE's block.
MIN_SIDE = {'psnr': 1, 'ssim': 7, 'niqe': utils.NIQE_BLOCK_SIZE}
CONTENT_LOSSES = ('vgg54', 'vgg22', 'mse')  # SRGAN variants, from checkpoint['config']['content_loss']
# Ledig et al. 2017, (PSNR dB, SSIM) at 4x: Table 2 (bicubic, SRResNet, and SRGAN, which is
# SRGAN-VGG54), and Table 1 for the other SRGAN variants (Set5 and Set14 only).
PAPER_RESULTS = {
    'bicubic': {'Set5': (28.43, 0.8211), 'Set14': (25.99, 0.7486), 'BSD100': (25.94, 0.6935)},
    'srresnet': {'Set5': (32.05, 0.9019), 'Set14': (28.49, 0.8184), 'BSD100': (27.58, 0.7620)},
    'srgan_mse': {'Set5': (30.64, 0.8701), 'Set14': (26.92, 0.7611)},
    'srgan_vgg22': {'Set5': (29.84, 0.8468), 'Set14': (26.44, 0.7518)},
    'srgan_vgg54': {'Set5': (29.40, 0.8472), 'Set14': (26.02, 0.7397), 'BSD100': (25.16, 0.6688)},
}


def row_name(key):
    """The table's name for a results key: 'hr' -> 'HR', 'srgan_mse' -> 'SRGAN-MSE', and a model
    trained on realistic degradations gets '-real': 'srresnet_real' -> 'SRResNet-real'. A blend's
    key is 'blend d0.5 t0' (or 'blend auto t0'): 'SRResNet d0.5 t0' (runtime.blend_label)."""
    if key.startswith('blend '):
        return 'SRResNet ' + key[len('blend '):]
    if key.endswith('_real'):
        return row_name(key[:-len('_real')]) + '-real'
    return {'hr': 'HR', 'bicubic': 'Bicubic', 'srresnet': 'SRResNet'}.get(key) or 'SRGAN-' + key[6:].upper()


def model_key(kind, checkpoint, path):
    """The results key of a loaded model of `kind` ('srresnet' or 'srgan'): 'srresnet' or
    'srgan_<content loss>', with '_real' when its checkpoint was trained on realistic degradations."""
    key = srgan_key(checkpoint, path) if kind == 'srgan' else 'srresnet'
    try:
        return key + ('_real' if runtime.degradation_of(checkpoint) != 'bicubic' else '')
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def srgan_key(checkpoint, path):
    """'srgan_<content loss>' from an SRGAN checkpoint's config; checkpoints older than the
    variants were all trained with the paper's VGG54 loss."""
    saved = checkpoint.get('config')
    content_loss = saved.get('content_loss', 'vgg54') if isinstance(saved, dict) else 'vgg54'
    if content_loss not in CONTENT_LOSSES:
        raise ValueError(f"{path}: config content_loss is {content_loss!r}, not one of {CONTENT_LOSSES}")
    return f'srgan_{content_loss}'


def check_sizes(list_path, images, factors, metric_names):
    """Refuse, before any work, an image too small for a metric once cropped for a scaling factor."""
    for path in images:
        width, height = utils.image_size(path)  # from the header: nothing is decoded
        for s in factors:
            side = min(width - width % s, height - height % s) - 2 * s  # after the crops to s and the border
            for metric in metric_names:
                if side < MIN_SIDE[metric]:
                    raise ValueError(f"{path} (in {list_path}) is {width}x{height}, too small for {metric.upper()} "
                                     f"at x{s}: it needs {MIN_SIDE[metric]} px a side after the {s}-px border "
                                     f"crop, and has {side}")


@torch.inference_mode()
def super_resolve(model, lr_img, hr_size, device):
    """One SR image as an 8-bit PIL image: the model's output, or Pillow's bicubic upscale of the
    LR image ((3, h, w), in [0, 1]) when model is None."""
    if model is None:
        return utils.convert_image(lr_img, source='[0, 1]', target='pil').resize(hr_size, Image.BICUBIC)
    lr_norm = utils.convert_image(lr_img, source='[0, 1]', target='imagenet-norm')  # (3, h, w)
    dtype = next(model.parameters()).dtype
    sr_img = model(lr_norm.unsqueeze(0).to(device, dtype))[0]  # (3, h * s, w * s), in [-1, 1]
    return utils.convert_image(sr_img.float(), source='[-1, 1]', target='pil')


class AutoBlend:
    """The 'auto' row: for each LR image, the blend at the denoise value that the damage
    classifier reads from it (degradations.auto_denoise). Blends are made once per distinct value
    (auto_denoise rounds to steps of 0.05)."""

    def __init__(self, blend, texture, device, backend, precision, damage_checkpoint):
        self.blend, self.texture, self.device, self.models = blend, texture, device, {}
        self.backend, self.precision = backend, precision
        self.classifier, self.damage_map = runtime.load_damage_model(damage_checkpoint)
        self.denoise = None  # the value of the last image

    def __call__(self, lr_img):
        """The model for one (3, h, w) LR image in [0, 1]; sets self.denoise."""
        self.denoise = auto_denoise(damage_levels(self.classifier, lr_img), self.damage_map)
        if self.denoise not in self.models:
            self.models[self.denoise] = ready(self.blend.model(self.denoise, self.texture, self.device), self.backend,
                                              self.device, self.precision)
        return self.models[self.denoise]


def ready(model, backend, device, precision):
    """The model as it is in float32 on PyTorch (the published numbers), else made fast on `backend`
    in `precision` (super_resolve.prepare_for_backend)."""
    if backend == 'torch' and precision == 'fp32':
        return model
    return prepare_for_backend(model, backend, device, precision)


def measure(sr_img, hr_img, metric_names, crop_border):
    """{metric: value} of one SR image against its HR image (PIL). sr_img None is the HR row:
    the NIQE of hr_img itself, with PSNR and SSIM None (not applicable)."""
    values = {}
    if sr_img is not None and {'psnr', 'ssim'} & set(metric_names):
        values['psnr'], values['ssim'] = utils.compute_psnr_ssim(sr_img, hr_img, crop_border)
    if 'niqe' in metric_names:
        values['niqe'] = utils.niqe(hr_img if sr_img is None else sr_img, crop_border)
    return {metric: values.get(metric) for metric in metric_names}


def markdown_table(results, test_data_names, metric_names, paper_rows=True):
    """The means as a Markdown table, each of our rows followed by the paper's (if paper_rows);
    '—' where a number does not apply (PSNR of the HR images) or was not published (NIQE in the
    paper). Rows without any of test_data_names (the HR row of real photos) are left out."""
    formats = {'psnr': '{:.2f}', 'ssim': '{:.4f}', 'niqe': '{:.2f}'}

    def cells(per_set):
        return ' | '.join('—' if per_set.get(name, {}).get(metric) is None else formats[metric].format(
            per_set[name][metric]) for name in test_data_names for metric in metric_names)

    header = ' | '.join(f'{name} {metric.upper()}' for name in test_data_names for metric in metric_names)
    lines = [f'| Model | {header} |', '|' + '---|' * (1 + len(test_data_names) * len(metric_names))]
    for key, per_set in results.items():
        if not set(test_data_names) & set(per_set):
            continue
        lines.append(f"| {row_name(key)}{'' if key == 'hr' else ' (ours)'} | {cells(per_set)} |")
        if paper_rows and key in PAPER_RESULTS:
            paper = {name: {'psnr': psnr, 'ssim': ssim} for name, (psnr, ssim) in PAPER_RESULTS[key].items()}
            lines.append(f'| {row_name(key)} (paper) | {cells(paper)} |')
    return '\n'.join(lines)


def ladder_table(results, name, metric_names):
    """The means on one test set under the ladder as a Markdown table: a row per model, a column
    per level, each cell its metrics joined by ' / ' (e.g. PSNR / SSIM)."""
    formats = {'psnr': '{:.2f}', 'ssim': '{:.4f}', 'niqe': '{:.2f}'}
    lines = [f"| Model | {' | '.join(LADDER_LEVELS)} |", '|' + '---|' * (1 + len(LADDER_LEVELS))]
    for key, per_set in results.items():
        cells = [' / '.join('—' if per_set.get(f'{name}:{level}', {}).get(metric) is None
                            else formats[metric].format(per_set[f'{name}:{level}'][metric]) for metric in metric_names)
                 for level in LADDER_LEVELS]
        lines.append(f"| {row_name(key)} | {' | '.join(cells)} |")
    return '\n'.join(lines)


def real_photos(folder, factors):
    """The image files of a folder of real LR photos, checked before any model runs: the folder
    exists and holds images, and each is large enough for NIQE once upscaled by every factor."""
    paths = utils.list_images(folder)  # FileNotFoundError naming the folder when it is missing
    if not paths:
        raise ValueError(f"real_lr_folder {folder} holds no images")
    for path in paths:
        try:
            width, height = utils.image_size(path)  # from the header: nothing is decoded
        except OSError as error:
            raise ValueError(f"{path} (in real_lr_folder) is not a readable image: {error}") from None
        side = min(width, height) * min(factors) - 2 * min(factors)  # after the upscale and the border crop
        if side < MIN_SIDE['niqe']:
            raise ValueError(f"{path} (in real_lr_folder) is {width}x{height}, too small for NIQE: upscaled "
                             f"x{min(factors)} it has {side} px a side after the border crop, NIQE needs "
                             f"{MIN_SIDE['niqe']}")
    return paths


def upscale_real_photo(model, path, s, device):
    """The SR image (PIL) of one real LR photo: the model's output (an AutoBlend's for this
    photo), or the bicubic upscale."""
    with Image.open(path) as img:
        lr_pil = utils.pil_to_rgb(img)
    lr_img = utils.convert_image(lr_pil, source='pil', target='[0, 1]')  # (3, h, w)
    model = model(lr_img) if isinstance(model, AutoBlend) else model
    return super_resolve(model, lr_img, (lr_pil.width * s, lr_pil.height * s), device)


def main(argv):
    """Evaluate every model on every test set (and the real photos of real_lr_folder); print the
    tables, write the files, return the means as {key: {set: {metric: float or None,
    'n_images': int}}}, key 'hr', 'bicubic', 'srresnet' or 'srgan_<content loss>' (with '_real'
    for a model trained on realistic degradations); the real photos' set is the folder's name."""
    config = runtime.parse_config(globals(), argv)
    for constant, known in (('models', MODEL_NAMES), ('metrics', METRIC_NAMES)):
        names = getattr(config, constant)
        runtime.require(names and set(names) <= set(known) and len(set(names)) == len(names),
                        f"{constant} must be distinct names from {known}, got {names}")
    runtime.require(config.degradation in DEGRADATIONS,
                    f"degradation must be one of {DEGRADATIONS}, got {config.degradation!r}")
    runtime.require(config.test_data_names or config.real_lr_folder,
                    "test_data_names is empty and no real_lr_folder is given: nothing to evaluate")
    denoise_values = [value if value == 'auto' else runtime.check_blend_value('denoise', value)
                      for value in config.denoise]
    runtime.check_blend_value('texture', config.texture)
    runtime.require(len(set(map(str, denoise_values))) == len(denoise_values), f"denoise has repeats: {config.denoise}")
    if config.results_file:  # refused now, not after the evaluation
        utils.check_writable(os.path.dirname(os.path.abspath(config.results_file)), 'results_file', create=False)
    device = runtime.pick_device(config.device)
    backend = backends.pick_backend(device, config.backend, config.precision)
    precision = backends.openvino_precision(config.precision) if backend == 'openvino' else next(
        name for name, dtype in runtime.PRECISIONS.items() if dtype == runtime.inference_dtype(device, config.precision))
    print(f"Device: {device}, precision {precision}, backend {backend}")

    # Everything that can be missing or wrong is checked before any model runs.
    images = {name: read_data_list(data_list_path(config.data_folder, name)) for name in config.test_data_names}
    rows = {'hr': (None, config.scaling_factor)} if 'niqe' in config.metrics else {}  # key: (model, scale)
    for model_name in config.models:
        if model_name == 'bicubic':
            rows['bicubic'] = (None, config.scaling_factor)
            continue
        path = getattr(config, f'{model_name}_checkpoint')
        kind = 'srgan' if model_name.startswith('srgan') else 'srresnet'
        try:
            model, checkpoint = runtime.load_sr_model(path, device, kind=kind)
        except (FileNotFoundError, ValueError) as error:
            raise type(error)(f"{error}. {runtime.train_hint(kind)} and pass it with "
                              f"--{model_name}_checkpoint=PATH") from None
        key = model_key(kind, checkpoint, path)
        runtime.require(key not in rows, f"--{model_name}_checkpoint={path} makes a second {row_name(key)} row: "
                                         f"give each model a different checkpoint")
        rows[key] = (ready(model, backend, device, precision), 2 ** len(model.subpixel_convolutional_blocks))
        print(f"{row_name(key)}: {path} (iteration {checkpoint.get('iteration', '?')}, "
              f"trained on {runtime.degradation_of(checkpoint)} LR images)")
    if denoise_values:
        blend = runtime.load_blend(config, denoise_values, [config.texture])
        for value in denoise_values:
            model = AutoBlend(blend, config.texture, device, backend, precision, config.damage_checkpoint) \
                if value == 'auto' else ready(blend.model(value, config.texture, device), backend, device, precision)
            rows['blend ' + runtime.blend_label(value, config.texture)[len('SRResNet '):]] = \
                (model, blend.args['scaling_factor'])
        print(f"Blends: {', '.join(map(str, config.denoise))} at texture {config.texture:g}, of {blend.paths}")
    for name in config.test_data_names:
        check_sizes(data_list_path(config.data_folder, name), images[name], {s for _, s in rows.values()},
                    config.metrics)
    if config.real_lr_folder:
        runtime.require('niqe' in config.metrics, "real_lr_folder is scored by NIQE only: add 'niqe' to metrics")
    real_paths = real_photos(config.real_lr_folder, {s for _, s in rows.values()}) if config.real_lr_folder else []
    real_name = os.path.basename(os.path.normpath(config.real_lr_folder))

    # Under the ladder, each test set is measured at every level, as a set of its own ('Set14:medium').
    levels = LADDER_LEVELS if config.degradation == 'ladder' else (None,)
    sets = [(name, level) for name in config.test_data_names for level in levels]
    results, csv_rows, pairs = {}, [], {}
    for key, (model, s) in rows.items():
        results[key] = {}
        for name, level in sets:
            set_name = name if level is None else f'{name}:{level}'
            if (set_name, s) not in pairs:  # made once for every row: the realistic chain takes 0.5 s an image
                dataset = SRDataset(config.data_folder, 'test', crop_size=0, scaling_factor=s, lr_img_type='[0, 1]',
                                    hr_img_type='[0, 1]', test_data_name=name,
                                    degradation=config.degradation if level is None else f'ladder:{level}')
                pairs[set_name, s] = (dataset.images, [dataset[i] for i in range(len(dataset))])
            paths, set_pairs = pairs[set_name, s]
            per_image, chosen = [], []
            for lr_img, hr_img in tqdm(set_pairs, desc=f'{row_name(key)} on {set_name}', unit='image', leave=False):
                # lr_img (3, h, w) and hr_img (3, h * s, w * s), in [0, 1]
                hr_pil = utils.convert_image(hr_img, source='[0, 1]', target='pil')  # exact: it was 8-bit
                image_model = model(lr_img) if isinstance(model, AutoBlend) else model
                chosen.append(model.denoise if isinstance(model, AutoBlend) else '')
                sr_pil = None if key == 'hr' else super_resolve(image_model, lr_img, hr_pil.size, device)
                per_image.append(measure(sr_pil, hr_pil, config.metrics, crop_border=s))
            columns = {metric: [values[metric] for values in per_image] for metric in config.metrics}
            means = {metric: None if None in column else sum(column) / len(column)  # None: PSNR, SSIM of 'hr'
                     for metric, column in columns.items()}
            results[key][set_name] = {**means, 'n_images': len(per_image)}
            if isinstance(model, AutoBlend):
                results[key][set_name]['denoise'] = sum(chosen) / len(chosen)  # the mean value chosen
            csv_rows += [[key, set_name, os.path.basename(path)] + ['' if v[m] is None else v[m] for m in config.metrics]
                         + [value] for path, v, value in zip(paths, per_image, chosen)]
            print(f"{row_name(key)} on {set_name} ({len(per_image)} images): "
                  + ', '.join(f'{m.upper()} {v:.4f}' for m, v in means.items() if v is not None)
                  + (f", mean denoise {results[key][set_name]['denoise']:.3f}" if isinstance(model, AutoBlend) else ''))
        if real_paths and key != 'hr':  # no ground truth: the LR photos themselves have no HR row
            scores, chosen = [], []
            for path in tqdm(real_paths, desc=f'{row_name(key)} on {real_name}', unit='image', leave=False):
                scores.append(utils.niqe(upscale_real_photo(model, path, s, device), crop_border=s))
                chosen.append(model.denoise if isinstance(model, AutoBlend) else '')
            results[key][real_name] = {'niqe': sum(scores) / len(scores), 'n_images': len(scores)}
            csv_rows += [[key, real_name, os.path.basename(path)] + [score if m == 'niqe' else '' for m in config.metrics]
                         + [value] for path, score, value in zip(real_paths, scores, chosen)]
            print(f"{row_name(key)} on {real_name} ({len(scores)} photos): NIQE {results[key][real_name]['niqe']:.4f}")

    if config.test_data_names:
        protocol = {'bicubic': "bicubic LR images",
                    'realistic': "realistic LR images (degradations.degrade, keyed by file name; the paper's "
                                 "protocol is bicubic)",
                    'ladder': "LR images at each level of the ladder (degradations.degrade_by, keyed by file "
                              "name)"}[config.degradation]
        print(f"\nPSNR (dB) and SSIM on the Y channel; NIQE (lower is better) of the SR image alone; {protocol}."
              + (" The '(paper)' rows are Ledig et al. 2017, Tables 1 and 2" if config.degradation == 'bicubic' else '')
              + "\n")
        if config.degradation == 'ladder':
            for name in config.test_data_names:
                print(f"\n{name}, each image at every level of the ladder (degradations.LADDER_LEVELS)\n")
                print(ladder_table(results, name, config.metrics))
        else:
            print(markdown_table(results, config.test_data_names, config.metrics, config.degradation == 'bicubic'))
    if real_paths:
        print(f"\nNIQE (lower is better) of the SR images of the real photos in {config.real_lr_folder}\n")
        print(markdown_table(results, [real_name], ['niqe'], paper_rows=False))
    if config.results_file:
        exists = 'replace' if config.overwrite else 'next'  # the name is claimed when the file is complete
        results_file = utils.save_json(results, config.results_file, exists)
        if results_file != config.results_file:
            print(f"{config.results_file} exists and is kept: wrote {results_file} instead")
        csv_file = os.path.splitext(results_file)[0] + '.csv'
        with utils.atomic_write(csv_file, 'w', newline='', exists=exists) as f:
            writer = csv.writer(f)
            auto = 'auto' in config.denoise  # the denoise value chosen for each image, in a last column
            writer.writerow(['model', 'set', 'image'] + config.metrics + ['denoise'] * auto)
            writer.writerows(row if auto else row[:-1] for row in csv_rows)
        print(f"\nResults saved to {results_file} and {f.final_path}")
    return results


if __name__ == '__main__':
    runtime.run_script(main, __file__)
