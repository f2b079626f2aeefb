#!/bin/bash
# Kept as the record of how results/bench_gpu_*.json, results/gpu_train_log.txt and the shipped
# checkpoints/srresnet_x4.pth (stage 1; stage 2 is in the README) were made on one H200 lease.
# It ran on the code before commit 09c61a7, which moved export_for_inference from utils.py to
# runtime.py: to run it again, call runtime.export_for_inference in its two export lines.
# The one prepared device command: bench the training paths, train the SRResNet, then the
# SRGAN-MSE from it, and export both. Everything it keeps goes to $OUT. It ends by DEADLINE s.
# env: OUT, TRAIN_ROOT, DEVICE, DEADLINE (s after start), QUICK (1: a rehearsal with tiny runs)
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
TRAIN_ROOT=${TRAIN_ROOT:-/tmp/train}
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-575}
QUICK=${QUICK:-0}
RUNS=${RUNS:-/tmp/runs}
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

# 2. The SRResNet: batch 64, or 128 if the bench found it 20% faster; compile if it paid 10%;
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
if [ "$BATCH" = 128 ]; then LR=3e-4; else LR=2e-4; fi
VAL=$(( ITERS / 8 )); [ $VAL -lt 1 ] && VAL=1
stamp "train SRResNet"
timeout $(( DEADLINE - $(now) - 110 )) python3 train_srresnet.py --data_folder=/tmp/data --batch_size=$BATCH --iterations=$ITERS \
  --lr=$LR --lr_schedule=cosine --warmup_iterations=$(( ITERS / 50 )) --augment=True --val_freq=$VAL --save_freq=$VAL \
  --print_freq=$(( VAL / 4 > 0 ? VAL / 4 : 1 )) --compile=$COMPILE --device=$DEVICE --out_dir=$RUNS/srresnet --overwrite=True
cp $RUNS/srresnet/log_srresnet.csv $OUT/
python3 -c "import utils; utils.export_for_inference('$RUNS/srresnet/checkpoint_srresnet_best.pth', '$OUT/srresnet_x4.pth')" || exit 1

# 3. The SRGAN-MSE from it: the paper's recipe (beta 1e-3, Adam 1e-4, lr x0.1 at half), batch 32.
stamp "train SRGAN-MSE"
SRGAN_SECONDS=$(( DEADLINE - $(now) - 30 ))
if [ "$QUICK" = 1 ]; then GB=4; GITERS=6; else
  GB=32; GITERS=$(python3 -c "print(max(400, int($SRGAN_SECONDS * $GRATE * 0.75 / $GB) // 100 * 100))"); fi
echo "SRGAN: batch $GB, $GITERS iterations, budget $SRGAN_SECONDS s"
timeout $(( DEADLINE - $(now) - 8 )) python3 train_srgan.py --data_folder=/tmp/data --srresnet_checkpoint=$OUT/srresnet_x4.pth \
  --content_loss=mse --batch_size=$GB --iterations=$GITERS --lr_decay_at=$(( GITERS / 2 )) \
  --val_freq=$(( GITERS / 4 > 0 ? GITERS / 4 : 1 )) --save_freq=$(( GITERS / 8 > 0 ? GITERS / 8 : 1 )) \
  --print_freq=$(( GITERS / 20 > 0 ? GITERS / 20 : 1 )) --device=$DEVICE --out_dir=$RUNS/srgan_mse --overwrite=True
cp $RUNS/srgan_mse/log_srgan.csv $OUT/
python3 -c "import utils; utils.export_for_inference('$RUNS/srgan_mse/checkpoint_srgan.pth', '$OUT/srgan_mse_x4.pth')"
stamp "done"; ls -la $OUT
