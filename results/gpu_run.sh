#!/bin/bash
# The prepared GPU script: fine-tune the shipped SRResNet, train an SRGAN-MSE from the better of
# the two, keeping a snapshot of its generator at each checkpoint, then bench the training paths
# with the time left. The stages run in the order their results are worth most, so a run cut
# short keeps the most useful ones. Everything it keeps goes to $OUT (8 files at most); it ends
# by DEADLINE s.
#
# The version that ran on one H200 on 2026-11-28, and made results/bench_gpu_*.json,
# results/gpu_train_log.txt and stage 1 of the shipped SRResNet (from scratch, benches first),
# is `git show 9ab318c:results/gpu_run.sh`. This one is rehearsed on the CPU with QUICK=1 only.
# Its speeds are that run's (results/bench_gpu_training.json, results/bench_gpu_compile.json):
# the SRResNet at batch 128 ran 4,931 samples/s, the SRGAN-MSE at batch 32 795; each stage also
# has a timeout, and a stage cut short keeps its last checkpoint and its best one.
#
# The training images (153 MB) are copied to the GPU machine in three parts of under 64 MiB
# each: T91 and both BSDS500 folders in .gpu/dataA/, and each half of ImageNet-sample in
# .gpu/dataB/ImageNet-sample/ and .gpu/dataC/ImageNet-sample/ (.gpu/ is ignored by git). The
# script merges whichever parts it finds into TRAIN_ROOT and, unless QUICK=1, stops if any of
# the 1,491 images is missing.
#
# env: OUT, TRAIN_ROOT, DEVICE, DEADLINE (s after start), QUICK (1: a rehearsal with tiny runs),
#      INIT (the SRResNet to fine-tune), SRRESNET_SECONDS, SRGAN_SECONDS (each stage's training time)
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
TRAIN_ROOT=${TRAIN_ROOT:-/tmp/train}
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-575}
QUICK=${QUICK:-0}
RUNS=${RUNS:-/tmp/runs}
INIT=${INIT:-checkpoints/srresnet_x4.pth}
SRRESNET_SECONDS=${SRRESNET_SECONDS:-270}
SRGAN_SECONDS=${SRGAN_SECONDS:-180}
exec > >(tee -a "$OUT/gpu_log.txt") 2>&1
T0=$(date +%s); now() { echo $(( $(date +%s) - T0 )); }; stamp() { echo "=== $(now) s: $*"; }
left() { echo $(( DEADLINE - $(now) - $1 )); }  # seconds to the deadline, less a reserve

stamp "start"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -c "import torch, PIL, numpy; print('torch', torch.__version__, 'Pillow', PIL.__version__, 'numpy', numpy.__version__)"
mkdir -p "$TRAIN_ROOT"
for part in .gpu/dataA .gpu/dataB .gpu/dataC; do [ -d "$part" ] && cp -rn "$part"/. "$TRAIN_ROOT"/; done
for f in T91 BSDS500-train BSDS500-test ImageNet-sample; do echo "$f: $(ls $TRAIN_ROOT/$f | wc -l) files"; done
N=$(ls $TRAIN_ROOT/T91 $TRAIN_ROOT/BSDS500-train $TRAIN_ROOT/BSDS500-test $TRAIN_ROOT/ImageNet-sample 2>/dev/null | grep -c -i -E '\.(bmp|jpg|jpeg|png)$')
if [ "$QUICK" != 1 ] && [ "$N" -lt 1491 ]; then echo "only $N of 1491 training images arrived: stopping"; exit 3; fi
python3 create_data_lists.py --train_folders="['$TRAIN_ROOT/T91','$TRAIN_ROOT/BSDS500-train','$TRAIN_ROOT/BSDS500-test','$TRAIN_ROOT/ImageNet-sample']" \
  --test_folders="[]" --min_size=96 --output_folder=/tmp/data || exit 1

