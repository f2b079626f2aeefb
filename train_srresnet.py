"""Step 2: train the SRResNet with an MSE content loss in pixel space.

    python train_srresnet.py                                   # the paper's recipe
    python train_srresnet.py --iterations=20000 --batch_size=64 --lr=2e-4 --lr_schedule=cosine
    python train_srresnet.py --checkpoint=runs/srresnet/checkpoint_srresnet.pth   # resume
    python train_srresnet.py --init_weights=checkpoints/srresnet_x4.pth            # fine-tune
    torchrun --nproc_per_node=4 train_srresnet.py              # several GPUs (see the README)

Training is counted in iterations (updates) and stops at exactly `iterations`. Everything goes to
`out_dir`: checkpoint_srresnet.pth (latest), checkpoint_srresnet_best.pth (best PSNR on the
validation list), log_srresnet.csv and log_srresnet.png (the curves).
"""
import os

import torch
import torch.nn.functional as F

import datasets
import runtime
import utils
from models import SRResNet, fast_prelu_backward, shuffle_last_convolution

# ----------------------------------------------------------------------------------------------
# Data
data_folder: str = 'data'  # folder with train_images.json and val_images.json (create_data_lists.py)
crop_size: int = 96  # HR crop side in px (paper: 96)
scaling_factor: int = 4  # 2, 4 or 8 (paper: 4)
augment: bool = False  # random flips and 90-degree turns of each crop (paper: none)
degradation: str = 'bicubic'  # LR crops: 'bicubic' (paper), 'realistic' (blur, noise, JPEG) or 'ladder' (degradations.py)
data_on_device: str = 'auto'  # crops made on the training device: 'auto' (if the set fits), 'on', 'off'
cache_images: bool = True  # DataLoader path: keep decoded images in RAM (off for very large sets like COCO)
workers: int = min(4, max(1, (os.cpu_count() or 2) - 1))  # DataLoader path: worker processes (0 = main process)
# Model
large_kernel_size: int = 9  # first and last convolutions (paper: 9)
small_kernel_size: int = 3  # all other convolutions (paper: 3)
n_channels: int = 64  # feature channels (paper: 64)
n_blocks: int = 16  # residual blocks (paper: 16)
init_weights: str = ''  # start from this checkpoint's weights with a fresh optimizer ('' = random)
# Learning
batch_size: int = 16  # per process; the global batch is batch_size x world size (paper: 16)
iterations: int = 1_000_000  # total updates (paper: 1e6)
lr: float = 1e-4  # Adam learning rate (paper: 1e-4)
lr_schedule: str = 'step'  # 'step' (x lr_decay after lr_decay_at) or 'cosine' (to 0 at the end)
lr_decay_at: int = 0  # step schedule: iteration after which lr is multiplied by lr_decay (0 = never; paper: never)
lr_decay: float = 0.1  # step schedule: the factor applied after lr_decay_at
warmup_iterations: int = 0  # linear ramp of the lr over the first iterations (0 = none; paper: none)
grad_clip: float = 0.  # clamp gradients to [-grad_clip, grad_clip] (0 = off)
seed: int = 0  # seeds the weights and the whole data stream
# Checkpoints
out_dir: str = 'runs/srresnet'  # checkpoints, log and plot go here
checkpoint: str = ''  # checkpoint to resume from ('' = start fresh)
overwrite: bool = False  # start fresh even if out_dir holds an earlier run's checkpoint (it is replaced)
save_freq: int = 1000  # iterations between checkpoints
val_freq: int = 1000  # iterations between validations (0 = never)
val_data_name: str = 'val'  # validation list: 'val' (held out of training) or a test set name
print_freq: int = 100  # iterations between log lines
# System
device: str = 'auto'  # 'auto' (cuda, then mps, then cpu), or e.g. 'cpu', 'cuda:1'
amp: str = 'auto'  # mixed precision: 'auto' (bf16/fp16 on CUDA, bf16 on CPUs with bf16 arithmetic, else off),
#                     'bf16', 'fp16', 'off' (runtime.amp_settings)
channels_last: bool = True  # NHWC memory format: faster convolutions on recent CPUs and GPUs
shuffled_last_conv: bool = True  # last 9x9 conv run before the last pixel shuffle: same maths and weights, faster
compile: str = ''  # torch.compile mode: '' (off), 'default', 'reduce-overhead' (+ CUDA graphs), 'max-autotune'
sync_bn: bool = False  # with torchrun: SyncBatchNorm, since per-process batches are small
# ----------------------------------------------------------------------------------------------

CHECKPOINT_KEYS = ('model', 'optimizer', 'scaler', 'rng', 'iteration', 'best_psnr', 'train_seconds', 'model_args',
                   'config')


