#!/usr/bin/env bash
# GPU readiness check (issue 14), in one go, within about 8 minutes on a CUDA machine:
#   1. a Python whose PyTorch sees CUDA (.venv, else python3; else `bash scripts/setup` makes .venv),
#   2. the CUDA-marked tests: pytest -m cuda tests/test_cuda.py,
#   3. python bench/gpu_check.py: gpt2-124m training tokens/s and MFU, decode tokens/s against transformers.
# Results go to OUT (default runs/gpu-check): pytest.log, gpu_check.log, gpu_check.json.
#
#   bash bench/gpu_check.sh                          # on a CUDA machine
#   bash bench/gpu_check.sh --out /tmp/x --write-docs
#   bash bench/gpu_check.sh --dry-run                # the same sequence on the CPU, tiny model
#
# Options: --out DIR, --no-setup (never run scripts/setup); every other argument goes to gpu_check.py
# (--dry-run, --write-docs, --no-compile, --steps N, --batch N, --peak-tflops X, ...).
# Exit status: 0 all passed; 1 a test or a phase of the check failed; 2 nothing could run (no GPU).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT_DIR="$ROOT/runs/gpu-check"
DRY_RUN=0
SETUP=1
CHECK_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT_DIR="$2"; shift 2 ;;
        --out=*) OUT_DIR="${1#--out=}"; shift ;;
        --no-setup) SETUP=0; shift ;;
        --dry-run) DRY_RUN=1; CHECK_ARGS+=("$1"); shift ;;
        *) CHECK_ARGS+=("$1"); shift ;;
    esac
done
START=$(date +%s)
elapsed() { echo "$(( $(date +%s) - START )) s"; }
fail() { echo "gpu_check.sh: $*" >&2; exit 2; }

if [ "$DRY_RUN" = 0 ] && ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -e /dev/nvidia0 ]; then
    fail "no NVIDIA GPU here (no nvidia-smi, no /dev/nvidia0); run this on a CUDA machine, or pass --dry-run for the CPU rehearsal"
fi

# The first Python that imports torch and (unless --dry-run) sees CUDA: its path, then its torch.
pick_python() {
    local candidate info
    for candidate in ${PYTHON:-} "$ROOT/.venv/bin/python" python3; do
        [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 || continue
        if info="$("$candidate" -c "import sys, torch
print('torch', torch.__version__, 'CUDA', torch.version.cuda)
sys.exit(0 if $DRY_RUN or torch.cuda.is_available() else 1)" 2>/dev/null)"; then
            printf '%s\n%s\n' "$candidate" "$info"
            return 0
        fi
    done
    return 1
}

describe_pythons() {
    local candidate
    for candidate in ${PYTHON:-} "$ROOT/.venv/bin/python" python3; do
        [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 || continue
        echo "  $candidate: $("$candidate" -c 'import torch; print("torch", torch.__version__, "CUDA build", torch.version.cuda, "sees CUDA", torch.cuda.is_available())' 2>&1 | tail -1)"
    done
}

PICKED="$(pick_python)"
if [ -z "$PICKED" ] && [ "$SETUP" = 1 ] && [ -f scripts/setup ]; then
    echo "== no Python with a CUDA PyTorch found; bash scripts/setup ($(elapsed))"
    timeout 300 bash scripts/setup || echo "gpu_check.sh: scripts/setup failed (offline machine?)" >&2
    PICKED="$(pick_python)"
fi
PY="$(printf '%s\n' "$PICKED" | sed -n 1p)"
TORCH_INFO="$(printf '%s\n' "$PICKED" | sed -n 2p)"
if [ -z "$PY" ]; then
    fail "no Python here has a PyTorch that sees CUDA:
$(describe_pythons)
install the CUDA build of torch (pinned in constraints.txt) or set PYTHON=/path/to/python"
fi
# slmkit from this tree, installed or not (a machine's image may hold every dependency but not slmkit)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"
echo "== python: $PY ($TORCH_INFO); results in $OUT_DIR ($(elapsed))"
if [ "$DRY_RUN" = 0 ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$OUT_DIR/nvidia-smi.txt"
fi

echo "== CUDA-marked tests: pytest -m cuda tests/test_cuda.py ($(elapsed))"
timeout 300 "$PY" -m pytest -p no:cacheprovider -m cuda -rs tests/test_cuda.py 2>&1 | tee "$OUT_DIR/pytest.log"
TESTS=${PIPESTATUS[0]}

echo "== bench/gpu_check.py ${CHECK_ARGS[*]:-} ($(elapsed))"
timeout 400 "$PY" bench/gpu_check.py --json "$OUT_DIR/gpu_check.json" --pytest-log "$OUT_DIR/pytest.log" \
    ${CHECK_ARGS[@]+"${CHECK_ARGS[@]}"} 2>&1 | tee "$OUT_DIR/gpu_check.log"
CHECK=${PIPESTATUS[0]}

echo "== done in $(elapsed): CUDA tests exit $TESTS, gpu_check.py exit $CHECK; results in $OUT_DIR"
[ "$CHECK" = 2 ] && exit 2
[ "$TESTS" = 0 ] && [ "$CHECK" = 0 ] && exit 0
exit 1