# 1. The SRResNet, fine-tuned from INIT with a fresh optimizer: stage 2's recipe (batch 128, lr
# 1e-4, cosine, 2% warm-up, flips and turns), as many iterations as SRRESNET_SECONDS holds.
if [ "$QUICK" = 1 ]; then BATCH=4; ITERS=6; else BATCH=128; ITERS=$(( SRRESNET_SECONDS * 4900 / BATCH / 100 * 100 )); fi
VAL=$(( ITERS / 8 > 0 ? ITERS / 8 : 1 ))
stamp "train SRResNet: batch $BATCH, $ITERS iterations"
timeout $(left 240) python3 train_srresnet.py --data_folder=/tmp/data --init_weights=$INIT --batch_size=$BATCH \
  --iterations=$ITERS --lr=1e-4 --lr_schedule=cosine --warmup_iterations=$(( ITERS / 50 )) --augment=True \
  --val_freq=$VAL --save_freq=$VAL --print_freq=$(( VAL / 4 > 0 ? VAL / 4 : 1 )) --device=$DEVICE \
  --out_dir=$RUNS/srresnet --overwrite=True
cp $RUNS/srresnet/log_srresnet.csv $OUT/
python3 -c "import runtime; runtime.export_for_inference('$RUNS/srresnet/checkpoint_srresnet_best.pth', '$OUT/srresnet_x4.pth')" || exit 1

# 2. The SRGAN-MSE: the paper's recipe (beta 1e-3, Adam 1e-4, lr x0.1 at half), batch 32, with
# the 500-iteration warm-up the shipped SRGAN-MSE used, from whichever SRResNet scored higher on
# the validation images: the fine-tune's best or INIT.
START=$(python3 -c "import torch; best = lambda p: torch.load(p, weights_only=True).get('best_psnr', 0.); \
print('$OUT/srresnet_x4.pth' if best('$OUT/srresnet_x4.pth') > best('$INIT') else '$INIT')")
if [ "$QUICK" = 1 ]; then GB=4; GITERS=6; WARMUP=2; else
  GB=32; GITERS=$(( SRGAN_SECONDS * 795 / GB / 100 * 100 )); WARMUP=500; fi
stamp "train SRGAN-MSE from $START: batch $GB, $GITERS iterations"
timeout $(left 40) python3 train_srgan.py --data_folder=/tmp/data --srresnet_checkpoint=$START \
  --content_loss=mse --batch_size=$GB --iterations=$GITERS --lr_decay_at=$(( GITERS / 2 )) \
  --warmup_iterations=$WARMUP --snapshots=True --val_freq=$(( GITERS / 4 > 0 ? GITERS / 4 : 1 )) \
  --save_freq=$(( GITERS / 8 > 0 ? GITERS / 8 : 1 )) --print_freq=$(( GITERS / 20 > 0 ? GITERS / 20 : 1 )) \
  --device=$DEVICE --out_dir=$RUNS/srgan_mse --overwrite=True
cp $RUNS/srgan_mse/log_srgan.csv $OUT/
# The snapshots after the drop, the last four (3.2 MB each), in one archive.
(cd $RUNS/srgan_mse && ls generator_*.pth | awk -v drop=$(( GITERS / 2 )) '{ if (substr($0, 11, 6) + 0 > drop) print }' \
  | tail -n 4 | xargs tar cf $OUT/srgan_mse_snapshots.tar)

# 3. Bench with what is left: every path at batch 16 and 64, and the device stream at larger
# batches (issue: the GPU pipeline's targets), then the SRGAN rows.
if [ "$QUICK" = 1 ]; then Q="--batch_sizes=[4] --train_iterations=2 --train_images=8 --srgan_batch_sizes=[4]"
else Q="--train_iterations=40 --srgan_batch_sizes=[32]"; fi
if [ $(left 10) -gt 60 ]; then
  stamp "bench"
  timeout $(left 10) python3 bench.py --sections=peak,training --compile_modes="[]" --device=$DEVICE \
    --train_folder=$TRAIN_ROOT --results_file=$OUT/bench_gpu_training.json $Q
fi
stamp "done"; ls -la $OUT
