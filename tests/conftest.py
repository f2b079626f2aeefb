"""Shared fixtures: tiny generated training and test images, and their data lists."""
import numpy as np
import pytest
from PIL import Image

from utils import create_data_lists


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
    """A data folder with train_images.json (6 noisy-gradient images, 36-50 px) and
    Set5_test_images.json (2 images), as create_data_lists writes them."""
    root = tmp_path_factory.mktemp('tiny_data')
    rng = np.random.default_rng(0)
    for folder, sizes in (('train', [(36 + 2 * i, 40 + i) for i in range(6)]), ('Set5', [(30, 34), (35, 29)])):
        (root / folder).mkdir()
        for i, (width, height) in enumerate(sizes):
            gradient = np.linspace(0, 200, width)[None, :, None] + np.linspace(0, 50, height)[:, None, None]
            pixels = np.clip(gradient + rng.normal(0, 10, (height, width, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / folder / f'{i}.png')
    create_data_lists([str(root / 'train')], [str(root / 'Set5')], min_size=24, output_folder=str(root))
    return root
