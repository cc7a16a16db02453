#!/usr/bin/env bash
# Make a Debian bookworm base image with Python 3.11 without pulling from any registry: debootstrap
# from the Debian mirror apt already uses, then `docker import`. Use it where python:3.11-slim cannot
# be pulled:   scripts/make-base-image.sh [IMAGE]   (default cogkit/base:bookworm; ~6 min on 2 cores)
# then:        cogkit build MODEL --base cogkit/base:bookworm
# Needs root, debootstrap and a running engine (docker, or podman with ENGINE=podman).
set -euo pipefail
image=${1:-cogkit/base:bookworm}
engine=${ENGINE:-docker}
# The mirror apt uses here (first deb line of sources.list(.d)); MIRROR= overrides.
mirror=${MIRROR:-$(grep -hoE '^(URIs: |deb )https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
                   | grep -v security | head -1 | sed -E 's/^(URIs: |deb )//' || true)}
mirror=${mirror:-http://deb.debian.org/debian}
command -v debootstrap >/dev/null || { echo "make-base-image: install debootstrap (apt-get install debootstrap)" >&2; exit 1; }

root=$(mktemp -d /var/tmp/cogkit-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "make-base-image: debootstrap bookworm from $mirror into $root"
# python3-venv brings ensurepip (the image's venv gets pip from it); tini is the image's PID 1;
# ca-certificates so that TLS works inside the image.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,tini \
  bookworm "$root" "$mirror"
# Smaller image: no apt lists, docs or caches.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
tar -C "$root" -c . | "$engine" import \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$image"
echo "make-base-image: $image ready"
