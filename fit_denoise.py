"""After the real-photo models: fit what super_resolve.py's denoise='auto' reads each photo with.

    python fit_denoise.py                                  # both steps (about 25 min on one core)
    python fit_denoise.py --classifier=runs/fit_denoise/classifier.pth  # the second step only

1. A small classifier (models.DamageNet) learns to tell the levels of the ladder apart (clean,
   light, medium, heavy, JPEG-only: degradations.LADDER_LEVELS) from LR crops of the training
   images, each degraded by degradation='ladder', which draws the level.
2. On the validation images (held out of the training folders, never a test set) at every level,
   eval.py measures the PSNR of the blend of the SRResNet and the real-photo SRResNet at denoise
   0, 0.1, ..., 1. Each level then gets its own denoise value, and the map one power, chosen so
   that the classifier's mix of the values (weighted by its probabilities raised to the power,
   degradations.auto_denoise) gives the highest mean PSNR over all those images (Nelder-Mead,
   from each level's best fixed value and powers of 1, 4 and 16, the best fit kept).

Writes `output` (the classifier's weights, its levels and their denoise values) and a JSON
report beside it: per level, auto against the best fixed value and each image's own best.
"""
import csv
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

import eval as evaluate
import runtime
import utils
from datasets import SRDataset, data_list_path, decode_all, read_data_list
from degradations import LADDER_LEVELS, auto_denoise, damage_levels, degrade_by, jpeg_scale, ladder_level
from models import DamageNet

# ----------------------------------------------------------------------------------------------
# Data
data_folder: str = 'data'  # train_images.json and val_images.json (create_data_lists.py)
crop_size: int = 256  # HR crop side in px for the classifier's training (64 px LR crops at x4)
val_data_name: str = 'val'  # the images the levels' values are fitted on: never a test set you report
grid: list = [round(0.1 * i, 1) for i in range(11)]  # the denoise values measured
grid_file: str = ''  # step 2's val_grid.csv of these checkpoints, to reuse ('' = measure it, into out_dir)
# Model
n_channels: int = 32  # the classifier's first feature channels
classifier: str = ''  # step 1's classifier.pth, to reuse ('' = train one, into out_dir)
# Learning
iterations: int = 3000  # classifier updates
batch_size: int = 16  # crops per update
lr: float = 1e-3  # Adam learning rate (cosine to 0)
seed: int = 0  # the crops, their damage and the initial weights
# Checkpoints
srresnet_checkpoint: str = 'checkpoints/srresnet_x4.pth'  # the blend's denoise-0 corner
srresnet_real_checkpoint: str = 'checkpoints/srresnet_real_x4.pth'  # its denoise-1 corner
out_dir: str = 'runs/fit_denoise'  # the classifier, the validation grid and the report
output: str = 'runs/fit_denoise/damage_x4.pth'  # the fitted file (super_resolve.py's damage_checkpoint)
overwrite: bool = False  # replace what an earlier fit left in out_dir and output (False: refuse, naming it)
print_freq: int = 250  # iterations between log lines
# System
precision: str = 'auto'  # the grid's arithmetic (eval.py's precision; bf16 moves PSNR by about 0.001 dB)
# ----------------------------------------------------------------------------------------------


def train_classifier(config):
    """Step 1: a DamageNet trained on ladder-degraded LR crops of the training images."""
    runtime.seed_everything(config.seed)
    paths = read_data_list(data_list_path(config.data_folder, 'train'))
    images = [image for image in decode_all(paths) if min(image.shape[:2]) >= config.crop_size]
    print(f"Classifier: {len(images)} training images of at least {config.crop_size} px")
    model = DamageNet(len(LADDER_LEVELS), config.n_channels)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    started, correct, seen = time.perf_counter(), 0, 0
    for iteration in range(config.iterations):
        rng = random.Random(f'damage:{config.seed}:{iteration}')
        crops, keys = [], []
        for i in range(config.batch_size):
            image = images[rng.randrange(len(images))]
            top, left = rng.randrange(image.shape[0] - config.crop_size + 1), rng.randrange(image.shape[1] - config.crop_size + 1)
            crops.append(torch.from_numpy(image[top:top + config.crop_size, left:left + config.crop_size].copy()))
            keys.append(f'damage:{config.seed}:{iteration}:{i}')
        hr_imgs = torch.stack(crops).permute(0, 3, 1, 2).float() / 255.  # (N, 3, c, c), in [0, 1]
        lr_imgs = degrade_by('ladder', hr_imgs, keys, 4)  # (N, 3, c/4, c/4): each key draws its level
        labels = torch.tensor([LADDER_LEVELS.index(ladder_level(key)) for key in keys])  # (N,)
        scales = torch.tensor([jpeg_scale(lr_img) for lr_img in lr_imgs])  # (N,)

        logits = model(lr_imgs, scales)  # (N, levels)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in optimizer.param_groups:
            group['lr'] = config.lr * 0.5 * (1 + math.cos(math.pi * iteration / config.iterations))
        optimizer.step()

        correct, seen = correct + int((logits.argmax(1) == labels).sum()), seen + len(labels)
        if (iteration + 1) % config.print_freq == 0:
            elapsed = time.perf_counter() - started
            print(f"[{iteration + 1}/{config.iterations}] loss {loss.item():.4f}  accuracy {correct / seen:.3f}  "
                  f"{1000 * elapsed / (iteration + 1):.0f} ms/it")
            correct, seen = 0, 0
    return model.eval()


