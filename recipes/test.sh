#!/usr/bin/env bash
# Install what is needed (recipes/setup.sh), then run the whole test suite on CPU.
# Extra arguments go to pytest, e.g. `bash recipes/test.sh -k flows`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash recipes/setup.sh
exec .venv/bin/python -m pytest "$@"
