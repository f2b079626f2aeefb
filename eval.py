"""Step 4: measure PSNR, SSIM and NIQE on the test sets, the way the super-resolution literature does.

    python eval.py                                   # bicubic and the SRResNet, on Set5, Set14, BSD100
    python eval.py --models="['bicubic', 'srresnet', 'srgan']" --srgan_checkpoint=runs/srgan/checkpoint_srgan.pth
    python eval.py --models="['bicubic']" --test_data_names="['Set5']" --metrics="['psnr', 'ssim']"
    python eval.py --results_file=results/eval_results.json   # publish: replace the numbers in results/

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

Prints a Markdown table with the paper's numbers beside ours, and writes `results_file` (JSON,
the means) and a CSV beside it (one row per image). The default is under runs/, which git
ignores: the published results/eval_results.json changes only when named with --results_file.
"""
import csv
import os

import torch
from PIL import Image
from tqdm import tqdm

import runtime
import utils
from datasets import SRDataset, data_list_path, read_data_list

# ----------------------------------------------------------------------------------------------
# Data
data_folder: str = 'data'  # where the <name>_test_images.json lists are (create_data_lists.py)
test_data_names: list = ['Set5', 'Set14', 'BSD100']  # test sets, in the table's order
scaling_factor: int = 4  # for 'bicubic' and the HR row; a model uses the one its checkpoint was trained for
# Model
models: list = ['bicubic', 'srresnet']  # any of 'bicubic', 'srresnet', 'srgan'
# Metrics
metrics: list = ['psnr', 'ssim', 'niqe']  # any of these; NIQE takes about 0.1 s a 500x500 image on a CPU
# Checkpoints
srresnet_checkpoint: str = 'checkpoints/srresnet_x4.pth'  # from train_srresnet.py
srgan_checkpoint: str = ''  # from train_srgan.py (needed when models has 'srgan')
# Output
results_file: str = 'runs/eval/eval_results.json'  # mean metrics; the per-image CSV goes beside it ('' = none)
# System
device: str = 'auto'  # 'auto' (cuda, then mps, then cpu), or e.g. 'cpu', 'cuda:1'
# ----------------------------------------------------------------------------------------------

MODEL_NAMES = ('bicubic', 'srresnet', 'srgan')
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
    """The table's name for a results key: 'hr' -> 'HR', 'srgan_mse' -> 'SRGAN-MSE'."""
    return {'hr': 'HR', 'bicubic': 'Bicubic', 'srresnet': 'SRResNet'}.get(key) or 'SRGAN-' + key[6:].upper()


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
    sr_img = model(lr_norm.unsqueeze(0).to(device))[0]  # (3, h * s, w * s), in [-1, 1]
    return utils.convert_image(sr_img.float(), source='[-1, 1]', target='pil')


def measure(sr_img, hr_img, metric_names, crop_border):
    """{metric: value} of one SR image against its HR image (PIL). sr_img None is the HR row:
    the NIQE of hr_img itself, with PSNR and SSIM None (not applicable)."""
    values = {}
    if sr_img is not None and {'psnr', 'ssim'} & set(metric_names):
        values['psnr'], values['ssim'] = utils.compute_psnr_ssim(sr_img, hr_img, crop_border)
    if 'niqe' in metric_names:
        values['niqe'] = utils.niqe(hr_img if sr_img is None else sr_img, crop_border)
    return {metric: values.get(metric) for metric in metric_names}


def markdown_table(results, test_data_names, metric_names):
    """The means as a Markdown table, each of our rows followed by the paper's; '—' where a
    number does not apply (PSNR of the HR images) or was not published (NIQE in the paper)."""
    formats = {'psnr': '{:.2f}', 'ssim': '{:.4f}', 'niqe': '{:.2f}'}

    def cells(per_set):
        return ' | '.join('—' if per_set.get(name, {}).get(metric) is None else formats[metric].format(
            per_set[name][metric]) for name in test_data_names for metric in metric_names)

    header = ' | '.join(f'{name} {metric.upper()}' for name in test_data_names for metric in metric_names)
    lines = [f'| Model | {header} |', '|' + '---|' * (1 + len(test_data_names) * len(metric_names))]
    for key, per_set in results.items():
        lines.append(f"| {row_name(key)}{'' if key == 'hr' else ' (ours)'} | {cells(per_set)} |")
        if key in PAPER_RESULTS:
            paper = {name: {'psnr': psnr, 'ssim': ssim} for name, (psnr, ssim) in PAPER_RESULTS[key].items()}
            lines.append(f'| {row_name(key)} (paper) | {cells(paper)} |')
    return '\n'.join(lines)