def read_grid(path, grid):
    """{(image, level): PSNRs at each grid value} from eval.py's per-image CSV of blend rows."""
    table = {}
    with open(path, newline='') as f:
        for row in csv.DictReader(f):
            if not row['model'].startswith('blend d'):  # the fixed values, not 'blend auto'
                continue
            value = float(row['model'].split()[1][1:])
            table.setdefault((row['image'], row['set'].split(':')[1]), {})[value] = float(row['psnr'])
    missing = [key for key, values in table.items() if sorted(values) != sorted(grid)]
    if missing or not table:
        raise ValueError(f"{path} lacks grid values {grid} for {missing[:3] or 'every image'}")
    return {key: np.array([values[value] for value in grid]) for key, values in table.items()}


POWER_RANGE = (0.25, 16.)  # the map's power is kept to this range (past 16 it is a hard choice of one level)
# The fit starts from each of these powers. Nelder-Mead's first simplex moves a coordinate at 0 (the
# log of power 1) by only 0.00025, so from power 1 alone a flat stretch of the PSNR curves can hold
# the power where it started: on one validation grid that fit stayed at 1.000 and scored 0.09 dB
# below a power near 10 on clean inputs (results/README.md).
POWER_STARTS = (1., 4., 16.)


def damage_map_of(parameters):
    """degradations.auto_denoise's map from the fit's parameters: a value per level, then log(power)."""
    return {'level_denoise': [float(np.clip(value, 0., 1.)) for value in parameters[:-1]],
            'power': float(np.exp(np.clip(parameters[-1], *np.log(POWER_RANGE))))}


def mean_psnr(parameters, probabilities, curves, grid):
    """Mean PSNR over the images when each takes the map's denoise value (unrounded here), read
    off its PSNR curve by linear interpolation between grid points."""
    damage_map = damage_map_of(parameters)
    logs = damage_map['power'] * np.log(np.maximum(probabilities, 1e-30))  # (n, levels): as auto_denoise, in logs
    weights = np.exp(logs - logs.max(1, keepdims=True))
    values = np.clip(weights / weights.sum(1, keepdims=True) @ np.array(damage_map['level_denoise']), 0., 1.)  # (n,)
    return float(np.mean([np.interp(value, grid, curve) for value, curve in zip(values, curves)]))


def fit_map(probabilities, curves, grid, start_values):
    """The map (damage_map_of's dict) whose values give the highest mean_psnr: Nelder-Mead from the
    levels' start_values and each power of POWER_STARTS, the best of the fits kept."""
    from scipy.optimize import minimize
    fits = [minimize(lambda parameters: -mean_psnr(parameters, probabilities, curves, grid),
                     np.append(start_values, np.log(power)), method='Nelder-Mead',
                     options={'maxiter': 20000, 'xatol': 1e-4, 'fatol': 1e-6}) for power in POWER_STARTS]
    return damage_map_of(min(fits, key=lambda fit: fit.fun).x)


