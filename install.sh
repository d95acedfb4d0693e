#!/usr/bin/env bash
# Install everything TalkField needs on a fresh machine (Linux, Python 3.11):
#  1. system packages where the system allows (Debian/Ubuntu apt-get as root): espeak-ng (offline text-to-speech
#     for the Studio) and chromium (the Studio's browser test); skipped with a note elsewhere;
#  2. the Python packages, pinned in pyproject.toml (idempotent: quick when already installed).
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "== apt-get install ${need[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null) \
      || echo "note: could not install ${need[*]}; the Studio says so where it needs them"
  else
    echo "note: not installing ${need[*]} (needs apt-get as root); text-to-speech and the browser test need them"
  fi
fi

echo "== pip install -e .[dev]"
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check -e ".[dev]"
python3 -c "import talkfield, lightning_modules, datamodules, networks, cuda_ext; print('talkfield installed')"