def main(argv):
    """Evaluate every model on every test set; print the table, write the files, return the means
    as {key: {set: {metric: float or None, 'n_images': int}}}, key 'hr', 'bicubic', 'srresnet'
    or 'srgan_<content loss>'."""
    config = runtime.parse_config(globals(), argv)
    for constant, known in (('models', MODEL_NAMES), ('metrics', METRIC_NAMES)):
        names = getattr(config, constant)
        runtime.require(names and set(names) <= set(known) and len(set(names)) == len(names),
                        f"{constant} must be distinct names from {known}, got {names}")
    device = runtime.pick_device(config.device)
    print(f"Device: {device}")

    # Everything that can be missing or wrong is checked before any model runs.
    images = {name: read_data_list(data_list_path(config.data_folder, name)) for name in config.test_data_names}
    rows = {'hr': (None, config.scaling_factor)} if 'niqe' in config.metrics else {}  # key: (model, scale)
    for model_name in config.models:
        if model_name == 'bicubic':
            rows['bicubic'] = (None, config.scaling_factor)
            continue
        path = getattr(config, f'{model_name}_checkpoint')
        try:
            model, checkpoint = runtime.load_sr_model(path, device, kind=model_name)
        except (FileNotFoundError, ValueError) as error:
            raise type(error)(f"{error}. {runtime.train_hint(model_name)} and pass it with "
                              f"--{model_name}_checkpoint=PATH") from None
        key = srgan_key(checkpoint, path) if model_name == 'srgan' else model_name
        rows[key] = (model, 2 ** len(model.subpixel_convolutional_blocks))  # the scale it was trained for
        print(f"{row_name(key)}: {path} (iteration {checkpoint.get('iteration', '?')})")
    for name in config.test_data_names:
        check_sizes(data_list_path(config.data_folder, name), images[name], {s for _, s in rows.values()},
                    config.metrics)

    results, csv_rows = {}, []
    for key, (model, s) in rows.items():
        results[key] = {}
        for name in config.test_data_names:
            dataset = SRDataset(config.data_folder, 'test', crop_size=0, scaling_factor=s, lr_img_type='[0, 1]',
                                hr_img_type='[0, 1]', test_data_name=name)
            per_image = []
            for i in tqdm(range(len(dataset)), desc=f'{row_name(key)} on {name}', unit='image', leave=False):
                lr_img, hr_img = dataset[i]  # (3, h, w) and (3, h * s, w * s), in [0, 1]
                hr_pil = utils.convert_image(hr_img, source='[0, 1]', target='pil')  # exact: it was 8-bit
                sr_pil = None if key == 'hr' else super_resolve(model, lr_img, hr_pil.size, device)
                per_image.append(measure(sr_pil, hr_pil, config.metrics, crop_border=s))
            columns = {metric: [values[metric] for values in per_image] for metric in config.metrics}
            means = {metric: None if None in column else sum(column) / len(column)  # None: PSNR, SSIM of 'hr'
                     for metric, column in columns.items()}
            results[key][name] = {**means, 'n_images': len(per_image)}
            csv_rows += [[key, name, os.path.basename(path)] + ['' if v[m] is None else v[m] for m in config.metrics]
                         for path, v in zip(dataset.images, per_image)]
            print(f"{row_name(key)} on {name} ({len(per_image)} images): "
                  + ', '.join(f'{m.upper()} {v:.4f}' for m, v in means.items() if v is not None))

    print("\nPSNR (dB) and SSIM on the Y channel; NIQE (lower is better) of the SR image alone. The '(paper)' "
          "rows are Ledig et al. 2017, Tables 1 and 2\n")
    print(markdown_table(results, config.test_data_names, config.metrics))
    if config.results_file:
        utils.save_json(results, config.results_file)
        csv_file = os.path.splitext(config.results_file)[0] + '.csv'
        with utils.atomic_write(csv_file, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['model', 'set', 'image'] + config.metrics)
            writer.writerows(csv_rows)
        print(f"\nResults saved to {config.results_file} and {csv_file}")
    return results


if __name__ == '__main__':
    runtime.run_script(main, __file__)
