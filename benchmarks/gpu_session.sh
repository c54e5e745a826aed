#!/usr/bin/env bash
# The GPU checks behind docs/reproducing.md's cost table, in one call on one GPU (about 9 minutes
# on an H100 or H200), run from the repository root:
#
#   1. benchmarks/paper_cost.py on configs/paper.yaml (ViT-B/32 at 224 px): every GPU stage timed in
#      fp32, TF32 and bf16, the inversion pass also with compile, CUDA graphs and both; the table
#      of GPU-hours stage by stage (measured, FLOP-derived, fraction of the dense peak);
#   2. benchmarks/gpu_inversion.py: STIR of briefly trained ViT-B/32s in TF32, bf16 and with the
#      kernels, against fp32 and against another inversion seed.
#
#   benchmarks/gpu_session.sh [OUT]             # OUT: where the files go (default results/gpu_session)
#   SMALL=1 benchmarks/gpu_session.sh [OUT]     # the same at tiny sizes on the CPU (what the tests run)
#
# Files: paper_cost.json (the measurements; `paper_cost.py --config C --from-json` prices any config of
# the same model from it without a GPU), paper_cost_table.json, paper_cost_table.md (the docs' table),
# gpu_inversion.json and the two logs, environment.txt. Each part has a time limit and writes as it
# goes, so what was measured comes back even when a limit is hit.
#
# Needs torch, timm, numpy, scipy, h5py, xarray, scikit-learn, PyYAML and jsonschema: a GPU machine
# without network that lacks jsonschema can take it as wheels carried in .whl/ (docs/reproducing.md).
set -uo pipefail
out=${1:-${OUT:-results/gpu_session}}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

if [[ -n ${SMALL:-} ]]; then
    config=configs/smoke.yaml
    cost=(--device cpu --threads 1 --reps 2 --modes fp32 bf16 --variants eager cuda_graphs)
    agreement=(--small --device cpu --threads 1 --skip-compile --skip-throughput --train-steps 20)
    cost_limit=300 agreement_limit=200
else
    config=configs/paper.yaml
    cost=(--budget-s 270)          # measurements past this are skipped and listed, the rest kept
    agreement=(--train-steps 300 --skip-throughput)
    cost_limit=390 agreement_limit=170
fi

{
    date -u
    $py -c 'import sys, torch, timm; print(sys.version.split()[0], "torch", torch.__version__, "timm", timm.__version__,
torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")'
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
} >"$out/environment.txt" 2>&1
$py -c 'import jsonschema, yaml, h5py, xarray, scipy, sklearn' || {
    echo "missing Python packages (above): see docs/reproducing.md, 'Measuring the costs'" >&2
    exit 3
}

status=0
timeout "$cost_limit" $py benchmarks/paper_cost.py --config "$config" --out "$out" "${cost[@]}" 2>&1 |
    tee "$out/paper_cost.log" || status=1
if [[ -f $out/paper_cost.json ]]; then
    $py benchmarks/paper_cost.py --config "$config" --from-json "$out/paper_cost.json" --markdown \
        >"$out/paper_cost_table.md" 2>&1 || status=1
fi
timeout "$agreement_limit" $py benchmarks/gpu_inversion.py --out "$out" "${agreement[@]}" 2>&1 |
    tee "$out/gpu_inversion.log" || status=1
exit $status