def main(argv):
    """Train (or load) the classifier, measure the grid, fit each level's value; save and return the file's dict."""
    config = runtime.parse_config(globals(), argv)
    runtime.require(config.iterations > 0 and config.batch_size > 0, "iterations and batch_size must be > 0")
    model_args = {'n_levels': len(LADDER_LEVELS), 'n_channels': config.n_channels}
    will_write = [config.output, os.path.splitext(config.output)[0] + '.json'] \
        + [os.path.join(config.out_dir, name) for name, given in (('classifier.pth', config.classifier),
                                                                  ('val_grid.json', config.grid_file),
                                                                  ('val_grid.csv', config.grid_file)) if not given]
    for path in will_write:  # refused now, not after an hour of work
        runtime.require(config.overwrite or not os.path.exists(path),
                        f"{path} exists and is kept: choose another --out_dir or --output, or --overwrite=True")
    if config.classifier:
        state = runtime.load_checkpoint(config.classifier, 'cpu', ('model', 'model_args'), kind='damage classifier')
        model, model_args = DamageNet(**state['model_args']), state['model_args']
        runtime.load_states(config.classifier, [(model, state['model'])])
        model.eval()
        classifier_config = state.get('classifier_config', state.get('config', {}))  # how step 1 was run
    else:
        model, classifier_config = train_classifier(config), vars(config)
        runtime.save_checkpoint({'model': model.state_dict(), 'model_args': model_args, 'config': vars(config)},
                                os.path.join(config.out_dir, 'classifier.pth'), exists='replace')

    grid_file = config.grid_file or os.path.join(config.out_dir, 'val_grid.csv')
    if not config.grid_file:  # its name was checked free, or the user said --overwrite=True
        evaluate.main([f'--data_folder={config.data_folder}', f"--test_data_names=['{config.val_data_name}']",
                       "--degradation=ladder", "--models=['bicubic']", f"--denoise={config.grid}",
                       "--metrics=['psnr']", f'--precision={config.precision}',
                       f'--srresnet_checkpoint={config.srresnet_checkpoint}',
                       f'--srresnet_real_checkpoint={config.srresnet_real_checkpoint}',
                       f'--results_file={os.path.splitext(grid_file)[0]}.json', '--overwrite=True'])
    curves = read_grid(grid_file, config.grid)

    keys, probabilities = [], []
    for level in LADDER_LEVELS:
        dataset = SRDataset(config.data_folder, 'test', crop_size=0, scaling_factor=4, lr_img_type='[0, 1]',
                            hr_img_type='[0, 1]', test_data_name=config.val_data_name, degradation=f'ladder:{level}')
        for i, path in enumerate(dataset.images):
            lr_img, _ = dataset[i]  # (3, h, w) in [0, 1]
            keys.append((os.path.basename(path), level))
            probabilities.append(damage_levels(model, lr_img).numpy())
    probabilities, psnrs, grid = np.array(probabilities), [curves[key] for key in keys], np.array(config.grid)
    accuracy = float(np.mean([LADDER_LEVELS[p.argmax()] == level for p, (_, level) in zip(probabilities, keys)]))
    print(f"The classifier names the level of {accuracy:.1%} of the {len(keys)} validation images")

    fixed = {level: np.mean([psnrs[i] for i, (_, lvl) in enumerate(keys) if lvl == level], axis=0)
             for level in LADDER_LEVELS}  # (G,) each: the mean PSNR of each fixed value
    damage_map = fit_map(probabilities, psnrs, grid, [grid[fixed[level].argmax()] for level in LADDER_LEVELS])

    report = {'classifier_accuracy': accuracy, 'level_denoise': dict(zip(LADDER_LEVELS, damage_map['level_denoise'])),
              'power': damage_map['power'], 'levels': {}}
    for level in LADDER_LEVELS:
        rows = [i for i, (_, lvl) in enumerate(keys) if lvl == level]
        chosen = [auto_denoise(torch.from_numpy(probabilities[i]), damage_map) for i in rows]
        auto = float(np.mean([np.interp(value, grid, psnrs[i]) for value, i in zip(chosen, rows)]))
        report['levels'][level] = {
            'auto': auto, 'mean_denoise': float(np.mean(chosen)), 'best_fixed': float(fixed[level].max()),
            'best_fixed_denoise': float(grid[fixed[level].argmax()]), 'denoise_0': float(fixed[level][0]),
            'each_image_best': float(np.mean([psnrs[i].max() for i in rows]))}
        print(f"{level:>6}: auto {auto:.3f} dB (mean denoise {np.mean(chosen):.2f}), best fixed {fixed[level].max():.3f} "
              f"dB at {grid[fixed[level].argmax()]:.1f}, denoise 0 {fixed[level][0]:.3f} dB, each image's best "
              f"{report['levels'][level]['each_image_best']:.3f} dB")
    state = {'model': model.state_dict(), 'model_args': model_args, 'levels': list(LADDER_LEVELS),
             **damage_map, 'config': vars(config), 'classifier_config': classifier_config}
    runtime.save_checkpoint(state, config.output, exists='replace')  # checked free at the start, or --overwrite
    utils.save_json(report, os.path.splitext(config.output)[0] + '.json', exists='replace')
    print(f"Level denoise values: {dict(zip(LADDER_LEVELS, [round(v, 3) for v in damage_map['level_denoise']]))}, "
          f"power {damage_map['power']:.3f}; saved {config.output} and its report")
    return state


if __name__ == '__main__':
    runtime.run_script(main, __file__)
