#!/usr/bin/env bash
# The GPU benchmarks in one go, each part under its own time limit so that one slow part cannot
# take the others' results with it (every benchmark writes its JSON after each configuration):
#   1. benchmarks/torch_release_style.py: the release-shaped PyTorch phase-1 step on this GPU;
#   2. benchmarks/phase1.py: our phase-1 step, speedups against (1), time per scan iteration;
#   3. benchmarks/phase2_eval.py: the phase-2 step and evaluation episodes/s.
# Usage: bash benchmarks/gpu.sh [OUT_DIR]   (default benchmarks/results)
#        bash benchmarks/gpu.sh OUT_DIR variants
# The second form times candidate speed settings instead (about 9 minutes): the filtering scans
# unrolled 5 steps per iteration (config.world_model.scan_unroll) and XLA running the scans'
# while loops as CUDA graphs, each on MDP and on the bfloat16 Visual model, then both together;
# then it profiles the float32 Visual step. A session's device time (15 min)
# fits one of the two forms: run the variants first.
set -u
out=${1:-benchmarks/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu_info.txt"
"$py" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" \
  | tee -a "$out/gpu_info.txt"

if [ "${2:-}" = variants ]; then
  configs=cheetah_mdp,cheetah_visual_bf16
  timeout 120 "$py" benchmarks/phase1.py --configs=$configs --steps=20 --visual_steps=10 --set=scan_unroll=5 \
    --out="$out/phase1_gpu_unroll5.json" > /dev/null || echo "phase1.py --set=scan_unroll=5 failed or timed out ($?)"
  XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL" \
    timeout 120 "$py" benchmarks/phase1.py --configs=$configs --steps=20 --visual_steps=10 \
    --out="$out/phase1_gpu_cmdbuf_while.json" > /dev/null || echo "phase1.py with while-loop command buffers failed or timed out ($?)"
  XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL" \
    timeout 120 "$py" benchmarks/phase1.py --configs=$configs --steps=20 --visual_steps=10 --set=scan_unroll=5 \
    --out="$out/phase1_gpu_both_variants.json" > /dev/null \
    || echo "phase1.py with both variants failed or timed out ($?)"
  # Where the float32 Visual step's image model (~19 ms of 31 ms in stop 14) spends its time
  # with the matrix-product convolutions (only the cuDNN one was profiled on a GPU so far).
  timeout 90 "$py" benchmarks/profile_phase1.py --config=cheetah_visual --top=40 \
    --out="$out/profile_phase1_visual_gpu.json" > /dev/null || echo "profile_phase1.py failed or timed out ($?)"
  exit 0
fi

timeout 100 "$py" benchmarks/torch_release_style.py --device=cuda --steps=20 --warmup=3 \
  --out="$out/torch_release_style_gpu.json" || echo "torch_release_style.py failed or timed out ($?)"
torch_json=()
[ -f "$out/torch_release_style_gpu.json" ] && torch_json=(--torch_json="$out/torch_release_style_gpu.json")

timeout "${PHASE1_S:-330}" "$py" benchmarks/phase1.py \
  --configs=cheetah_mdp,walker_mdp,cheetah_visual,walker_visual,cheetah_visual_bf16,cheetah_visual_lax,cheetah_mdp_idm,cheetah_mdp_bf16 \
  --steps=20 --visual_steps=10 --visual_warmup=2 "${torch_json[@]}" --out="$out/phase1_gpu.json" \
  > /dev/null || echo "phase1.py failed or timed out ($?)"

timeout "${PHASE2_S:-150}" "$py" benchmarks/phase2_eval.py --steps=20 --visual_steps=10 \
  --out="$out/phase2_eval_gpu.json" || echo "phase2_eval.py failed or timed out ($?)"
