"""Step 3: train the SRGAN: a generator (initialised from a trained SRResNet) against a discriminator.

    python train_srgan.py                                           # the paper's recipe
    python train_srgan.py --srresnet_checkpoint=checkpoints/srresnet_x4.pth --vgg19_weights=/path/vgg19-dcbb9e9d.pth
    python train_srgan.py --checkpoint=runs/srgan/checkpoint_srgan.pth   # resume
    torchrun --nproc_per_node=4 train_srgan.py                      # several GPUs (see the README)

Each iteration makes two updates:
  1. the generator, on the perceptual loss = content loss (MSE between VGG19 features of SR and HR)
     + beta x adversarial loss (how surely the discriminator calls the SR images fake);
  2. the discriminator, on telling the HR images (label 1) from the SR images (label 0).
The VGG19 needs ImageNet weights (`vgg19_weights`); the README says how to get them offline.
"""
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import utils
from datasets import SRDataset
from models import Discriminator, Generator, TruncatedVGG19

# ----------------------------------------------------------------------------------------------
# Data
data_folder: str = 'data'  # folder with train_images.json (and Set5_test_images.json for validation)
crop_size: int = 96  # HR crop side in px (paper: 96)
cache_images: bool = True  # keep decoded training images in RAM (off for very large sets like COCO)
workers: int = 4  # DataLoader worker processes (0 = load in the main process)
# Model
srresnet_checkpoint: str = 'checkpoints/srresnet_x4.pth'  # trained SRResNet that initialises the generator
kernel_size_d: int = 3  # discriminator kernel size (paper: 3)
n_channels_d: int = 64  # discriminator channels in its first block, doubled every other block (paper: 64)
n_blocks_d: int = 8  # discriminator convolutional blocks (paper: 8)
fc_size_d: int = 1024  # discriminator hidden linear layer width (paper: 1024)
vgg19_i: int = 5  # content loss on the VGG19 feature map of the j-th conv before the i-th max-pool (paper: 5)
vgg19_j: int = 4  # (paper: 4)
vgg19_weights: str = 'imagenet'  # 'imagenet' (torchvision's cache), a VGG19 state_dict file, or '' (random: tests)
# Learning
batch_size: int = 16  # per process; the global batch is batch_size x world size (paper: 16)
iterations: int = 200_000  # total iterations, each one generator and one discriminator update (paper: 2e5)
lr: float = 1e-4  # Adam learning rate of both networks (paper: 1e-4)
lr_decay_at: int = 100_000  # iteration after which both learning rates are x0.1 (paper: 1e5, half the run)
beta: float = 1e-3  # weight of the adversarial loss in the perceptual loss (paper: 1e-3)
grad_clip: float = 0.  # clamp gradients to [-grad_clip, grad_clip] (0 = off)
seed: int = 0  # seeds the discriminator's weights and the whole data stream
# Checkpoints
out_dir: str = 'runs/srgan'  # checkpoints, log and plot go here
checkpoint: str = ''  # SRGAN checkpoint to resume from ('' = start from srresnet_checkpoint)
save_freq: int = 1000  # iterations between checkpoints
val_freq: int = 1000  # iterations between validations (0 = never)
val_data_name: str = 'Set5'  # validation list <name>_test_images.json in data_folder, if it exists
print_freq: int = 100  # iterations between log lines
# System
device: str = 'auto'  # 'auto' (cuda, then mps, then cpu), or e.g. 'cpu', 'cuda:1'
amp: str = 'auto'  # mixed precision: 'auto' (bf16/fp16 on CUDA, off on CPU), 'bf16', 'fp16', 'off'
channels_last: bool = True  # NHWC memory format: faster convolutions on recent CPUs and GPUs
compile: bool = False  # torch.compile the generator and discriminator
sync_bn: bool = False  # with torchrun: SyncBatchNorm, since per-process batches are small
# ----------------------------------------------------------------------------------------------

