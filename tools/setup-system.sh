#!/usr/bin/env bash
# System packages amadeus needs beyond Python: the fluidsynth library (WAV rendering), venv support and a C
# compiler (amadeus.native's batch-1 kernels);
# with --browser also Debian's chromium, which the studio's browser tests and benchmark drive headless.
# Installs them with apt-get when missing and we may (root, or sudo without a password); otherwise says how.
set -euo pipefail

need=()
ldconfig -p 2>/dev/null | grep -q 'libfluidsynth\.so' || need+=(libfluidsynth3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v cc >/dev/null || command -v gcc >/dev/null || need+=(gcc)  # builds amadeus.native's kernels
if [ "${1:-}" = "--browser" ]; then
  command -v chromium >/dev/null || need+=(chromium)
fi
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  sudo=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo="sudo"
else
  echo "amadeus: missing system packages: ${need[*]}. Install them with: sudo apt-get install ${need[*]}" >&2
  echo "amadeus: continuing; WAV rendering needs libfluidsynth3, the studio's browser tests chromium." >&2
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "amadeus: no apt-get here; install ${need[*]} (the fluidsynth library, chromium) with your package manager." >&2
  exit 0
fi
echo "amadeus: installing ${need[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
