#!/usr/bin/env bash
# All GPU checks in one go (about 5-8 minutes on an H100): the CUDA-marked tests, then
# scripts/bench.py for WRN-16-8 and WRN-28-10 at batch 256 (ours vs the usual pipeline).
# Writes benchmarks/gpu_<date>_<card>.txt and .json files (also into $OUT when set).
#
#   bash scripts/gpu_check.sh            # on a machine with a CUDA GPU
# On this project's lent GPU machine (no hydra there), carry wheels built here with
# `make gpu-wheels` (hydra-core, omegaconf, antlr4 into .whl/).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr -c 'A-Za-z0-9\n' '_')
stamp="$(date -u +%Y-%m-%d)_${card:-nogpu}"
dest=benchmarks
mkdir -p "$dest"
log="$dest/gpu_${stamp}.txt"
{
    echo "# gpu_check $(date -u +%FT%TZ)  commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)"
    echo "## CUDA tests"
    timeout 240 $PY -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider
    for model in wrn16_8 wrn28_10; do
        echo "## bench $model batch 256"
        timeout 150 $PY scripts/bench.py --model "$model" --batch 256 --steps 10 --warmup 5 \
            --json "$dest/bench_${stamp}_${model}.json"
    done
    echo "## m-sharpness cost vs m (loop vs vmap), resnet20 batch 256"
    timeout 90 $PY scripts/bench_msharpness.py --model resnet20 --batch 256 --m 1,4,16,64,256 \
        --steps 3 --rounds 3 --json "$dest/bench_${stamp}_msharpness.json"
} 2>&1 | tee "$log"
if [ -n "${OUT:-}" ]; then cp "$dest"/*"${stamp}"* "$OUT"/ 2>/dev/null; fi
