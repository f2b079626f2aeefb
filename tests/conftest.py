"""Shared fixtures: tiny generated training, validation and test images, their data lists, and a
tiny trained SRResNet; and where OpenVINO runs in the test process."""
import numpy as np
import pytest
from PIL import Image

from utils import create_data_lists

TINY_SRRESNET_ARGS = ['--crop_size=32', '--n_blocks=2', '--n_channels=8', '--batch_size=2', '--workers=0',
                      '--device=cpu', '--val_freq=0']


# Both fixtures are made once per pytest run and shared by every test file: tests/ is not a Python
# package, so pytest gives a 'package' fixture defined here the lifetime of the whole run.
@pytest.fixture(scope='package')
def tiny_data(tmp_path_factory):
    """A data folder as create_data_lists writes it: train_images.json (6 noisy-gradient images,
    36-50 px), val_images.json (1 more, held out of the 7 in train/) and Set5_test_images.json (2)."""
    root = tmp_path_factory.mktemp('tiny_data')
    rng = np.random.default_rng(0)
    for folder, sizes in (('train', [(36 + 2 * i, 40 + i) for i in range(7)]), ('Set5', [(30, 34), (35, 29)])):
        (root / folder).mkdir()
        for i, (width, height) in enumerate(sizes):
            gradient = np.linspace(0, 200, width)[None, :, None] + np.linspace(0, 50, height)[:, None, None]
            pixels = np.clip(gradient + rng.normal(0, 10, (height, width, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / folder / f'{i}.png')
    create_data_lists([str(root / 'train')], [str(root / 'Set5')], min_size=24, output_folder=str(root), val_size=1)
    return root


@pytest.fixture(scope='package')
def srresnet_checkpoint(tiny_data, tmp_path_factory):
    """A tiny SRResNet checkpoint (2 blocks, 8 channels, 2 iterations) written by train_srresnet.py itself."""
    import train_srresnet
    out_dir = tmp_path_factory.mktemp('srresnet')
    train_srresnet.main(TINY_SRRESNET_ARGS + [f'--data_folder={tiny_data}', f'--out_dir={out_dir}', '--iterations=2'])
    return str(out_dir / 'checkpoint_srresnet.pth')


# OpenVINO's CPU runtime and PyTorch's training, in one long process, have ended in a segmentation
# fault here (2-core Xeon with AMX, OpenVINO 2026.4, PyTorch 2.14: a test process that had compiled
# OpenVINO models, then trained with DataLoader workers, crashed some tests later; and, with the
# OpenVINO tests last, one that compiled a model for one thread beside two-thread ones crashed
# eight tests later, in a test that starts a child process: so every OpenVINO test compiles for
# the same number of threads). A user's run
# never does both, and neither does a test: outside tests/test_openvino.py the scripts run on
# PyTorch (their backend='auto' would pick OpenVINO), and the OpenVINO tests run last.
@pytest.fixture(autouse=True)
def torch_backend_outside_the_openvino_tests(request, monkeypatch):
    if request.module.__name__ != 'test_openvino':
        import eval as eval_script
        import super_resolve
        monkeypatch.setattr(super_resolve, 'backend', 'torch')
        monkeypatch.setattr(eval_script, 'backend', 'torch')


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.module.__name__ == 'test_openvino')  # stable: the others keep their order
