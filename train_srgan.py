"""Step 3: train the SRGAN: a generator (initialised from a trained SRResNet) against a discriminator.

    python train_srgan.py                                           # the paper's recipe (SRGAN-VGG54)
    python train_srgan.py --vgg19_weights=/path/vgg19-dcbb9e9d.pth  # VGG19 weights from a file
    python train_srgan.py --content_loss=mse                        # SRGAN-MSE: needs no VGG19
    python train_srgan.py --checkpoint=runs/srgan/checkpoint_srgan.pth   # resume
    python train_srgan.py --snapshots=True                          # keep each checkpoint's generator
    torchrun --nproc_per_node=4 train_srgan.py                      # several GPUs (see the README)

Each iteration makes two updates:
  1. the generator, on the perceptual loss = content loss + beta x adversarial loss (how surely
     the discriminator calls the SR images fake). The content loss is one of the paper's
     variants: the MSE between VGG19 feature maps of SR and HR ('vgg54': phi_5,4, the paper's
     SRGAN; 'vgg22': phi_2,2), or the pixel MSE ('mse', which needs no VGG19);
  2. the discriminator, on telling the HR images (label 1) from the SR images (label 0).
The VGG variants need VGG19's ImageNet weights (`vgg19_weights`); the README says how to get them.
"""
import os

import torch
import torch.nn.functional as F

import datasets
import runtime
import utils
from models import Discriminator, Generator, TruncatedVGG19, fast_prelu_backward, shuffle_last_convolution

# ----------------------------------------------------------------------------------------------
# Data
data_folder: str = 'data'  # folder with train_images.json and val_images.json (create_data_lists.py)
crop_size: int = 96  # HR crop side in px (paper: 96)
augment: bool = False  # random flips and 90-degree turns of each crop (paper: none)
degradation: str = 'bicubic'  # LR crops: 'bicubic' (paper), 'realistic' (blur, noise, JPEG) or 'ladder' (degradations.py)
data_on_device: str = 'auto'  # crops made on the training device: 'auto' (if the set fits), 'on', 'off'
cache_images: bool = True  # DataLoader path: keep decoded images in RAM (off for very large sets like COCO)
workers: int = min(4, max(1, (os.cpu_count() or 2) - 1))  # DataLoader path: worker processes (0 = main process)
# Model
srresnet_checkpoint: str = 'checkpoints/srresnet_x4.pth'  # trained SRResNet that initialises the generator
kernel_size_d: int = 3  # discriminator kernel size (paper: 3)
n_channels_d: int = 64  # discriminator channels in its first block, doubled every other block (paper: 64)
n_blocks_d: int = 8  # discriminator convolutional blocks (paper: 8)
fc_size_d: int = 1024  # discriminator hidden linear layer width (paper: 1024)
content_loss: str = 'vgg54'  # 'vgg54' (paper's SRGAN), 'vgg22' (VGG19 phi_2,2) or 'mse' (pixels; no VGG19)
vgg_feature_scale: float = 1 / 12.75  # VGG feature maps are multiplied by this before the MSE (paper: 1/12.75)
vgg19_weights: str = 'imagenet'  # 'imagenet' (torchvision's cache), a VGG19 state_dict file, or '' (random: tests)
# Learning
batch_size: int = 16  # per process; the global batch is batch_size x world size (paper: 16)
iterations: int = 200_000  # total iterations, each one generator and one discriminator update (paper: 2e5)
lr: float = 1e-4  # Adam learning rate of both networks (paper: 1e-4)
lr_schedule: str = 'step'  # 'step' (x lr_decay after lr_decay_at) or 'cosine' (to 0 at the end)
lr_decay_at: int = 100_000  # step schedule: iteration after which both lrs are x lr_decay (0 = never; paper: 1e5)
lr_decay: float = 0.1  # step schedule: the factor applied after lr_decay_at (paper: 0.1)
warmup_iterations: int = 0  # linear ramp of the lr over the first iterations (0 = none; paper: none)
beta: float = 1e-3  # weight of the adversarial loss in the perceptual loss (paper: 1e-3)
grad_clip: float = 0.  # clamp gradients to [-grad_clip, grad_clip] (0 = off)
seed: int = 0  # seeds the discriminator's weights and the whole data stream
# Checkpoints
out_dir: str = 'runs/srgan'  # checkpoints, log and plot go here
checkpoint: str = ''  # SRGAN checkpoint to resume from ('' = start from srresnet_checkpoint)
overwrite: bool = False  # start fresh even if out_dir holds an earlier run's checkpoint (it is replaced)
save_freq: int = 1000  # iterations between checkpoints
snapshots: bool = False  # also keep each checkpoint's generator as out_dir/generator_ITERATION.pth (float16)
val_freq: int = 1000  # iterations between validations (0 = never); PSNR is logged, not used to choose
val_data_name: str = 'val'  # validation list: 'val' (held out of training) or a test set name
print_freq: int = 100  # iterations between log lines
# System
device: str = 'auto'  # 'auto' (cuda, then mps, then cpu), or e.g. 'cpu', 'cuda:1'
amp: str = 'auto'  # mixed precision: 'auto' (bf16/fp16 on CUDA, bf16 on CPUs with bf16 arithmetic, else off),
#                     'bf16', 'fp16', 'off' (runtime.amp_settings)
channels_last: bool = True  # NHWC memory format: faster convolutions on recent CPUs and GPUs
shuffled_last_conv: bool = True  # last 9x9 conv run before the last pixel shuffle: same maths and weights, faster
compile: str = ''  # torch.compile mode for the networks: '' (off), 'default', 'reduce-overhead', 'max-autotune'
sync_bn: bool = False  # with torchrun: SyncBatchNorm, since per-process batches are small
# ----------------------------------------------------------------------------------------------

