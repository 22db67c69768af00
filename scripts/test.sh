#!/bin/sh
# Test dependencies, lint, and the whole test suite (CPU, a few minutes).
# Run inside the environment that holds requirements.txt (see README).
set -e
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements-dev.txt
python -m pip install -q --no-deps -r requirements-nodeps.txt
ruff check .
python -m pytest -q "$@"
