#!/usr/bin/env bash
# Installs what bench/report.py needs: Debian's python3-matplotlib for the system python
# (/usr/bin/python3; a python3 earlier on PATH, e.g. pyenv's, does not see Debian's packages).
# Run as root on Debian 12 (or with sudo available). Does nothing when matplotlib already imports.
set -euo pipefail
python=/usr/bin/python3
if "$python" -c 'import matplotlib' 2>/dev/null; then
  echo "setup_report: matplotlib already available to $python"
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup_report: run as root (apt-get)" >&2; exit 1; }
  sudo=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends python3 python3-matplotlib
"$python" -c 'import matplotlib; print("setup_report: matplotlib", matplotlib.__version__)'
