#!/bin/bash
# The prepared device command for a GPU lease: bench the training paths, fine-tune the shipped
# SRResNet, train an SRGAN-MSE from the result with a snapshot of its generator at each
# checkpoint, and export them. Everything it keeps goes to $OUT; it ends by DEADLINE s.
# The version that ran on the one H200 lease so far, and made results/bench_gpu_*.json,
# results/gpu_train_log.txt and stage 1 of the shipped SRResNet (from scratch, 9,200 iterations),
# is `git show 9ab318c:results/gpu_run.sh`. This one differs in three ways, rehearsed on the CPU
# with QUICK=1 only: it calls runtime.export_for_inference (moved out of utils.py); the SRResNet
# fine-tunes INIT (the shipped file; fresh optimizer, lr 1e-4, as stage 2 did) instead of
# starting from scratch; and the SRGAN keeps its snapshots, of which those after its learning-
# rate drop come back in one archive, to be chosen among on the validation images.
# The training images (153 MB) travel in three parts, since a call carries 64 MiB at most: copy
# T91 and both BSDS500 folders into .gpu/dataA/, and each half of ImageNet-sample into
# .gpu/dataB/ImageNet-sample/ and .gpu/dataC/ImageNet-sample/ (.gpu/ is ignored by git). Then,
# back to back while the machine stays warm: run `true` carrying .gpu/dataA, again carrying
# .gpu/dataB, then this script carrying .gpu/dataC; parts that went earlier stay there.
# env: OUT, TRAIN_ROOT, DEVICE, DEADLINE (s after start), QUICK (1: a rehearsal with tiny runs), INIT
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
TRAIN_ROOT=${TRAIN_ROOT:-/tmp/train}
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-575}
QUICK=${QUICK:-0}
RUNS=${RUNS:-/tmp/runs}
INIT=${INIT:-checkpoints/srresnet_x4.pth}
exec > >(tee -a "$OUT/gpu_log.txt") 2>&1
T0=$(date +%s); now() { echo $(( $(date +%s) - T0 )); }; stamp() { echo "=== $(now) s: $*"; }

stamp "start"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -c "import torch, PIL, numpy; print('torch', torch.__version__, 'Pillow', PIL.__version__, 'numpy', numpy.__version__)"
mkdir -p "$TRAIN_ROOT"
for part in .gpu/dataA .gpu/dataB .gpu/dataC; do [ -d "$part" ] && cp -rn "$part"/. "$TRAIN_ROOT"/; done
for f in T91 BSDS500-train BSDS500-test ImageNet-sample; do echo "$f: $(ls $TRAIN_ROOT/$f | wc -l) files"; done
N=$(ls $TRAIN_ROOT/T91 $TRAIN_ROOT/BSDS500-train $TRAIN_ROOT/BSDS500-test $TRAIN_ROOT/ImageNet-sample 2>/dev/null | grep -c -i -E '\.(bmp|jpg|jpeg|png)$')
if [ "$QUICK" != 1 ] && [ "$N" -lt 1491 ]; then echo "only $N of 1491 training images arrived: stopping"; exit 3; fi
python3 create_data_lists.py --train_folders="['$TRAIN_ROOT/T91','$TRAIN_ROOT/BSDS500-train','$TRAIN_ROOT/BSDS500-test','$TRAIN_ROOT/ImageNet-sample']" \
  --test_folders="[]" --min_size=96 --output_folder=/tmp/data || exit 1

# 1. Bench: every path at batch 16 and 64, the device stream at larger batches; then the SRGAN
# and the compile modes at the best batch.
stamp "bench (eager)"
if [ "$QUICK" = 1 ]; then Q="--batch_sizes=[4] --train_iterations=2 --train_images=8"; else Q="--train_iterations=40"; fi
timeout 100 python3 bench.py --sections=peak,training --srgan=False --compile_modes="[]" --device=$DEVICE \
  --train_folder=$TRAIN_ROOT --results_file=$OUT/bench_gpu_training.json $Q
stamp "bench (SRGAN, compile)"
BEST=$(python3 -c "import json; print(json.load(open('$OUT/bench_gpu_training.json'))['training'].get('best_batch_size', 64))" 2>/dev/null || echo 64)
if [ "$QUICK" = 1 ]; then Q="--srgan_batch_sizes=[4] --train_iterations=2 --train_images=8"; else Q="--srgan_batch_sizes=[32] --train_iterations=40"; fi
timeout 130 python3 bench.py --sections=training --batch_sizes="[]" --gpu_batch_sizes="[$BEST]" --device=$DEVICE \
  --train_folder=$TRAIN_ROOT --results_file=$OUT/bench_gpu_compile.json $Q

