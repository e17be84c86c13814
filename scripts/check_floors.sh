#!/usr/bin/env bash
# The version floors in pyproject.toml are true: install every dependency at the lowest version pyproject.toml allows
# (">=X" becomes "==X") into a scratch virtual environment, then import the package, run the tiny fit once and the
# exactness tests there. A floor that lacks an API we call fails here. Not part of `make test`: it downloads the
# whole stack (a few GB, torch included).
#   make check-floors                 # or: bash scripts/check_floors.sh [venv folder, default .venv-floors]
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${1:-.venv-floors}
PYTHON=${PYTHON:-python3}

"$PYTHON" -m venv --clear "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
floors=$("$VENV/bin/python" - <<'PY'
import re
text = open("pyproject.toml").read()
start = text.index("dependencies = [")
block = text[start : text.index("\n]", start)]
for spec in re.findall(r'^\s*"([^"]+)"', block, flags=re.M):
    print(re.sub(r">=\s*([^,]+)(,.*)?$", r"==\1", spec))
PY
)
echo "check-floors: installing the floors:" $floors
# shellcheck disable=SC2086  # one argument per requirement
"$VENV/bin/python" -m pip install --quiet $floors "pytest>=8" "pytest-timeout>=2.3" "hypothesis>=6.100" "psutil>=5.9"
"$VENV/bin/python" -m pip install --quiet --no-deps -e .
"$VENV/bin/python" -m pip list --format=freeze | grep -iE "^(torch|transformers|peft|lightning|bitsandbytes|accelerate)=="

export USE_HUB_KERNELS=NO  # transformers >= 5.25 otherwise looks for hub kernels (the `kernels` package)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && "$REPO/$VENV/bin/python" -m more_lightning fit --config "$REPO/configs/tiny/fit.yaml" \
    --trainer.max_steps 2 --data.trajectories "$REPO/tests/fixtures/step_grpo_small.jsonl" \
    --model.policy.gradient_checkpointing true)
"$VENV/bin/python" -m pytest -q -x -p no:cacheprovider tests/test_token_stats.py tests/test_tiny_model.py
echo "check-floors: every floor imports, fits and passes the exactness tests"
