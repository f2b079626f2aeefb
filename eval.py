"""Step 4: measure PSNR and SSIM on the test sets, the way the super-resolution literature does.

    python eval.py                                   # bicubic and the SRResNet, on Set5, Set14, BSD100
    python eval.py --models="['bicubic', 'srresnet', 'srgan']" --srgan_checkpoint=runs/srgan/checkpoint_srgan.pth
    python eval.py --models="['bicubic']" --test_data_names="['Set5']"

Make the lists of test images first, with create_data_lists.py. How the numbers are made (the
conventions of Ledig et al. 2017 and of most SR papers since):
- the HR image is each test image's largest centred crop whose sides divide by the scaling
  factor, and the LR image is Pillow's bicubic downscale of it;
- the SR image is rounded and clamped to 8 bits, as a saved image would be;
- PSNR and SSIM are measured on the luma Y (ITU-R BT.601, in [16, 235]), with `scaling_factor`
  pixels cropped off every border (utils.compute_psnr_ssim), then averaged over the images;
- 'bicubic' is Pillow's bicubic upscale of the same LR image: the baseline every SR table carries.

Prints a Markdown table with the paper's numbers beside ours, and writes `results_file` (JSON,
the means) and a CSV beside it (one row per image).
"""
import csv
import functools
import json
import os
import sys

from PIL import Image
from tqdm import tqdm

import utils
from datasets import SRDataset

# ----------------------------------------------------------------------------------------------
# Data
data_folder: str = 'data'  # where the <name>_test_images.json lists are (create_data_lists.py)
test_data_names: list = ['Set5', 'Set14', 'BSD100']  # test sets, in the table's order
scaling_factor: int = 4  # for 'bicubic'; a model uses the one its checkpoint was trained for
# Model
models: list = ['bicubic', 'srresnet']  # any of 'bicubic', 'srresnet', 'srgan'
# Checkpoints
srresnet_checkpoint: str = 'checkpoints/srresnet_x4.pth'  # from train_srresnet.py
srgan_checkpoint: str = ''  # from train_srgan.py (needed when models has 'srgan')
# Output
results_file: str = 'results/eval_results.json'  # mean metrics; the per-image CSV goes beside it ('' = none)
# System
device: str = 'auto'  # 'auto' (cuda, then mps, then cpu), or e.g. 'cpu', 'cuda:1'
# ----------------------------------------------------------------------------------------------

MODEL_NAMES = ('bicubic', 'srresnet', 'srgan')
# Ledig et al. 2017, Table 2: (PSNR dB, SSIM) at 4x, printed beside ours for reference.
PAPER_RESULTS = {
    'bicubic': {'Set5': (28.43, 0.8211), 'Set14': (25.99, 0.7486), 'BSD100': (25.94, 0.6935)},
    'srresnet': {'Set5': (32.05, 0.9019), 'Set14': (28.49, 0.8184), 'BSD100': (27.58, 0.7620)},
    'srgan': {'Set5': (29.40, 0.8472), 'Set14': (26.02, 0.7397), 'BSD100': (25.16, 0.6688)},
}


def evaluate_bicubic(dataset, scaling_factor, progress=None):
    """Per-image (psnr, ssim) of Pillow's bicubic upscale, on a test SRDataset (LR and HR '[0, 1]')."""
    results = []
    indices = range(len(dataset))
    for i in (progress(indices) if progress else indices):
        lr_img, hr_img = dataset[i]  # (3, h, w) and (3, h * s, w * s), in [0, 1]
        lr_pil = utils.convert_image(lr_img, source='[0, 1]', target='pil')  # exact: it was 8-bit
        hr_pil = utils.convert_image(hr_img, source='[0, 1]', target='pil')
        sr_pil = lr_pil.resize(hr_pil.size, Image.BICUBIC)
        results.append(utils.compute_psnr_ssim(sr_pil, hr_pil, crop_border=scaling_factor))
    return results