CHECKPOINT_KEYS = ('generator', 'discriminator', 'optimizer_g', 'optimizer_d', 'iteration', 'model_args', 'config')


def main(argv):
    """Train; returns the last iteration, the mean seconds per iteration after warm-up, and the networks."""
    config = utils.parse_config(globals(), argv)
    device, rank, world_size = utils.setup_distributed(config.device)
    is_main = rank == 0
    autocast_dtype, use_scaler = utils.amp_settings(device, config.amp)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    if is_main:
        print(f"Device: {device}, processes: {world_size}, autocast: {autocast_dtype}, config: {vars(config)}")
    utils.seed_everything(config.seed)

    # The networks. The generator's shape comes from the SRResNet (or SRGAN) checkpoint we start from.
    discriminator_args = dict(kernel_size=config.kernel_size_d, n_channels=config.n_channels_d,
                              n_blocks=config.n_blocks_d, fc_size=config.fc_size_d)
    if config.checkpoint:
        state = utils.load_checkpoint(config.checkpoint, 'cpu', CHECKPOINT_KEYS, kind='SRGAN checkpoint')
        model_args = state['model_args']
    else:
        state = utils.load_checkpoint(config.srresnet_checkpoint, 'cpu', ('model', 'model_args'),
                                      kind='SRResNet checkpoint')
        model_args = state['model_args']
    generator = Generator(**model_args)
    discriminator = Discriminator(**discriminator_args)
    # Frozen, and never in a DDP wrapper: it has nothing to learn and nothing to synchronise.
    vgg = TruncatedVGG19(config.vgg19_i, config.vgg19_j, weights=config.vgg19_weights)
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=config.lr)
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)  # one scaler, two optimizers
    start_iteration, best_psnr, train_seconds = 0, float('-inf'), 0.
    if config.checkpoint:
        if state['discriminator_args'] != discriminator_args:
            sys.exit(f"{config.checkpoint} has a discriminator {state['discriminator_args']}, not {discriminator_args}")
        generator.load_state_dict(state['generator'])
        discriminator.load_state_dict(state['discriminator'])
        optimizer_g.load_state_dict(state['optimizer_g'])
        optimizer_d.load_state_dict(state['optimizer_d'])
        scaler.load_state_dict(state['scaler'])
        utils.set_rng_states(state['rng'])
        start_iteration, best_psnr, train_seconds = state['iteration'], state['best_psnr'], state['train_seconds']
        if is_main:
            print(f"Resuming {config.checkpoint} at iteration {start_iteration}")
    else:
        generator.load_state_dict(state['model'])
        if is_main:
            print(f"Generator initialised from {config.srresnet_checkpoint} (iteration {state['iteration']})")
    del state

    generator = generator.to(device, memory_format=memory_format)
    discriminator = discriminator.to(device, memory_format=memory_format)
    vgg = vgg.to(device, memory_format=memory_format)
    if world_size > 1:
        generator = utils.wrap_distributed(generator, device, config.sync_bn)
        discriminator = utils.wrap_distributed(discriminator, device, config.sync_bn)
    # In the generator step the discriminator only passes gradients back to the SR images: it runs
    # as the plain module there, so that DDP does not expect to synchronise its gradients.
    plain_discriminator = utils.unwrap(discriminator)
    train_generator = torch.compile(generator) if config.compile else generator
    train_discriminator = torch.compile(discriminator) if config.compile else discriminator
    train_vgg = torch.compile(vgg) if config.compile else vgg

    # Data: LR inputs and HR targets ImageNet-normed, as the VGG19 and the discriminator expect.
    dataset = SRDataset(config.data_folder, 'train', config.crop_size, model_args['scaling_factor'],
                        lr_img_type='imagenet-norm', hr_img_type='imagenet-norm', cache_images=config.cache_images)
    loader = utils.make_train_loader(dataset, config.batch_size, config.iterations, config.seed, start_iteration,
                                     config.workers, device, rank, world_size)
    val_dataset = utils.validation_dataset(config.data_folder, config.val_data_name, model_args['scaling_factor']) \
        if is_main and config.val_freq else None
    log = None
    if is_main:
        log = utils.TrainingLog(os.path.join(config.out_dir, 'log_srgan.csv'),
                                ['iteration', 'train_seconds', 'content_loss', 'adversarial_loss',
                                 'discriminator_loss', 'lr', 'ms_per_iteration', 'val_psnr', 'val_ssim'],
                                resume_from=start_iteration)

    def save(iteration, path):
        """Write everything exact resumption needs, atomically, with plain (unwrapped) weights."""
        utils.save_checkpoint({
            'generator': utils.unwrap(generator).state_dict(),
            'discriminator': utils.unwrap(discriminator).state_dict(),
            'optimizer_g': optimizer_g.state_dict(), 'optimizer_d': optimizer_d.state_dict(),
            'scaler': scaler.state_dict(), 'rng': utils.rng_states(), 'iteration': iteration, 'best_psnr': best_psnr,
            'train_seconds': train_seconds, 'model_args': model_args, 'discriminator_args': discriminator_args,
            'config': vars(config)}, path)

    def autocast():
        return torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    generator.train()
    discriminator.train()
    loss_sums = torch.zeros(3, device=device)  # content, adversarial, discriminator; summed without syncing
    n_summed, tick = 0, time.perf_counter()
    warmup_end, warmup_time = start_iteration + 2, None
    progress = tqdm(total=config.iterations, initial=start_iteration, desc='SRGAN', dynamic_ncols=True,
                    disable=not (is_main and sys.stderr.isatty()))
    iteration = start_iteration
    for iteration, (lr_imgs, hr_imgs) in enumerate(loader, start=start_iteration + 1):
        if iteration == config.lr_decay_at + 1:
            utils.adjust_learning_rate(optimizer_g, 0.1)
            utils.adjust_learning_rate(optimizer_d, 0.1)
        lr_imgs = lr_imgs.to(device, memory_format=memory_format, non_blocking=True)  # (N, 3, 24, 24), ImageNet-normed
        hr_imgs = hr_imgs.to(device, memory_format=memory_format, non_blocking=True)  # (N, 3, 96, 96), ImageNet-normed

        # 1. Generator update. The discriminator's weights are frozen here: its gradients are not needed.
        plain_discriminator.requires_grad_(False)
        with autocast():
            sr_imgs = train_generator(lr_imgs)  # (N, 3, 96, 96), in [-1, 1]
            sr_imgs = utils.convert_image(sr_imgs, source='[-1, 1]', target='imagenet-norm')  # (N, 3, 96, 96)
            sr_features = train_vgg(sr_imgs)  # (N, 512, 6, 6)
            with torch.no_grad():
                hr_features = train_vgg(hr_imgs)  # (N, 512, 6, 6): a fixed target
            sr_logits = plain_discriminator(sr_imgs)  # (N,)
        content_loss = F.mse_loss(sr_features.float(), hr_features.float())
        # The generator wants its SR images called natural: the label 1.
        adversarial_loss = F.binary_cross_entropy_with_logits(sr_logits.float(), torch.ones_like(sr_logits.float()))
        perceptual_loss = content_loss + config.beta * adversarial_loss
        utils.optimizer_step(optimizer_g, perceptual_loss, scaler, config.grad_clip)
        plain_discriminator.requires_grad_(True)

        # 2. Discriminator update, on HR images (label 1) and the detached SR images (label 0):
        # detaching stops the backward pass at the SR images, so the generator is left alone.
        with autocast():
            hr_logits = train_discriminator(hr_imgs)  # (N,)
            sr_logits = train_discriminator(sr_imgs.detach())  # (N,)
        discriminator_loss = F.binary_cross_entropy_with_logits(hr_logits.float(), torch.ones_like(hr_logits.float())) \
            + F.binary_cross_entropy_with_logits(sr_logits.float(), torch.zeros_like(sr_logits.float()))
        utils.optimizer_step(optimizer_d, discriminator_loss, scaler, config.grad_clip)
        scaler.update()  # once per iteration, after both optimizers stepped

        loss_sums += torch.stack([content_loss, adversarial_loss, discriminator_loss]).detach()
        n_summed += 1
        if iteration == warmup_end:
            warmup_time = time.perf_counter()
        step_end = time.perf_counter()  # the speed we return leaves out the last save and plot
        progress.update(1)

        is_last = iteration == config.iterations
        if iteration % config.print_freq == 0 or iteration % config.save_freq == 0 or is_last:
            content, adversarial, disc = (loss_sums / n_summed).tolist()  # syncs the device
            params = list(generator.parameters()) + list(discriminator.parameters())
            if not (utils.all_finite([loss_sums]) and utils.all_finite(params)):
                progress.close()
                sys.exit(f"Stopping: a loss became non-finite (content {content}, adversarial {adversarial}, "
                         f"discriminator {disc}) between iterations {iteration - n_summed + 1} and {iteration}. "
                         f"The last good checkpoint is kept in {config.out_dir}. "
                         f"Try a lower lr, grad_clip, or amp='off'.")
            ms = (time.perf_counter() - tick) * 1000 / n_summed
            train_seconds += ms * n_summed / 1000
            if is_main:
                current_lr = optimizer_g.param_groups[0]['lr']
                eta_minutes = ms * (config.iterations - iteration) / 60_000
                progress.write(f"[{iteration}/{config.iterations}] content {content:.4f}  "
                               f"adversarial {adversarial:.4f}  "
                               f"discriminator {disc:.4f}  lr {current_lr:.2e}  {ms:.1f} ms/it  "
                               f"{config.batch_size * world_size * 1000 / ms:.1f} samples/s  ETA {eta_minutes:.0f} min")
                log.log(iteration=iteration, train_seconds=f'{train_seconds:.1f}', content_loss=f'{content:.6f}',
                        adversarial_loss=f'{adversarial:.6f}', discriminator_loss=f'{disc:.6f}',
                        lr=f'{current_lr:.3e}', ms_per_iteration=f'{ms:.1f}')
            loss_sums.zero_()
            n_summed = 0

            if is_main and val_dataset is not None and (iteration % config.val_freq == 0 or is_last):
                psnr, ssim = utils.validate(generator, val_dataset, device, model_args['scaling_factor'])
                progress.write(f"[{iteration}/{config.iterations}] {config.val_data_name}: PSNR {psnr:.3f} dB, "
                               f"SSIM {ssim:.4f} (the SRGAN does not optimise PSNR: expect less than the SRResNet)")
                log.log(iteration=iteration, train_seconds=f'{train_seconds:.1f}', val_psnr=f'{psnr:.4f}',
                        val_ssim=f'{ssim:.5f}')
                best_psnr = max(best_psnr, psnr)
            if is_main and (iteration % config.save_freq == 0 or is_last):
                save(iteration, os.path.join(config.out_dir, 'checkpoint_srgan.pth'))
                log.plot({'generator losses': ['content_loss', 'adversarial_loss'],
                          'discriminator loss': ['discriminator_loss'],
                          f'{config.val_data_name} PSNR (dB)': ['val_psnr']})
            tick = time.perf_counter()
    progress.close()
    utils.cleanup_distributed(generator, discriminator)
    timed = iteration - warmup_end
    seconds = (step_end - warmup_time) / timed if warmup_time and timed > 0 else float('nan')
    return {'iteration': iteration, 'seconds_per_iteration': seconds, 'generator': utils.unwrap(generator),
            'discriminator': utils.unwrap(discriminator)}


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except (FileNotFoundError, ValueError) as error:  # bad paths, lists or checkpoints: say so plainly
        sys.exit(f"{os.path.basename(__file__)}: error: {error}")
