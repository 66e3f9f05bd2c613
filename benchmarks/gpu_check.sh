#!/bin/bash
# Every GPU benchmark of the studio in one run (< 8 minutes on one H200), same-process ratios:
#   generation (benchmarks/bench_generate.py --sd15 --size 512): service vs plain diffusers at batch 1,
#     seconds per image at batch 1/4/8, fused LoRA vs base, α switch, peak memory, compiled mode;
#   training (benchmarks/bench_train.py --full-sd15): trainer step vs a bare UNet forward+backward, peak memory.
# SD 1.5's architecture is built from its configs with random weights on the GPU: no downloads.
#
# Prepare here (fetches diffusers, transformers, peft, torchsde, sqlalchemy wheels into .whl/):
#   ../shared/gpu/wheels.sh
# then run on the GPU machine from the project's root, carrying .whl:
#   bash benchmarks/gpu_check.sh
# Each part has its own time limit; a part cut short keeps the figures it printed.
# GEN_ARGS / TRAIN_ARGS replace the benchmarks' arguments (e.g. a CPU dry run with the tiny model:
#   GEN_ARGS="--repeats 2 --switches 4" TRAIN_ARGS="--steps 10" bash benchmarks/gpu_check.sh).
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

GEN_ARGS=${GEN_ARGS:---sd15 --size 512 --batches 1,4,8 --repeats 5 --switches 20 --compile}
TRAIN_ARGS=${TRAIN_ARGS:---full-sd15 --steps 20}

say "generation: bench_generate.py $GEN_ARGS"
timeout 300 python3 benchmarks/bench_generate.py $GEN_ARGS
echo "exit status $?"

say "training: bench_train.py $TRAIN_ARGS"
timeout 120 python3 benchmarks/bench_train.py $TRAIN_ARGS
echo "exit status $?"

say "done"
