"""The trained models that ship in checkpoints/: they load safely, the SRResNet is really trained,
the SRGAN-MSE really does what a GAN is for, the real-photo SRResNet undoes damage better, the
real-photo SRGAN paints texture back into what it restores, and the damage classifier of
denoise='auto' tells a clean photo from a damaged one."""
import os

import numpy as np
import torch
from PIL import Image

import runtime
import super_resolve
import utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINT = os.path.join(REPO, 'checkpoints', 'srresnet_x4.pth')
SRGAN_CHECKPOINT = os.path.join(REPO, 'checkpoints', 'srgan_mse_x4.pth')
EXAMPLE = os.path.join(REPO, 'examples', 'chelsea.png')


def test_shipped_checkpoint_loads_with_weights_only():
    checkpoint = torch.load(CHECKPOINT, map_location='cpu', weights_only=True)
    assert {'model', 'model_args', 'iteration', 'config'} <= checkpoint.keys()
    assert checkpoint['model_args']['scaling_factor'] == 4 and checkpoint['iteration'] > 0


def test_shipped_model_beats_bicubic_on_a_bundled_image():
    """An honest check that the weights are trained: shrink a crop of the example photo 4x,
    restore it with the model and with bicubic, and compare both to the crop (PSNR on Y)."""
    model, _ = runtime.load_sr_model(CHECKPOINT, 'cpu')
    with Image.open(EXAMPLE) as img:
        hr_img = img.convert('RGB').crop((48, 16, 144, 112))  # 96 x 96, the cat's face
    lr_img = hr_img.resize((24, 24), Image.BICUBIC)
    with torch.inference_mode():
        sr_img = model(utils.convert_image(lr_img, 'pil', 'imagenet-norm').unsqueeze(0))[0]  # (3, 96, 96), [-1, 1]
    sr_psnr, _ = utils.compute_psnr_ssim(utils.convert_image(sr_img, '[-1, 1]', 'pil'), hr_img, crop_border=4)
    bicubic_psnr, _ = utils.compute_psnr_ssim(lr_img.resize((96, 96), Image.BICUBIC), hr_img, crop_border=4)
    assert sr_psnr > bicubic_psnr + 0.5, (sr_psnr, bicubic_psnr)


def test_shipped_srgan_loads_with_weights_only_and_names_its_variant():
    checkpoint = torch.load(SRGAN_CHECKPOINT, map_location='cpu', weights_only=True)
    assert {'generator', 'model_args', 'iteration', 'config'} <= checkpoint.keys()
    assert 'discriminator' not in checkpoint and 'optimizer_g' not in checkpoint  # inference weights only
    assert checkpoint['config']['content_loss'] == 'mse'
    assert all(t.dtype == torch.float16 for t in checkpoint['generator'].values() if t.is_floating_point())


def test_shipped_srgan_looks_more_natural_than_the_srresnet():
    """What the GAN is for, on the bundled photo (which no model saw): its 4x upscale has a
    lower NIQE than the SRResNet's, whose MSE-trained output is smooth."""
    with Image.open(EXAMPLE) as img:
        lr_img = img.convert('RGB')  # 192 x 128
    scores = {}
    for name, path in (('srresnet', CHECKPOINT), ('srgan', SRGAN_CHECKPOINT)):
        model, _ = runtime.load_sr_model(path, 'cpu')
        sr_img = super_resolve.upscale_image(model, lr_img, 'cpu', tile_size=0, tile_overlap=0)  # 768 x 512, as users get it
        scores[name] = utils.niqe(sr_img, crop_border=4)
    assert scores['srgan'] < scores['srresnet'] - 0.5, scores


REAL_CHECKPOINT = os.path.join(REPO, 'checkpoints', 'srresnet_real_x4.pth')
REAL_SRGAN_CHECKPOINT = os.path.join(REPO, 'checkpoints', 'srgan_real_x4.pth')


def damaged_example(keys):
    """The bundled photo (192 x 128) and one damaged 4x shrink of it per key (realistic degradation,
    fixed keys), as PIL images."""
    import degradations
    with Image.open(EXAMPLE) as img:
        hr_img = img.convert('RGB')
    hr = utils.convert_image(hr_img, 'pil', '[0, 1]').unsqueeze(0)  # (1, 3, 128, 192)
    return hr_img, [utils.convert_image(degradations.degrade(hr, [f'chelsea.png:{key}'], 4)[0], '[0, 1]', 'pil')
                    for key in keys]  # each 48 x 32