def main(argv):
    """Train; returns the last iteration and the trained (plain) model."""
    config = runtime.parse_config(globals(), argv)
    runtime.check_training_config(config)
    device, rank, world_size = runtime.setup_distributed(config.device)
    is_main = rank == 0
    autocast_dtype, use_scaler = runtime.amp_settings(device, config.amp)
    if device.type == 'cpu':
        runtime.keep_freed_memory()  # no page faults for each step's activations
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    if is_main:
        print(f"Device: {device}, processes: {world_size}, autocast: {autocast_dtype}, config: {vars(config)}")
    runtime.seed_everything(config.seed)
    latest_path = os.path.join(config.out_dir, 'checkpoint_srresnet.pth')
    best_path = os.path.join(config.out_dir, 'checkpoint_srresnet_best.pth')

    # Model and optimizer: fresh, from trained weights, or from the checkpoint we resume.
    model_args = dict(large_kernel_size=config.large_kernel_size, small_kernel_size=config.small_kernel_size,
                      n_channels=config.n_channels, n_blocks=config.n_blocks, scaling_factor=config.scaling_factor)
    model = SRResNet(**model_args)
    optimizer = runtime.make_adam(model.parameters(), config.lr, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    start_iteration, best_psnr, train_seconds = 0, float('-inf'), 0.
    if config.checkpoint:
        state = runtime.load_training_checkpoint(config.checkpoint, CHECKPOINT_KEYS, 'SRResNet checkpoint', model_args)
        runtime.load_states(config.checkpoint, [(model, state['model']), (optimizer, state['optimizer']),
                                                (scaler, state['scaler'])])
        runtime.set_rng_states(state['rng'])
        start_iteration, train_seconds = state['iteration'], state['train_seconds']
        best_psnr = max(state['best_psnr'], runtime.best_psnr_in(best_path))
        if is_main:
            print(f"Resuming {config.checkpoint} at iteration {start_iteration}")
    else:
        others = [os.path.join(config.out_dir, f'log_srresnet.{ext}') for ext in ('csv', 'png')] + [best_path]
        runtime.refuse_to_overwrite(latest_path, config.overwrite, others)  # then they are this run's own
        if is_main and os.path.exists(best_path):
            os.remove(best_path)  # an earlier run's (--overwrite): its best_psnr would outlive this run's
        if config.init_weights:
            runtime.load_weights(model, config.init_weights, model_args)
    if is_main:
        utils.remove_stale_temporaries(config.out_dir)
    if config.shuffled_last_conv:  # the same parameters under the same names: checkpoints do not change
        shuffle_last_convolution(model)
    if device.type == 'cpu':  # the same gradients, without aten's slow CPU PReLU backward
        fast_prelu_backward(model)
    model = model.to(device, memory_format=memory_format)
    if world_size > 1:
        model = runtime.wrap_distributed(model, device, config.sync_bn)
    train_model = torch.compile(model, mode=config.compile) if config.compile else model

    # Data: LR inputs ImageNet-normed, HR targets in [-1, 1] where the paper takes the MSE.
    val_dataset = datasets.validation_dataset(config.data_folder, config.val_data_name, config.scaling_factor,
                                              config.degradation) \
        if is_main and config.val_freq else None
    batches, how = datasets.training_batches(
        config.data_folder, config.crop_size, config.scaling_factor, config.batch_size, config.iterations,
        config.seed, start_iteration, device, '[-1, 1]', config.augment, config.data_on_device,
        config.cache_images, config.workers, rank, world_size, config.degradation)
    monitor = runtime.TrainingMonitor('SRResNet', ['loss'], config.iterations, start_iteration, config.print_freq,
                                      config.batch_size * world_size,
                                      os.path.join(config.out_dir, 'log_srresnet.csv') if is_main else None,
                                      train_seconds, device)
    if is_main:
        print(f"Training batches: {how}")

    def save(iteration, path):
        """Write everything exact resumption needs, atomically, with plain (unwrapped) weights."""
        runtime.save_checkpoint({'model': runtime.unwrap(model).state_dict(), 'optimizer': optimizer.state_dict(),
                                 'scaler': scaler.state_dict(), 'rng': runtime.rng_states(), 'iteration': iteration,
                                 'best_psnr': best_psnr, 'train_seconds': monitor.train_seconds,
                                 'model_args': model_args, 'config': vars(config)}, path, exists='replace')

    model.train()
    for iteration, (lr_imgs, hr_imgs) in enumerate(batches, start=start_iteration + 1):
        runtime.set_learning_rate(optimizer, runtime.learning_rate_at(
            iteration, config.lr, config.lr_schedule, config.iterations, config.lr_decay_at, config.lr_decay,
            config.warmup_iterations))
        lr_imgs = lr_imgs.to(device, memory_format=memory_format, non_blocking=True)  # (N, 3, 24, 24), ImageNet-normed
        hr_imgs = hr_imgs.to(device, non_blocking=True)  # (N, 3, 96, 96), in [-1, 1]

        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            sr_imgs = train_model(lr_imgs)  # (N, 3, 96, 96), in [-1, 1]
        loss = F.mse_loss(sr_imgs.float(), hr_imgs)  # scalar; the MSE in float32 whatever the autocast

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # fp16 scales the loss up so small gradients survive; bf16 needs no scaling
        if config.grad_clip:
            scaler.unscale_(optimizer)  # clamp the true gradients, not the scaled ones
            runtime.clip_gradient(optimizer, config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        monitor.add(loss)

        if monitor.due(iteration, config.save_freq, config.val_freq):
            monitor.report(iteration, optimizer.param_groups[0]['lr'], model.parameters())
            if is_main and (iteration % config.save_freq == 0 or iteration == config.iterations):
                save(iteration, latest_path)  # first, so a failing validation loses nothing
                monitor.plot({'training loss (MSE, [-1, 1])': ['loss'], 'validation PSNR (dB)': ['val_psnr']})
            if val_dataset is not None and (iteration % config.val_freq == 0 or iteration == config.iterations):
                psnr, ssim = runtime.validate(model, val_dataset, device, config.scaling_factor)
                monitor.report_validation(iteration, config.val_data_name, psnr, ssim)
                if psnr > best_psnr:
                    best_psnr = psnr
                    save(iteration, best_path)
            monitor.restart_clock()
    monitor.close()
    runtime.cleanup_distributed(model)
    return {'iteration': config.iterations, 'model': runtime.unwrap(model)}


if __name__ == '__main__':
    runtime.run_script(main, __file__)
