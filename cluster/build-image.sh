#!/usr/bin/env bash
# Build the node and load-balancer images without any image registry, the
# way cluster tests run here:
#
#   1. a Debian bookworm base image made with debootstrap and `docker import`
#      (python3, python3-venv and haproxy from Debian's packages), built once;
#   2. wheels of Nixie and its dependencies, prepared on the host, since
#      containers cannot reach a package index;
#   3. cluster/Dockerfile and cluster/lb.Dockerfile on that base, installing
#      only from those wheels.
#
# The images are tagged nixie:local and nixie-lb:local, the names
# docker-compose.yml uses, so `docker compose up` finds them and builds
# nothing. PYTHON names the interpreter that builds the wheels.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${NIXIE_BASE_IMAGE:-nixie-base:bookworm}
PYTHON=${PYTHON:-python3}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { echo "build-image: $*"; }

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    log "building base image $BASE with debootstrap (a few minutes, once)"
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase \
        --include=python3,python3-venv,haproxy,ca-certificates \
        bookworm "$rootfs" "$MIRROR" >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc "$rootfs"/usr/share/man
    tar -C "$rootfs" -c . | docker import -c 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
fi

# Wheels for the image's Python (Debian bookworm's 3.11), whatever Python the
# host runs: Nixie itself is pure Python; its dependencies are downloaded as
# binary wheels for CPython 3.11 on glibc Linux.
log "building wheels into cluster/wheels"
rm -rf cluster/wheels
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir cluster/wheels .
arch=$(uname -m)
mapfile -t deps < <("$PYTHON" -c '
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
"$PYTHON" -m pip download --quiet --dest cluster/wheels --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    --platform "manylinux_2_28_$arch" --platform "manylinux_2_17_$arch" \
    --platform "manylinux2014_$arch" --platform any "${deps[@]}"

log "building nixie:local and nixie-lb:local"
export DOCKER_BUILDKIT=0
docker build --quiet -f cluster/Dockerfile -t nixie:local \
    --build-arg BASE_IMAGE="$BASE" --build-arg WHEELS=local . >/dev/null
docker build --quiet -f cluster/lb.Dockerfile -t nixie-lb:local \
    --build-arg LB_BASE_IMAGE="$BASE" . >/dev/null
log "done: nixie:local and nixie-lb:local"
