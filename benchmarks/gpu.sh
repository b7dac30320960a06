#!/usr/bin/env bash
# The GPU benchmarks in one go, each part under its own time limit so that one slow part cannot
# take the others' results with it (every benchmark writes its JSON after each configuration):
#   1. benchmarks/versus_release.py: our phase-1 step against the release-style PyTorch step on
#      this GPU, alternately, in one run (two pairs: what the session's time allows);
#   2. benchmarks/phase1.py: our phase-1 step per config, compile time, time per scan iteration;
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
  timeout 120 "$py" benchmarks/phase1.py --configs=$configs --steps=20 --visual_steps=10 --config.world_model.scan_unroll=5 \
    --out="$out/phase1_gpu_unroll5.json" > /dev/null || echo "phase1.py --config.world_model.scan_unroll=5 failed or timed out ($?)"
  XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL" \
    timeout 120 "$py" benchmarks/phase1.py --configs=$configs --steps=20 --visual_steps=10 \
    --out="$out/phase1_gpu_cmdbuf_while.json" > /dev/null || echo "phase1.py with while-loop command buffers failed or timed out ($?)"
  XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL" \
    timeout 120 "$py" benchmarks/phase1.py --configs=$configs --steps=20 --visual_steps=10 --config.world_model.scan_unroll=5 \
    --out="$out/phase1_gpu_both_variants.json" > /dev/null \
    || echo "phase1.py with both variants failed or timed out ($?)"
  # Where the float32 Visual step's image model (~19 ms of 31 ms in stop 14) spends its time
  # with the matrix-product convolutions (only the cuDNN one was profiled on a GPU so far).
  timeout 90 "$py" benchmarks/profile_phase1.py --config=cheetah_visual --top=40 \
    --out="$out/profile_phase1_visual_gpu.json" > /dev/null || echo "profile_phase1.py failed or timed out ($?)"
  exit 0
fi

timeout "${VERSUS_S:-200}" "$py" benchmarks/versus_release.py --benchmarks=phase1_mdp,phase1_visual --pairs=2 \
  --steps=20 --visual_steps=10 --warmup=3 --visual_warmup=2 --torch_device=cuda \
  --out="$out/versus_release_gpu.json" || echo "versus_release.py failed or timed out ($?)"

timeout "${PHASE1_S:-330}" "$py" benchmarks/phase1.py \
  --configs=cheetah_mdp,walker_mdp,cheetah_visual,walker_visual,cheetah_visual_bf16,cheetah_visual_lax,cheetah_mdp_idm,cheetah_mdp_bf16 \
  --steps=20 --visual_steps=10 --visual_warmup=2 --out="$out/phase1_gpu.json" \
  > /dev/null || echo "phase1.py failed or timed out ($?)"

timeout "${PHASE2_S:-150}" "$py" benchmarks/phase2_eval.py --steps=20 --visual_steps=10 \
  --out="$out/phase2_eval_gpu.json" || echo "phase2_eval.py failed or timed out ($?)"