def markdown_table(results, test_data_names):
    """Our means, each model followed by the paper's numbers, as a Markdown table."""
    header = '| Model | ' + ' | '.join(f'{name} PSNR | {name} SSIM' for name in test_data_names) + ' |'
    lines = [header, '|' + '---|' * (1 + 2 * len(test_data_names))]
    for model_name, per_set in results.items():
        cells = [f"{per_set[name]['psnr']:.2f} | {per_set[name]['ssim']:.4f}" for name in test_data_names]
        lines.append(f"| {model_name} | " + ' | '.join(cells) + ' |')
        paper = PAPER_RESULTS[model_name]
        cells = [f'{paper[name][0]:.2f} | {paper[name][1]:.4f}' if name in paper else '- | -'
                 for name in test_data_names]
        lines.append(f"| {model_name} (paper) | " + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv):
    """Evaluate every model on every test set; print the table, write the files, return the means
    as {model: {set: {'psnr': float, 'ssim': float, 'n_images': int}}}."""
    config = utils.parse_config(globals(), argv)
    script = os.path.basename(__file__)
    unknown = [name for name in config.models if name not in MODEL_NAMES]
    if not config.models or unknown or len(set(config.models)) != len(config.models):
        sys.exit(f"{script}: models must be distinct names from {MODEL_NAMES}, got {config.models}")
    device = utils.pick_device(config.device)
    print(f"Device: {device}")

    # Everything that can be missing is checked before any work starts.
    checkpoints = {'srresnet': config.srresnet_checkpoint, 'srgan': config.srgan_checkpoint}
    trainers = {'srresnet': 'train_srresnet.py', 'srgan': 'train_srgan.py'}
    sr_models = {}
    for model_name in config.models:
        if model_name == 'bicubic':
            continue
        if not checkpoints[model_name]:
            sys.exit(f"{script}: models has {model_name!r} but --{model_name}_checkpoint is empty")
        try:
            sr_models[model_name], checkpoint = utils.load_sr_model(checkpoints[model_name], device, kind=model_name)
        except FileNotFoundError as error:
            sys.exit(f"{script}: {error}\nTrain one with `python {trainers[model_name]}` and pass its "
                     f"checkpoint with --{model_name}_checkpoint=PATH.")
        except ValueError as error:
            sys.exit(f"{script}: {error}")
        print(f"{model_name}: {checkpoints[model_name]} (iteration {checkpoint.get('iteration', '?')})")
    for set_name in config.test_data_names:
        list_path = os.path.join(config.data_folder, f'{set_name}_test_images.json')
        if not os.path.isfile(list_path):
            sys.exit(f"{script}: data list not found: {list_path} (make it with create_data_lists.py)")

    results, rows = {}, []
    for model_name in config.models:
        results[model_name] = {}
        model = sr_models.get(model_name)
        # A model works at the scale it was trained for; bicubic at the configured one.
        s = config.scaling_factor if model is None else 2 ** len(model.subpixel_convolutional_blocks)
        for set_name in config.test_data_names:
            lr_type, hr_type = ('[0, 1]', '[0, 1]') if model is None else ('imagenet-norm', '[-1, 1]')
            dataset = SRDataset(config.data_folder, 'test', crop_size=0, scaling_factor=s, lr_img_type=lr_type,
                                hr_img_type=hr_type, test_data_name=set_name)
            progress = functools.partial(tqdm, desc=f'{model_name} on {set_name}', unit='image', leave=False)
            if model is None:
                per_image = evaluate_bicubic(dataset, s, progress)
            else:
                per_image = utils.evaluate_sr(model, dataset, device, s, progress=progress)
            psnrs, ssims = [psnr for psnr, _ in per_image], [ssim for _, ssim in per_image]
            results[model_name][set_name] = {'psnr': sum(psnrs) / len(psnrs), 'ssim': sum(ssims) / len(ssims),
                                             'n_images': len(per_image)}
            rows += [[model_name, set_name, os.path.basename(path), psnr, ssim]
                     for path, (psnr, ssim) in zip(dataset.images, per_image)]
            print(f"{model_name} on {set_name}: PSNR {results[model_name][set_name]['psnr']:.2f} dB, "
                  f"SSIM {results[model_name][set_name]['ssim']:.4f} ({len(per_image)} images)")

    print("\nPSNR (dB) and SSIM on the Y channel; the '(paper)' rows are Ledig et al. 2017, Table 2\n")
    print(markdown_table(results, config.test_data_names))
    if config.results_file:
        os.makedirs(os.path.dirname(os.path.abspath(config.results_file)), exist_ok=True)
        with open(config.results_file, 'w') as f:
            json.dump(results, f, indent=2)
        csv_file = os.path.splitext(config.results_file)[0] + '.csv'
        with open(csv_file, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['model', 'set', 'image', 'psnr', 'ssim'])
            writer.writerows(rows)
        print(f"\nResults saved to {config.results_file} and {csv_file}")
    return results


if __name__ == '__main__':
    main(sys.argv[1:])
