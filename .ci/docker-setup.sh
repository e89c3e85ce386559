#!/usr/bin/env bash
# Docker engine and base image for the docker runtime and its tests (tests marked service("docker")).
#
#   1. installs docker.io, debootstrap and docker-compose (Debian's 1.29, the compose deployment's
#      docker-compose.yml and its test) when missing (apt-get update only when something is missing);
#   2. starts dockerd in the background when `docker info` does not answer (log: /tmp/aiot-dockerd.log),
#      and waits up to 60 s for it;
#   3. builds the base image of every generated Dockerfile, aiot-base:bookworm, when it is absent:
#      a Debian bookworm minbase root file system with python3, venv and pip (debootstrap), plus this
#      host's CA bundle (package downloads pass a TLS proxy whose CA is only in it), imported with
#      `docker import`. No image registry is reachable, so nothing is pulled. The root file system is
#      kept as a tarball under /var/cache/aiot, so a second run on the same machine imports it in seconds.
#
# Runs as root; idempotent: on a machine that has it all it only checks. Exits non-zero on failure.
# Environment: AIOT_DOCKER_BASE_IMAGE (default aiot-base:bookworm), AIOT_CACHE_DIR (default /var/cache/aiot),
# AIOT_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

BASE_IMAGE="${AIOT_DOCKER_BASE_IMAGE:-aiot-base:bookworm}"
CACHE_DIR="${AIOT_CACHE_DIR:-/var/cache/aiot}"
MIRROR="${AIOT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
INCLUDE=python3,python3-venv,python3-pip
DOCKERD_LOG=/tmp/aiot-dockerd.log
HOST_CA=/etc/ssl/certs/ca-certificates.crt
# The tarball name carries what went into it: another suite or package list is another tarball.
ROOTFS_TARBALL="$CACHE_DIR/rootfs-$SUITE-minbase-${INCLUDE//,/-}.tar"

now() { date +%s.%N; }
elapsed() { awk -v start="$1" -v end="$(now)" 'BEGIN { printf "%.1f s", end - start }'; }
log() { printf '[docker-setup] %s\n' "$*"; }
die() { printf '[docker-setup] error: %s\n' "$*" >&2; exit 1; }

started=$(now)

# 1. packages ---------------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
  t=$(now)
  log "installing ${missing[*]}"
  # Update the package lists only when an install fails without it (fresh machines have none).
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
      || die "apt-get install ${missing[*]} failed"
  fi
  log "installed ${missing[*]} in $(elapsed "$t")"
fi

# 2. engine -----------------------------------------------------------------------------------
if docker info >/dev/null 2>&1; then
  log "docker engine already answers"
else
  t=$(now)
  log "starting dockerd (log: $DOCKERD_LOG)"
  # Its own session, so it outlives this script and the CI step that ran it.
  setsid dockerd >>"$DOCKERD_LOG" 2>&1 < /dev/null &
  dockerd_pid=$!
  deadline=$((SECONDS + 60))
  until docker info >/dev/null 2>&1; do
    if ! kill -0 "$dockerd_pid" 2>/dev/null; then
      tail -n 20 "$DOCKERD_LOG" >&2 || true
      die "dockerd exited; see $DOCKERD_LOG"
    fi
    if [ $SECONDS -ge $deadline ]; then
      tail -n 20 "$DOCKERD_LOG" >&2 || true
      die "dockerd did not answer within 60 s; see $DOCKERD_LOG"
    fi
    sleep 0.2
  done
  log "dockerd (pid $dockerd_pid) answers after $(elapsed "$t")"
fi

# 3. base image -------------------------------------------------------------------------------
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "base image $BASE_IMAGE already present"
else
  mkdir -p "$CACHE_DIR"
  if [ ! -s "$ROOTFS_TARBALL" ]; then
    t=$(now)
    rootfs=$(mktemp -d /tmp/aiot-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs" "$ROOTFS_TARBALL.partial"' EXIT
    log "debootstrap $SUITE (minbase + $INCLUDE) from $MIRROR"
    debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$rootfs" "$MIRROR" \
      >"$CACHE_DIR/debootstrap.log" 2>&1 || {
      tail -n 20 "$CACHE_DIR/debootstrap.log" >&2
      die "debootstrap failed; see $CACHE_DIR/debootstrap.log"
    }
    # Package lists and downloaded .debs are dead weight in every image built on top.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    [ -f "$HOST_CA" ] || die "$HOST_CA is missing: install ca-certificates"
    mkdir -p "$rootfs/etc/ssl/certs"
    cp "$HOST_CA" "$rootfs/etc/ssl/certs/ca-certificates.crt"
    # Written then renamed: an interrupted run never leaves a truncated tarball to trust.
    tar -C "$rootfs" -cf "$ROOTFS_TARBALL.partial" .
    mv "$ROOTFS_TARBALL.partial" "$ROOTFS_TARBALL"
    rm -rf "$rootfs"
    trap - EXIT
    log "root file system built in $(elapsed "$t") (cached at $ROOTFS_TARBALL)"
  else
    log "root file system from cache: $ROOTFS_TARBALL"
  fi
  t=$(now)
  docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/usr/bin/python3"]' \
    "$ROOTFS_TARBALL" "$BASE_IMAGE" >/dev/null || die "docker import failed"
  docker run --rm --network host "$BASE_IMAGE" python3 -c 'import venv, ensurepip' \
    || die "$BASE_IMAGE has no working python3 with venv"
  log "base image $BASE_IMAGE imported in $(elapsed "$t")"
fi

log "done in $(elapsed "$started")"
