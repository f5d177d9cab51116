#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: install charrnn with JAX's CUDA wheels, check that JAX sees the
# GPU, print charrnn bench beside PyTorch's cuDNN LSTM and JAX's cuDNN LSTM at the same shapes,
# and run the tests that matter for devices. Every figure and log lands in OUT_DIR.
#
#   bash scripts/gpu-check.sh [OUT_DIR]            # online: fresh venvs with charrnn[cuda,test] and torch
#   CHARRNN_GPU_PYTHON=python3 bash scripts/gpu-check.sh [OUT_DIR]
#       # offline: a Python that already holds JAX with CUDA (and PyTorch); charrnn is copied in beside
#       # it, and if its other dependencies are older than pyproject.toml's bounds, the wheels in
#       # CHARRNN_WHEELS (a folder) are installed first.
#
# A step that fails is reported and the next one still runs; the exit status counts the failures.
# CHARRNN_GPU_CHECK_SKIP="torch cudnn" leaves those steps out. (-P: the checkout's charrnn/ is not the
# installed package, whose charrnn.cli comes from cli/.)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
mkdir -p "$out"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
failures=0
step() {  # step NAME SECONDS COMMAND...: stdout to OUT_DIR/NAME.out, stderr to OUT_DIR/steps.log, a time limit
    local name=$1 seconds=$2 started=$SECONDS
    shift 2
    case " ${CHARRNN_GPU_CHECK_SKIP:-} " in *" $name "*) return ;; esac
    echo "== $name: $*" | tee -a "$out/steps.log" >&2
    timeout "$seconds" "$@" >"$out/$name.out" 2>>"$out/steps.log"
    local code=$?
    echo "$name: exit $code after $((SECONDS - started)) s" | tee -a "$out/summary.txt" >&2
    [ "$code" -eq 0 ] || failures=$((failures + 1))
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$out/summary.txt"
if [ -z "${CHARRNN_GPU_PYTHON:-}" ]; then
    python3.12 -m venv .venv-gpu && .venv-gpu/bin/pip install -q '.[cuda,test]' || exit 1
    python3.12 -m venv .venv-torch && .venv-torch/bin/pip install -q torch numpy || exit 1
    py=.venv-gpu/bin/python torch_py=.venv-torch/bin/python
else
    py=$CHARRNN_GPU_PYTHON torch_py=$CHARRNN_GPU_PYTHON
    site=$(mktemp -d)
    # The dependencies pyproject.toml bounds that this Python lacks or holds older.
    stale=$("$py" - <<'EOF'
import importlib.metadata, re, tomllib
for requirement in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    name, bound = re.fullmatch(r"([\w.-]+)>=([\d.]+)", requirement).groups()
    try:
        held = tuple(int(part) for part in re.findall(r"\d+", importlib.metadata.version(name))[:3])
    except importlib.metadata.PackageNotFoundError:
        held = ()
    if held < tuple(int(part) for part in bound.split(".")):
        print(name)
EOF
)
    echo "older than pyproject.toml's bounds: ${stale:-none}" | tee -a "$out/summary.txt"
    if [ -n "$stale" ]; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" "${CHARRNN_WHEELS:?no wheels given}"/*.whl || exit 1
    fi
    # The install's layout (pyproject.toml's package-dir) without a build: nothing to fetch.
    cp -r charrnn "$site/charrnn" && cp -r cli "$site/charrnn/cli" && cp -r corpora "$site/charrnn/corpora"
    export PYTHONPATH=$site
fi
"$py" -m pip list 2>/dev/null | grep -i -E '^(jax|jaxlib|jax-cuda[0-9]*-(plugin|pjrt)|flax|optax|orbax-checkpoint|typer|rich|torch) ' |
    tee -a "$out/summary.txt"
"$py" -c "import jax; assert jax.default_backend() == 'gpu', jax.devices(); print(jax.devices())" || exit 1
# bf16 is the default precision on a GPU: a run's config says so.
"$py" -c "from charrnn.precision import default_dtype; d = default_dtype(); print('default dtype', d); assert d == 'bfloat16'" ||
    failures=$((failures + 1))

step bench 200 "$py" -P -m charrnn.cli.launch bench --cell lstm,gru --dtype all --json
step torch 60 "$torch_py" benchmarks/torch_speed.py --device cuda
step torch-512 60 "$torch_py" benchmarks/torch_speed.py --device cuda --batch-size 512
step cudnn 120 "$py" benchmarks/cudnn_lstm.py --shapes 64x100,512x100
# A user's first run on the GPU: train on the docs for a minute, then sample the run.
cat README.md docs/*.md >"$out/text.txt"
step train 90 "$py" -P -m charrnn.cli.launch train "$out/text.txt" --steps 300 --eval-every 100 -o "$out/run"
step sample 60 "$py" -P -m charrnn.cli.launch sample "$out/run" -n 300 --temp 0.8 --seed 1
rm -rf "$out/text.txt" "$out/run"
# The device tests: the cells and the recurrence against the textbook, training and resume. Their
# references are float32 loops, so matmuls run at full float32 precision (not TF32). The placement
# tests stay on CPUs: XLA simulates several devices only there.
JAX_DEFAULT_MATMUL_PRECISION=highest step tests 240 "$py" -P -m pytest -q -n0 tests/test_cells.py tests/test_recurrence.py tests/test_train.py

cat "$out/summary.txt" "$out"/*.out
exit "$failures"