def test_shipped_real_photo_srresnet_is_named_so_and_undoes_damage_better():
    """The real-photo SRResNet records its degradation (the ladder, clean to heavy). On damaged
    shrinks of the bundled photo it restores the original better than the bicubic-trained
    SRResNet: every time at the ladder's medium and JPEG-only levels (six fixed keys each), and by
    more than 0.4 dB on average on six heavily damaged ones (the realistic degradation, the top
    level). On the clean shrink it costs under 1 dB: the blend's denoise value takes that back."""
    checkpoint = torch.load(REAL_CHECKPOINT, map_location='cpu', weights_only=True)
    assert checkpoint['config']['degradation'] == 'ladder'
    assert super_resolve.model_label(checkpoint) == 'SRResNet-real'
    import degradations
    hr_img, heavy = damaged_example(range(6))
    hr = utils.convert_image(hr_img, 'pil', '[0, 1]').unsqueeze(0)  # (1, 3, 128, 192)
    models = {name: runtime.load_sr_model(path, 'cpu')[0] for name, path in (('srresnet', CHECKPOINT),
                                                                            ('real', REAL_CHECKPOINT))}

    def gain(lr_img):  # dB of PSNR the real-photo model adds over the SRResNet
        psnr = {name: utils.compute_psnr_ssim(super_resolve.upscale_image(model, lr_img, 'cpu', 0, 0), hr_img,
                                              crop_border=4)[0] for name, model in models.items()}
        return psnr['real'] - psnr['srresnet']

    for level in ('medium', 'jpeg'):
        gains = [gain(utils.convert_image(degradations.degrade_by(f'ladder:{level}', hr, [f'chelsea.png:{key}'], 4)[0],
                                          '[0, 1]', 'pil')) for key in range(6)]
        assert min(gains) > 0, (level, gains)
    heavy_gains = [gain(lr_img) for lr_img in heavy]
    assert sum(heavy_gains) / len(heavy_gains) > 0.4, heavy_gains
    clean_gain = gain(hr_img.resize((48, 32), Image.BICUBIC))
    assert -1 < clean_gain < 0, clean_gain


def test_shipped_real_photo_srgan_is_named_so_and_looks_more_natural_on_damaged_photos():
    """The real-photo SRGAN records its degradation, ships inference weights only, and on heavily
    damaged shrinks of the bundled photo (six fixed keys) it paints back the texture that the
    real-photo SRResNet smooths away: a NIQE lower by more than 1 on average, and lower on five of
    the six (on key 0 the ladder-trained file scores 14.3 against 11.3; results/README.md)."""
    checkpoint = torch.load(REAL_SRGAN_CHECKPOINT, map_location='cpu', weights_only=True)
    assert checkpoint['config']['degradation'] == 'ladder' and 'discriminator' not in checkpoint
    assert super_resolve.model_label(checkpoint) == 'SRGAN-MSE-real'
    _, lr_imgs = damaged_example(range(6))
    models = {name: runtime.load_sr_model(path, 'cpu')[0] for name, path in (('srresnet_real', REAL_CHECKPOINT),
                                                                            ('srgan_real', REAL_SRGAN_CHECKPOINT))}
    scores = np.array([[utils.niqe(super_resolve.upscale_image(model, lr_img, 'cpu', 0, 0), crop_border=4)
                        for model in models.values()] for lr_img in lr_imgs])  # (6 keys, [SRResNet-real, SRGAN])
    assert scores[:, 1].mean() < scores[:, 0].mean() - 1, scores
    assert (scores[:, 1] < scores[:, 0]).sum() >= 5, scores


DAMAGE_CHECKPOINT = os.path.join(REPO, 'checkpoints', 'damage_x4.pth')


def shipped_auto_denoise(img, jpeg_table=None):
    """The denoise value the shipped damage classifier gives a PIL image (super_resolve.choose_denoise)."""
    classifier, damage_map = runtime.load_damage_model(DAMAGE_CHECKPOINT)
    value, _ = super_resolve.choose_denoise(classifier, damage_map, img, jpeg_table)
    return value


def test_auto_reads_a_clean_png_as_clean_and_a_damaged_jpeg_as_damaged(tmp_path):
    """denoise='auto' with the shipped classifier: near 0 for the bundled clean photo and its clean
    shrinks, near 1 for heavily damaged shrinks of it saved as low-quality JPEG files (read as a user's
    file is read, quantisation table included)."""
    with Image.open(EXAMPLE) as img:
        clean = img.convert('RGB')
    assert shipped_auto_denoise(clean) <= 0.15
    assert shipped_auto_denoise(clean.resize((96, 64), Image.BICUBIC)) <= 0.15
    _, damaged = damaged_example(range(3))
    for key, lr_img in enumerate(damaged):
        path = tmp_path / f'damaged{key}.jpg'
        lr_img.resize((lr_img.width * 2, lr_img.height * 2), Image.BICUBIC).save(path, quality=30)
        jpeg, table = super_resolve.read_input(str(path), 'upscale', False, 4, 64)
        assert table is not None and shipped_auto_denoise(jpeg, table) >= 0.75, key
