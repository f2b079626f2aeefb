"""Step 1: write the JSON lists of training, validation and test images that the other scripts read.

    python create_data_lists.py
    python create_data_lists.py --train_folders="['data/T91', 'data/BSDS500/images/train']" --val_size=20

Put the images in the folders below first (the README says where to get each set): the
tutorial's MS-COCO 2014 train and val images for training, and Set5, Set14 and BSD100 for
testing. `val_size` training images are held out into val_images.json: the training scripts
validate on them, so that the test sets are never used to choose a checkpoint.
"""

import runtime
import utils

# ----------------------------------------------------------------------------------------------
# Data
train_folders: list = ['data/train2014', 'data/val2014']  # images pooled for training
test_folders: list = ['data/Set5', 'data/Set14', 'data/BSD100']  # one list each, named after the folder
min_size: int = 100  # px; smaller images are left out (training crops are 96 px)
val_size: int = 50  # training images held out for validation (val_images.json; 0 = none)
val_seed: int = 0  # picks the held-out images
output_folder: str = 'data'  # where the JSON lists go
overwrite: bool = False  # replace the lists already in output_folder (False: refuse, naming the first)
# ----------------------------------------------------------------------------------------------


def main(argv):
    """Parse overrides, then write the lists."""
    config = runtime.parse_config(globals(), argv)
    runtime.require(config.min_size > 0, f"min_size must be positive, got {config.min_size}")
    runtime.require(config.val_size >= 0, f"val_size must be >= 0, got {config.val_size}")
    utils.create_data_lists(config.train_folders, config.test_folders, config.min_size, config.output_folder,
                            config.val_size, config.val_seed, config.overwrite)


if __name__ == '__main__':
    runtime.run_script(main, __file__)
