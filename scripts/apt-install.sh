#!/usr/bin/env bash
# Installs Debian packages, through sudo when not root: scripts/apt-install.sh PACKAGE...
# (no arguments: nothing to do). Used by build-deps.sh and setup.sh.
set -euo pipefail
(($#)) || exit 0
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    SUDO="sudo"
fi
echo "installing Debian packages: $*"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "$@" | sort -u) >/dev/null
