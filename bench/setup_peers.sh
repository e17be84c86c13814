#!/usr/bin/env bash
# The bench-only environment: .venv-bench sees everything in .venv (a .pth file) and adds the peers we compare
# against (TRL's GRPOTrainer), which are not dependencies of more_lightning. Idempotent; fast once done.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PEERS="trl==1.16.0 py-spy==0.4.1"
if [ -f .venv-bench/.done ] && [ "$(cat .venv-bench/.done)" = "$PEERS" ]; then exit 0; fi
python3 -m venv .venv-bench
base=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
bench=$(.venv-bench/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "import site; site.addsitedir(\"$base\")" > "$bench/more_lightning_base.pth"  # also runs .venv's .pth files (the editable install)
.venv-bench/bin/pip install -q $PEERS
echo "$PEERS" > .venv-bench/.done
