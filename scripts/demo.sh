#!/bin/bash
# Set up (scripts/setup.sh) and run the demo: a node on this machine with
# network namespaces as pods (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m dataplane.demo "$@"
