#!/usr/bin/env bash
# Debian packages the clinical tests use: a real PACS (Orthanc with its DICOMweb plugin) for the DICOMweb round trip,
# dicom3tools (dciodvfy) to validate the SEG/RTSTRUCT objects, plastimatch to rasterise the RTSTRUCT back.
# Needs root (or passwordless sudo). Without them the tests that need them skip, except under CI=true, where they fail.
set -euo pipefail
packages=(orthanc orthanc-dicomweb dicom3tools plastimatch)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then sudo=(); elif sudo -n true 2>/dev/null; then sudo=(sudo -n); else
  echo "tests/system_packages.sh: not root: install ${missing[*]} with apt-get" >&2; exit 1; fi
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
