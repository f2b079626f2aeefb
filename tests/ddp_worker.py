"""Run a training script's main() under torchrun and save this rank's final weights, so a test
can check that every rank ended with the same model.

    torchrun --nproc_per_node=2 tests/ddp_worker.py train_srresnet OUT_DIR --key=value ...
"""
import importlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == '__main__':
    script, out_dir, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    result = importlib.import_module(script).main(argv)
    weights = {name: value.state_dict() for name, value in result.items() if isinstance(value, torch.nn.Module)}
    torch.save(weights, os.path.join(out_dir, f"rank{os.environ['RANK']}.pth"))
