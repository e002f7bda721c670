#!/bin/bash
# The lint and format gate the test command runs first: ruff (lint and
# format check) for Python, clang-format for C (style in .clang-format).
# Needs what scripts/setup.sh installs. Fix what it reports with
#   .venv/bin/ruff format . && .venv/bin/ruff check --fix .
#   .venv/bin/clang-format -i csrc/*.[ch] bench/*.c
# (clang-format 14.0.6 from PyPI, pinned as ruff is: another version
# formats some lines otherwise)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
echo "lint: ruff check"
"$PY" -m ruff check .
echo "lint: ruff format --check"
"$PY" -m ruff format --check .
echo "lint: clang-format"
CF=${CLANG_FORMAT:-$(dirname "$PY")/clang-format}  # the pinned one, beside the venv's python
[ -x "$CF" ] || { echo "lint: no $CF (scripts/setup.sh installs it; or set CLANG_FORMAT)" >&2; exit 1; }
"$CF" --dry-run --Werror csrc/*.[ch] bench/*.c
echo "lint: clean"
