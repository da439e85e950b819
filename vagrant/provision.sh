#!/usr/bin/env bash
# Provisions the Debian 12 VM of vagrant/Vagrantfile (as root, on every `vagrant provision`):
# the packages the build and the tests need, Docker, rustup with a stable toolchain for root,
# then `cargo xtask setup` in the synced checkout (/xlb). Each step is skipped when done.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# Build: C toolchain for build scripts. Tests: iproute2, ethtool, iptables, curl, procps
# (sysctl), Docker and docker-compose v1 (tests/live.rs). Also git and rsync for a checkout.
packages=(
  build-essential pkg-config ca-certificates curl git rsync
  iproute2 ethtool iptables procps util-linux
  docker.io docker-compose
)
missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [[ $status == installed ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi
systemctl enable --now docker

# rustup for root: the tests run as root, and bpf-linker is built into root's cargo home.
if [[ ! -x /root/.cargo/bin/rustup ]]; then
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
    sh -s -- -y --profile minimal --default-toolchain stable
fi
# shellcheck source=/dev/null
. /root/.cargo/env
rustup toolchain install stable --profile minimal
export RUSTUP_TOOLCHAIN=stable
# `sudo -i` shells find cargo too (unless rustup's installer already saw to it).
# shellcheck disable=SC2016 # $HOME expands when .bashrc runs.
grep -qs 'cargo/env' /root/.bashrc || echo '. "$HOME/.cargo/env"' >>/root/.bashrc

cd /xlb
cargo xtask setup