# 2. The SRResNet, fine-tuned from INIT: batch 64, or 128 if the bench found it 20% faster; compile if it paid 10%;
# iterations to fill the time left (less the SRGAN's share) at the measured speed.
stamp "choose"
SRRESNET_SECONDS=$(( DEADLINE - $(now) - 175 )); [ $SRRESNET_SECONDS -gt 260 ] && SRRESNET_SECONDS=260
read BATCH ITERS COMPILE GRATE < <(python3 - "$OUT" "$SRRESNET_SECONDS" "$QUICK" <<'PY'
import json, sys
out, seconds, quick = sys.argv[1], float(sys.argv[2]), sys.argv[3] == '1'
speed, gan = {}, 2000.
for name in ('bench_gpu_training.json', 'bench_gpu_compile.json'):
    try:
        for run in json.load(open(f'{out}/{name}'))['training']['runs']:
            if run['name'].startswith('device stream'):
                mode = run['name'].split('compile ')[-1] if 'compile' in run['name'] else ''
                speed[(run['batch_size'], mode)] = max(speed.get((run['batch_size'], mode), 0), run['samples_per_s'])
            if run['name'] == 'SRGAN-MSE device stream':
                gan = run['samples_per_s']
    except Exception as error:
        print(f"no {name}: {error}", file=sys.stderr)
print(speed, 'SRGAN-MSE', gan, file=sys.stderr)
if quick:
    print(4, 6, "''", gan); sys.exit()
batch = 128 if speed.get((128, ''), 0) > 1.2 * speed.get((64, ''), 1) else 64
compiled = {m: s for (b, m), s in speed.items() if m and b == batch}
eager = speed.get((batch, ''), 8000.)
mode = max(compiled, key=compiled.get) if compiled and max(compiled.values()) > 1.1 * eager else ''
rate = compiled[mode] if mode else eager
seconds -= 45 if mode else 0  # compiling again costs time, even with a warm cache
print(batch, max(1000, int(seconds * rate / batch) // 100 * 100), mode or "''", gan)
PY
)
echo "SRResNet: batch $BATCH, $ITERS iterations, compile=$COMPILE, budget $SRRESNET_SECONDS s; SRGAN-MSE rate $GRATE samples/s"
LR=1e-4  # stage 2's fine-tuning rate at batch 128; stage 1's 3e-4 is for a start from scratch
VAL=$(( ITERS / 8 )); [ $VAL -lt 1 ] && VAL=1
stamp "train SRResNet"
timeout $(( DEADLINE - $(now) - 110 )) python3 train_srresnet.py --data_folder=/tmp/data --batch_size=$BATCH --iterations=$ITERS \
  --init_weights=$INIT --lr=$LR --lr_schedule=cosine --warmup_iterations=$(( ITERS / 50 )) --augment=True --val_freq=$VAL --save_freq=$VAL \
  --print_freq=$(( VAL / 4 > 0 ? VAL / 4 : 1 )) --compile=$COMPILE --device=$DEVICE --out_dir=$RUNS/srresnet --overwrite=True
cp $RUNS/srresnet/log_srresnet.csv $OUT/
python3 -c "import runtime; runtime.export_for_inference('$RUNS/srresnet/checkpoint_srresnet_best.pth', '$OUT/srresnet_x4.pth')" || exit 1

# 3. The SRGAN-MSE from it: the paper's recipe (beta 1e-3, Adam 1e-4, lr x0.1 at half), batch 32,
# with the 500-iteration (QUICK: 2) warm-up the shipped SRGAN-MSE used.
stamp "train SRGAN-MSE"
SRGAN_SECONDS=$(( DEADLINE - $(now) - 30 ))
if [ "$QUICK" = 1 ]; then GB=4; GITERS=6; else
  GB=32; GITERS=$(python3 -c "print(max(400, int($SRGAN_SECONDS * $GRATE * 0.75 / $GB) // 100 * 100))"); fi
echo "SRGAN: batch $GB, $GITERS iterations, budget $SRGAN_SECONDS s"
# It starts from whichever SRResNet scored higher on the validation images: the fine-tune's best or INIT.
START=$(python3 -c "import torch; best = lambda p: torch.load(p, weights_only=True).get('best_psnr', 0.); \
print('$OUT/srresnet_x4.pth' if best('$OUT/srresnet_x4.pth') > best('$INIT') else '$INIT')")
echo "SRGAN starts from $START"
timeout $(( DEADLINE - $(now) - 8 )) python3 train_srgan.py --data_folder=/tmp/data --srresnet_checkpoint=$START \
  --content_loss=mse --batch_size=$GB --iterations=$GITERS --lr_decay_at=$(( GITERS / 2 )) --snapshots=True \
  --warmup_iterations=$([ "$QUICK" = 1 ] && echo 2 || echo 500) \
  --val_freq=$(( GITERS / 4 > 0 ? GITERS / 4 : 1 )) --save_freq=$(( GITERS / 8 > 0 ? GITERS / 8 : 1 )) \
  --print_freq=$(( GITERS / 20 > 0 ? GITERS / 20 : 1 )) --device=$DEVICE --out_dir=$RUNS/srgan_mse --overwrite=True
cp $RUNS/srgan_mse/log_srgan.csv $OUT/
python3 -c "import runtime; runtime.export_for_inference('$RUNS/srgan_mse/checkpoint_srgan.pth', '$OUT/srgan_mse_x4.pth')"
# The snapshots after the drop (3.2 MB each; $OUT takes 8 files of 16 MiB at most): one archive.
(cd $RUNS/srgan_mse && ls generator_*.pth | awk -v drop=$(( GITERS / 2 )) '{ i = substr($0, 11, 6) + 0; if (i > drop) print }' \
  | tail -n 4 | xargs tar cf $OUT/srgan_mse_snapshots.tar)
stamp "done"; ls -la $OUT
