#!/bin/bash
# Every GPU-specific check and timing in one go (docs/log.md, "GPU"): bf16 + eager and compiled
# steps of the real presets at their published sizes (random weights, nothing downloaded), their
# tiny twins, and the small preset trained on the GPU; each step has a time limit (~13 min at
# most). Not yet run as one script; its bench.py commands were. Usage, from the repo's top level:
# bash docs/bench_gpu.sh
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
O=${OUT:-out/bench_gpu}; mkdir -p $O
exec > >(tee -a $O/bench_gpu.log) 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, diffusers, transformers as t; print(torch.__version__, diffusers.__version__, t.__version__)"
run() {  # run LIMIT_S NAME CMD...: prints everything but tracebacks' frames, then rc and wall time
  local t=$1 name=$2 s=$SECONDS; shift 2; echo "=== $name (limit ${t}s)"
  timeout $t "$@" 2>&1 | grep -v -E "Loading weights|^  File|^    |kept in float32"
  echo "[$name] rc ${PIPESTATUS[0]}, wall $((SECONDS - s)) s"
}
B="python bench.py --device cuda"
run 90  base_tiny     $B --iters 5 --config base --tiny=True
run 120 base          $B --iters 3 --config base --random_weights=True
run 120 large         $B --iters 3 --config large --random_weights=True
run 60  small         $B --iters 10 --config small
run 150 train_small   python train.py --config small --compile=false --out_dir=$O/small
run 90  base_tiny_compiled $B --iters 5 --config base --tiny=True --compile
run 150 base_compiled $B --iters 3 --config base --random_weights=True --compile
echo "total ${SECONDS}s"
