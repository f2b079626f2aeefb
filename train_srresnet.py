"""Step 2: train the SRResNet with an MSE content loss in pixel space.

    python train_srresnet.py                                   # the paper's recipe
    python train_srresnet.py --data_folder=data --iterations=20000 --lr=4e-4
    python train_srresnet.py --checkpoint=runs/srresnet/checkpoint_srresnet.pth   # resume
    torchrun --nproc_per_node=4 train_srresnet.py              # several GPUs (see the README)

Training is counted in iterations (generator updates) and stops at exactly `iterations`.
Everything goes to `out_dir`: checkpoint_srresnet.pth (latest), checkpoint_srresnet_best.pth
(best Set5 PSNR), log_srresnet.csv and log_srresnet.png (the curves).
"""
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import utils
from datasets import SRDataset
from models import SRResNet

# ----------------------------------------------------------------------------------------------
# Data
data_folder: str = 'data'  # folder with train_images.json (and Set5_test_images.json for validation)
crop_size: int = 96  # HR crop side in px (paper: 96)
scaling_factor: int = 4  # 2, 4 or 8 (paper: 4)
cache_images: bool = True  # keep decoded training images in RAM (off for very large sets like COCO)
workers: int = 4  # DataLoader worker processes (0 = load in the main process)
# Model
large_kernel_size: int = 9  # first and last convolutions (paper: 9)
small_kernel_size: int = 3  # all other convolutions (paper: 3)
n_channels: int = 64  # feature channels (paper: 64)
n_blocks: int = 16  # residual blocks (paper: 16)
# Learning
batch_size: int = 16  # per process; the global batch is batch_size x world size (paper: 16)
iterations: int = 1_000_000  # total updates (paper: 1e6)
lr: float = 1e-4  # Adam learning rate (paper: 1e-4)
lr_decay_at: int = 0  # iteration after which lr is multiplied by lr_decay (0 = never; paper: never)
lr_decay: float = 0.1  # the factor applied at lr_decay_at
grad_clip: float = 0.  # clamp gradients to [-grad_clip, grad_clip] (0 = off)
seed: int = 0  # seeds the weights and the whole data stream
# Checkpoints
out_dir: str = 'runs/srresnet'  # checkpoints, log and plot go here
checkpoint: str = ''  # checkpoint to resume from ('' = start fresh)
save_freq: int = 1000  # iterations between checkpoints
val_freq: int = 1000  # iterations between validations (0 = never)
val_data_name: str = 'Set5'  # validation list <name>_test_images.json in data_folder, if it exists
print_freq: int = 100  # iterations between log lines
# System
device: str = 'auto'  # 'auto' (cuda, then mps, then cpu), or e.g. 'cpu', 'cuda:1'
amp: str = 'auto'  # mixed precision: 'auto' (bf16/fp16 on CUDA, off on CPU), 'bf16', 'fp16', 'off'
channels_last: bool = True  # NHWC memory format: faster convolutions on recent CPUs and GPUs
compile: bool = False  # torch.compile the model (slow start, faster steps on GPU)
sync_bn: bool = False  # with torchrun: SyncBatchNorm, since per-process batches are small
# ----------------------------------------------------------------------------------------------

CHECKPOINT_KEYS = ('model', 'optimizer', 'iteration', 'model_args', 'config')


