#!/bin/bash
# Set up (scripts/setup.sh), run the lint gate (scripts/lint.sh), then the
# whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/lint.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