CHECKPOINT_KEYS = ('generator', 'discriminator', 'optimizer_g', 'optimizer_d', 'scaler', 'rng', 'iteration',
                   'train_seconds', 'model_args', 'discriminator_args', 'config')
VGG_LAYERS = {'vgg54': (5, 4), 'vgg22': (2, 2)}  # (i, j): the j-th convolution before the i-th max-pool


def main(argv):
    """Train; returns the last iteration and the trained (plain) generator and discriminator."""
    config = runtime.parse_config(globals(), argv)
    runtime.check_training_config(config)
    runtime.require(config.content_loss in ('vgg54', 'vgg22', 'mse'),
                    f"content_loss must be 'vgg54', 'vgg22' or 'mse', got {config.content_loss!r}")
    device, rank, world_size = runtime.setup_distributed(config.device)
    is_main = rank == 0
    autocast_dtype, use_scaler = runtime.amp_settings(device, config.amp)
    if device.type == 'cpu':
        runtime.keep_freed_memory()  # no page faults for each step's activations
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    if is_main:
        print(f"Device: {device}, processes: {world_size}, autocast: {autocast_dtype}, config: {vars(config)}")
    runtime.seed_everything(config.seed)
    latest_path = os.path.join(config.out_dir, 'checkpoint_srgan.pth')

    # The networks. The generator's shape comes from the checkpoint we start from.
    discriminator_args = dict(kernel_size=config.kernel_size_d, n_channels=config.n_channels_d,
                              n_blocks=config.n_blocks_d, fc_size=config.fc_size_d)
    if config.checkpoint:
        state = runtime.load_checkpoint(config.checkpoint, 'cpu', CHECKPOINT_KEYS, kind='SRGAN checkpoint')
        runtime.require(state['discriminator_args'] == discriminator_args,
                        f"{config.checkpoint} has a discriminator {state['discriminator_args']}, "
                        f"not {discriminator_args}")
        trained_with = state['config'].get('content_loss', 'vgg54')  # older checkpoints: the paper's VGG54
        runtime.require(trained_with == config.content_loss, f"{config.checkpoint} was trained with "
                        f"content_loss={trained_with!r}, not {config.content_loss!r}: resume with the same")
    else:
        others = [os.path.join(config.out_dir, f'log_srgan.{ext}') for ext in ('csv', 'png')]
        runtime.refuse_to_overwrite(latest_path, config.overwrite, others)  # then they are this run's own
        state = runtime.load_checkpoint(config.srresnet_checkpoint, 'cpu', ('model', 'model_args'),
                                        kind='SRResNet checkpoint')
    model_args = state['model_args']
    generator = Generator(**model_args)
    discriminator = Discriminator(**discriminator_args)
    # The content loss's VGG19 is frozen, and never in a DDP wrapper: it has nothing to learn.
    vgg = TruncatedVGG19(*VGG_LAYERS[config.content_loss], weights=config.vgg19_weights) \
        if config.content_loss in VGG_LAYERS else None
    optimizer_g = runtime.make_adam(generator.parameters(), config.lr, device)
    optimizer_d = runtime.make_adam(discriminator.parameters(), config.lr, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)  # one scaler, two optimizers
    start_iteration, train_seconds = 0, 0.
    if config.checkpoint:
        runtime.load_states(config.checkpoint, [
            (generator, state['generator']), (discriminator, state['discriminator']),
            (optimizer_g, state['optimizer_g']), (optimizer_d, state['optimizer_d']), (scaler, state['scaler'])])
        runtime.set_rng_states(state['rng'])
        start_iteration, train_seconds = state['iteration'], state['train_seconds']
        if is_main:
            print(f"Resuming {config.checkpoint} at iteration {start_iteration}")
    else:
        weights = {name: tensor.float() for name, tensor in state['model'].items()}  # shipped files are float16
        runtime.load_states(config.srresnet_checkpoint, [(generator, weights)])
        if is_main:
            print(f"Generator initialised from {config.srresnet_checkpoint} (iteration {state['iteration']})")
    del state
    if is_main:
        utils.remove_stale_temporaries(config.out_dir)

    if config.shuffled_last_conv:  # the same parameters under the same names: checkpoints do not change
        shuffle_last_convolution(generator)
    if device.type == 'cpu':  # the same gradients, without aten's slow CPU PReLU backward
        fast_prelu_backward(generator)
    generator = generator.to(device, memory_format=memory_format)
    discriminator = discriminator.to(device, memory_format=memory_format)
    if world_size > 1:
        generator = runtime.wrap_distributed(generator, device, config.sync_bn)
        discriminator = runtime.wrap_distributed(discriminator, device, config.sync_bn)
    # In the generator step the discriminator only passes gradients back to the SR images: it runs
    # as the plain module there, so that DDP does not expect to synchronise its gradients.
    plain_discriminator = runtime.unwrap(discriminator)
    compiled = (lambda net: torch.compile(net, mode=config.compile)) if config.compile else (lambda net: net)
    train_generator, train_discriminator = compiled(generator), compiled(discriminator)
    train_vgg = compiled(vgg.to(device, memory_format=memory_format)) if vgg is not None else None

    # Data: LR inputs ImageNet-normed, HR targets in [-1, 1]; the VGG19 and the discriminator see
    # both in ImageNet normalisation, as the VGG19 was trained.
    val_dataset = datasets.validation_dataset(config.data_folder, config.val_data_name, model_args['scaling_factor'],
                                              config.degradation) \
        if is_main and config.val_freq else None
    batches, how = datasets.training_batches(
        config.data_folder, config.crop_size, model_args['scaling_factor'], config.batch_size, config.iterations,
        config.seed, start_iteration, device, '[-1, 1]', config.augment, config.data_on_device,
        config.cache_images, config.workers, rank, world_size, config.degradation)
    monitor = runtime.TrainingMonitor('SRGAN', ['content_loss', 'adversarial_loss', 'discriminator_loss'],
                                      config.iterations, start_iteration, config.print_freq,
                                      config.batch_size * world_size,
                                      os.path.join(config.out_dir, 'log_srgan.csv') if is_main else None,
                                      train_seconds, device)
    if is_main:
        print(f"Training batches: {how}")

    def save(iteration, path):
        """Write everything exact resumption needs, atomically, with plain (unwrapped) weights."""
        runtime.save_checkpoint({
            'generator': runtime.unwrap(generator).state_dict(), 'discriminator': plain_discriminator.state_dict(),
            'optimizer_g': optimizer_g.state_dict(), 'optimizer_d': optimizer_d.state_dict(),
            'scaler': scaler.state_dict(), 'rng': runtime.rng_states(), 'iteration': iteration,
            'train_seconds': monitor.train_seconds, 'model_args': model_args,
            'discriminator_args': discriminator_args, 'config': vars(config)}, path, exists='replace')

    def autocast():
        return torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    generator.train()
    discriminator.train()
    for iteration, (lr_imgs, hr_imgs) in enumerate(batches, start=start_iteration + 1):
        learning_rate = runtime.learning_rate_at(iteration, config.lr, config.lr_schedule, config.iterations,
                                                 config.lr_decay_at, config.lr_decay, config.warmup_iterations)
        runtime.set_learning_rate(optimizer_g, learning_rate)
        runtime.set_learning_rate(optimizer_d, learning_rate)
        lr_imgs = lr_imgs.to(device, memory_format=memory_format, non_blocking=True)  # (N, 3, 24, 24), ImageNet-normed
        hr_imgs = hr_imgs.to(device, memory_format=memory_format, non_blocking=True)  # (N, 3, 96, 96), in [-1, 1]
        hr_normed = utils.convert_image(hr_imgs, '[-1, 1]', 'imagenet-norm')  # (N, 3, 96, 96)

        # 1. Generator update, on content loss + beta x adversarial loss. The discriminator is
        # frozen here: its weights get no gradients, which only flow through it to the SR images.
        plain_discriminator.requires_grad_(False)
        with autocast():
            sr_imgs = train_generator(lr_imgs)  # (N, 3, 96, 96), in [-1, 1]
            sr_normed = utils.convert_image(sr_imgs, '[-1, 1]', 'imagenet-norm')  # (N, 3, 96, 96)
            if train_vgg is None:
                content_loss = F.mse_loss(sr_imgs.float(), hr_imgs)  # pixel MSE, as the SRResNet's
            else:
                sr_features = train_vgg(sr_normed).float() * config.vgg_feature_scale  # (N, 512, 6, 6) for vgg54
                with torch.no_grad():
                    hr_features = train_vgg(hr_normed).float() * config.vgg_feature_scale  # a fixed target
                content_loss = F.mse_loss(sr_features, hr_features)
            sr_logits = plain_discriminator(sr_normed)  # (N,)
        # The generator wants its SR images called natural: the label 1.
        adversarial_loss = F.binary_cross_entropy_with_logits(sr_logits.float(), torch.ones_like(sr_logits.float()))
        perceptual_loss = content_loss + config.beta * adversarial_loss
        optimizer_g.zero_grad(set_to_none=True)
        scaler.scale(perceptual_loss).backward()
        if config.grad_clip:
            scaler.unscale_(optimizer_g)  # clamp the true gradients, not the scaled ones
            runtime.clip_gradient(optimizer_g, config.grad_clip)
        scaler.step(optimizer_g)
        plain_discriminator.requires_grad_(True)

        # 2. Discriminator update, on HR images (label 1) and the detached SR images (label 0):
        # detaching stops the backward pass at the SR images, so the generator is left alone.
        with autocast():
            hr_logits = train_discriminator(hr_normed)  # (N,)
            sr_logits = train_discriminator(sr_normed.detach())  # (N,)
        discriminator_loss = F.binary_cross_entropy_with_logits(hr_logits.float(), torch.ones_like(hr_logits.float())) \
            + F.binary_cross_entropy_with_logits(sr_logits.float(), torch.zeros_like(sr_logits.float()))
        optimizer_d.zero_grad(set_to_none=True)
        scaler.scale(discriminator_loss).backward()
        if config.grad_clip:
            scaler.unscale_(optimizer_d)
            runtime.clip_gradient(optimizer_d, config.grad_clip)
        scaler.step(optimizer_d)
        scaler.update()  # once per iteration, after both optimizers stepped
        monitor.add(content_loss, adversarial_loss, discriminator_loss)

        if monitor.due(iteration, config.save_freq, config.val_freq):
            monitor.report(iteration, learning_rate, list(generator.parameters()) + list(discriminator.parameters()))
            if is_main and (iteration % config.save_freq == 0 or iteration == config.iterations):
                save(iteration, latest_path)  # first, so a failing validation loses nothing
                if config.snapshots:  # a GAN is chosen among these by looking and by NIQE, not by PSNR
                    snapshot = os.path.join(config.out_dir, f'generator_{iteration:06d}.pth')  # sorts by iteration
                    runtime.export_for_inference(latest_path, snapshot, exists='replace')
                monitor.plot({'generator losses': ['content_loss', 'adversarial_loss'],
                              'discriminator loss': ['discriminator_loss'], 'validation PSNR (dB)': ['val_psnr']})
            if val_dataset is not None and (iteration % config.val_freq == 0 or iteration == config.iterations):
                # Logged to watch the run; a GAN is chosen by looking, not by PSNR, which it trades away.
                psnr, ssim = runtime.validate(generator, val_dataset, device, model_args['scaling_factor'])
                monitor.report_validation(iteration, config.val_data_name, psnr, ssim)
            monitor.restart_clock()
    monitor.close()
    runtime.cleanup_distributed(generator, discriminator)
    return {'iteration': config.iterations, 'generator': runtime.unwrap(generator),
            'discriminator': plain_discriminator}


if __name__ == '__main__':
    runtime.run_script(main, __file__)
