#!/usr/bin/env bash
# The one place that installs requirements-nodeps.txt; Makefile, binder/postBuild and the
# notebooks' Colab cell all call this script. Usage: scripts/install-nodeps.sh [PYTHON]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"${1:-python3}" -m pip install --quiet --no-deps -r "$root/requirements-nodeps.txt"
