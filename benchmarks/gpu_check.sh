#!/bin/bash
# Every GPU check of the studio in one run (< 8 minutes on one H200):
#   first, does every path work on CUDA (benchmarks/bench_sd15_paths.py --size demo --check, about a minute):
#     generate (LoRA at α, blend, fused, α switch), embedding alone and with a LoRA, ControlNet canny/depth/
#     scribble, storyboard, compare + α sweep, survey build, evaluate, video clip, transition, restyle,
#     training lora/ti/full (+ extraction)/motion - each in float16 and bfloat16 against float32 on the
#     demo model; a table, "FAIL <why>" where a path breaks, exit status 1 then (the speed parts still run);
#   then the speed figures, same-process ratios:
#   generation (benchmarks/bench_generate.py --sd15 --size 512): service vs plain diffusers at batch 1,
#     seconds per image at batch 1/4/8, fused LoRA vs base, α switch, peak memory, compiled mode;
#   training (benchmarks/bench_train.py --full-sd15): trainer step vs a bare UNet forward+backward, peak memory.
# SD 1.5's architecture is built from its configs with random weights on the GPU: no downloads.
#
# Prepare here (fetches diffusers, transformers, peft, torchsde, sqlalchemy wheels into .whl/; av is PyAV,
# which the restyle and motion-training smoke need - without it those two say "skipped"):
#   ../shared/gpu/wheels.sh av
# then run on the GPU machine from the project's root, carrying .whl:
#   bash benchmarks/gpu_check.sh
# Each part has its own time limit; a part cut short keeps the figures it printed.
# SMOKE_ARGS / GEN_ARGS / TRAIN_ARGS replace the parts' arguments (e.g. a CPU dry run with the tiny model:
#   SMOKE_ARGS="--device cpu --threads 2" GEN_ARGS="--repeats 2 --switches 4" TRAIN_ARGS="--steps 10" \
#   bash benchmarks/gpu_check.sh). PATHS_SD15=1 adds every path once at SD 1.5's full size in float16
#   (bench_sd15_paths.py: seconds and peak memory per path; about 4 more minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
say() { echo "== $* ($(( $(date +%s) - start )) s)"; }

say "install"
if [ -d .whl ]; then
  timeout 60 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
    || { echo "wheel install failed"; exit 2; }
else
  export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  echo "no .whl/ folder: using the installed packages"
fi
export PYTHONWARNINGS=ignore TOKENIZERS_PARALLELISM=false
python3 - <<'PY' || exit 2
import torch
print(f"torch {torch.__version__}, cuda {torch.version.cuda}, {torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU'}")
import diffusers, transformers, peft
print(f"diffusers {diffusers.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
PY

SMOKE_ARGS=${SMOKE_ARGS:-}
say "precision smoke: bench_sd15_paths.py --size demo --check --dtypes float16,bfloat16 $SMOKE_ARGS"
timeout 180 python3 benchmarks/bench_sd15_paths.py --size demo --check --dtypes float16,bfloat16 $SMOKE_ARGS
echo "exit status $?"

GEN_ARGS=${GEN_ARGS:---sd15 --size 512 --batches 1,4,8 --repeats 5 --switches 20 --compile}
TRAIN_ARGS=${TRAIN_ARGS:---full-sd15 --steps 20}

say "generation: bench_generate.py $GEN_ARGS"
timeout 300 python3 benchmarks/bench_generate.py $GEN_ARGS
echo "exit status $?"

say "training: bench_train.py $TRAIN_ARGS"
timeout 120 python3 benchmarks/bench_train.py $TRAIN_ARGS
echo "exit status $?"

if [ "${PATHS_SD15:-0}" = 1 ]; then
  say "every path at SD 1.5's size: bench_sd15_paths.py --dtype float16 --px 256 --steps 4"
  timeout 300 python3 benchmarks/bench_sd15_paths.py --dtype float16 --px 256 --steps 4
  echo "exit status $?"
fi

say "done"
