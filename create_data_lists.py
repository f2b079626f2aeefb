"""Step 1: write the JSON lists of training and test images that the other scripts read.

    python create_data_lists.py
    python create_data_lists.py --train_folders="['../shared/data/train/T91']" --output_folder=data

Put the images in the folders below first (the README says where to get them): the tutorial's
MS-COCO 2014 train and val images for training, and Set5, Set14 and BSD100 for testing.
"""
import sys

from utils import create_data_lists, parse_config

# ----------------------------------------------------------------------------------------------
# Data
train_folders: list = ['data/train2014', 'data/val2014']  # images pooled for training
test_folders: list = ['data/Set5', 'data/Set14', 'data/BSD100']  # one list each, named after the folder
min_size: int = 100  # px; smaller images are left out (training crops are 96 px)
output_folder: str = 'data'  # where the JSON lists go
# ----------------------------------------------------------------------------------------------


def main(argv):
    """Parse overrides, then write the lists."""
    config = parse_config(globals(), argv)
    create_data_lists(config.train_folders, config.test_folders, config.min_size, config.output_folder)


if __name__ == '__main__':
    main(sys.argv[1:])
