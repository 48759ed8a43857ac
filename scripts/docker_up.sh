#!/usr/bin/env bash
# Make a Docker daemon answer here and build the docker sandbox's test image, for CI and for a
# developer about to run tests/infrastructure/test_docker_*.py. Installs docker.io with apt-get
# when docker is missing (only as root, only where apt-get exists), starts dockerd in the
# background when nothing answers (its log: /tmp/dockerd.log), waits up to 60 s for it.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dockerd >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "docker is missing; installing docker.io"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io
    else
        echo "docker is missing and cannot be installed here (needs root and apt-get)" >&2
        exit 1
    fi
fi

if ! docker info >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "no Docker daemon answers, and only root can start one here" >&2
        exit 1
    fi
    echo "starting dockerd"
    # setsid: the daemon outlives this script and its terminal.
    setsid dockerd >/tmp/dockerd.log 2>&1 </dev/null &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    if ! docker info >/dev/null 2>&1; then
        echo "dockerd did not answer within 60 s; see /tmp/dockerd.log" >&2
        tail -20 /tmp/dockerd.log >&2 || true
        exit 1
    fi
fi

bash scripts/docker_test_image.sh
