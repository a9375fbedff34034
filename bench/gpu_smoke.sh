#!/usr/bin/env bash
# GPU smoke test (issue 14): every stage with --backend hf and --backend vllm on a 0.5B VLM built
# from config, DPO with LoRA + bf16 + gradient checkpointing, best-of-N, then one table of
# stage / backend / seconds / check. Needs one CUDA GPU and `pip install rlaifv[vllm]`; never the hub.
#   bench/gpu_smoke.sh [--work runs/gpu_smoke] [--backends hf,vllm] [--dry-run]
# Not part of `make test` (tests/test_gpu_smoke_plan.py checks the --dry-run plan on the CPU).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-$here/../.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python3)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$py" "$here/gpu_smoke.py" "$@"