def main(argv):
    """Train; returns the last iteration, the mean seconds per iteration after warm-up, and the model."""
    config = utils.parse_config(globals(), argv)
    device, rank, world_size = utils.setup_distributed(config.device)
    is_main = rank == 0
    autocast_dtype, use_scaler = utils.amp_settings(device, config.amp)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    if is_main:
        print(f"Device: {device}, processes: {world_size}, autocast: {autocast_dtype}, config: {vars(config)}")
    utils.seed_everything(config.seed)

    # Model and optimizer, fresh or from the checkpoint we resume.
    model_args = dict(large_kernel_size=config.large_kernel_size, small_kernel_size=config.small_kernel_size,
                      n_channels=config.n_channels, n_blocks=config.n_blocks, scaling_factor=config.scaling_factor)
    model = SRResNet(**model_args)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    start_iteration, best_psnr, train_seconds = 0, float('-inf'), 0.
    if config.checkpoint:
        state = utils.load_checkpoint(config.checkpoint, 'cpu', CHECKPOINT_KEYS, kind='SRResNet checkpoint')
        if state['model_args'] != model_args:
            sys.exit(f"{config.checkpoint} was trained with {state['model_args']}, not {model_args}")
        model.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        scaler.load_state_dict(state['scaler'])
        utils.set_rng_states(state['rng'])
        start_iteration, best_psnr, train_seconds = state['iteration'], state['best_psnr'], state['train_seconds']
        if is_main:
            print(f"Resuming {config.checkpoint} at iteration {start_iteration}")
    model = model.to(device, memory_format=memory_format)
    if world_size > 1:
        model = utils.wrap_distributed(model, device, config.sync_bn)
    train_model = torch.compile(model) if config.compile else model

    # Data: LR inputs ImageNet-normed, HR targets in [-1, 1] where the paper takes the MSE.
    dataset = SRDataset(config.data_folder, 'train', config.crop_size, config.scaling_factor,
                        lr_img_type='imagenet-norm', hr_img_type='[-1, 1]', cache_images=config.cache_images)
    loader = utils.make_train_loader(dataset, config.batch_size, config.iterations, config.seed, start_iteration,
                                     config.workers, device, rank, world_size)
    val_dataset = utils.validation_dataset(config.data_folder, config.val_data_name, config.scaling_factor) \
        if is_main and config.val_freq else None

    log = None
    if is_main:
        log = utils.TrainingLog(os.path.join(config.out_dir, 'log_srresnet.csv'),
                                ['iteration', 'train_seconds', 'loss', 'lr', 'ms_per_iteration', 'val_psnr',
                                 'val_ssim'], resume_from=start_iteration)

    def save(iteration, path):
        """Write everything exact resumption needs, atomically, with plain (unwrapped) weights."""
        utils.save_checkpoint({'model': utils.unwrap(model).state_dict(), 'optimizer': optimizer.state_dict(),
                               'scaler': scaler.state_dict(), 'rng': utils.rng_states(), 'iteration': iteration,
                               'best_psnr': best_psnr, 'train_seconds': train_seconds, 'model_args': model_args,
                               'config': vars(config)}, path)

    model.train()
    loss_sum = torch.zeros((), device=device)  # summed on the device: no GPU sync every iteration
    n_summed, tick = 0, time.perf_counter()
    warmup_end, warmup_time = start_iteration + 2, None  # the first steps pay for warm-up: not timed
    # The bar is for a person at a terminal; a log file (nohup) gets the compact lines alone.
    progress = tqdm(total=config.iterations, initial=start_iteration, desc='SRResNet', dynamic_ncols=True,
                    disable=not (is_main and sys.stderr.isatty()))
    iteration = start_iteration
    for iteration, (lr_imgs, hr_imgs) in enumerate(loader, start=start_iteration + 1):
        if iteration == config.lr_decay_at + 1 and config.lr_decay_at:
            utils.adjust_learning_rate(optimizer, config.lr_decay)
        lr_imgs = lr_imgs.to(device, memory_format=memory_format, non_blocking=True)  # (N, 3, 24, 24), ImageNet-normed
        hr_imgs = hr_imgs.to(device, non_blocking=True)  # (N, 3, 96, 96), in [-1, 1]

        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            sr_imgs = train_model(lr_imgs)  # (N, 3, 96, 96), in [-1, 1]
        loss = F.mse_loss(sr_imgs.float(), hr_imgs)  # scalar; the MSE in float32 whatever the autocast

        utils.optimizer_step(optimizer, loss, scaler, config.grad_clip)
        scaler.update()
        loss_sum += loss.detach()
        n_summed += 1
        if iteration == warmup_end:
            warmup_time = time.perf_counter()
        step_end = time.perf_counter()  # the speed we return leaves out the last save and plot
        progress.update(1)

        is_last = iteration == config.iterations
        if iteration % config.print_freq == 0 or iteration % config.save_freq == 0 or is_last:
            mean_loss = (loss_sum / n_summed).item()  # syncs the device, so the timing below is honest
            if not (utils.all_finite([loss_sum]) and utils.all_finite(model.parameters())):
                progress.close()
                sys.exit(f"Stopping: the loss became {mean_loss} between iterations {iteration - n_summed + 1} and "
                         f"{iteration}. The last good checkpoint is kept in {config.out_dir}. Try a lower lr, "
                         f"grad_clip, or amp='off'.")
            ms = (time.perf_counter() - tick) * 1000 / n_summed
            train_seconds += ms * n_summed / 1000  # training time alone, without validation and saving
            if is_main:
                current_lr = optimizer.param_groups[0]['lr']
                global_batch = config.batch_size * world_size
                eta_minutes = ms * (config.iterations - iteration) / 60_000
                progress.write(f"[{iteration}/{config.iterations}] loss {mean_loss:.5f}  lr {current_lr:.2e}  "
                               f"{ms:.1f} ms/it  {global_batch * 1000 / ms:.1f} samples/s  ETA {eta_minutes:.0f} min")
                log.log(iteration=iteration, train_seconds=f'{train_seconds:.1f}', loss=f'{mean_loss:.6f}',
                        lr=f'{current_lr:.3e}', ms_per_iteration=f'{ms:.1f}')
            loss_sum.zero_()
            n_summed = 0

            if is_main and val_dataset is not None and (iteration % config.val_freq == 0 or is_last):
                psnr, ssim = utils.validate(model, val_dataset, device, config.scaling_factor)  # in fp32
                progress.write(f"[{iteration}/{config.iterations}] {config.val_data_name}: PSNR {psnr:.3f} dB, "
                               f"SSIM {ssim:.4f}")
                log.log(iteration=iteration, train_seconds=f'{train_seconds:.1f}', val_psnr=f'{psnr:.4f}',
                        val_ssim=f'{ssim:.5f}')
                if psnr > best_psnr:
                    best_psnr = psnr
                    save(iteration, os.path.join(config.out_dir, 'checkpoint_srresnet_best.pth'))
            if is_main and (iteration % config.save_freq == 0 or is_last):
                save(iteration, os.path.join(config.out_dir, 'checkpoint_srresnet.pth'))
                log.plot({'training loss (MSE, [-1, 1])': ['loss'],
                          f'{config.val_data_name} PSNR (dB)': ['val_psnr']})
            tick = time.perf_counter()
    progress.close()
    utils.cleanup_distributed(model)
    timed = iteration - warmup_end
    seconds = (step_end - warmup_time) / timed if warmup_time and timed > 0 else float('nan')
    return {'iteration': iteration, 'seconds_per_iteration': seconds, 'model': utils.unwrap(model)}


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except (FileNotFoundError, ValueError) as error:  # bad paths, lists or checkpoints: say so plainly
        sys.exit(f"{os.path.basename(__file__)}: error: {error}")
