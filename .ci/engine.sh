# Sourced by .ci/run: a container engine for the container tests (tests/test_container.py).
#   engine_start: install docker.io (+ debootstrap, docker-registry, skopeo) from Debian if missing,
#                 start dockerd unless one already answers, and pick a base image into
#                 COGKIT_BASE_IMAGE (python:3.11-slim if pullable, else the offline Debian base,
#                 made once and kept in the engine's storage for later runs on this machine).
#   engine_stop:  stop the dockerd this script started (by its pid), nothing else.
# Where nothing can be installed or started, it says so and the container tests skip with that reason.

COGKIT_DOCKERD_PID=""

engine_log() { echo "ci/engine: $*" >&2; }

engine_install() {
  local want=()
  command -v dockerd >/dev/null || want+=(docker.io)
  command -v debootstrap >/dev/null || want+=(debootstrap)
  command -v docker-registry >/dev/null || want+=(docker-registry)
  command -v skopeo >/dev/null || want+=(skopeo)
  [ ${#want[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    engine_log "cannot install ${want[*]} (needs root and apt-get)"
    return 1
  fi
  engine_log "installing ${want[*]} from Debian"
  local lock=(); command -v flock >/dev/null && lock=(flock /tmp/apt.lock)
  "${lock[@]}" apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive "${lock[@]}" apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
}

engine_start() {
  if docker info >/dev/null 2>&1; then
    engine_log "using the Docker engine that already runs"
  else
    engine_install || true
    if ! command -v dockerd >/dev/null; then
      engine_log "no dockerd: the container tests will skip"
      return 0
    fi
    local log=${TMPDIR:-/tmp}/cogkit-ci-dockerd.log
    dockerd >"$log" 2>&1 &
    COGKIT_DOCKERD_PID=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    if ! docker info >/dev/null 2>&1; then
      engine_log "dockerd did not start (log: $log); the container tests will skip"
      tail -20 "$log" >&2 || true
      return 0
    fi
    engine_log "started dockerd (pid $COGKIT_DOCKERD_PID)"
  fi
  if [ -z "${COGKIT_BASE_IMAGE:-}" ]; then
    if docker image inspect python:3.11-slim >/dev/null 2>&1 || timeout 120 docker pull -q python:3.11-slim >/dev/null 2>&1; then
      export COGKIT_BASE_IMAGE=python:3.11-slim
    else
      if ! docker image inspect cogkit/base:bookworm >/dev/null 2>&1; then
        engine_log "no registry: making the Debian base image offline (a few minutes, once per machine)"
        bash scripts/make-base-image.sh cogkit/base:bookworm >/dev/null
      fi
      export COGKIT_BASE_IMAGE=cogkit/base:bookworm
    fi
  fi
  engine_log "base image: $COGKIT_BASE_IMAGE"
}

engine_stop() {
  [ -n "$COGKIT_DOCKERD_PID" ] || return 0
  kill "$COGKIT_DOCKERD_PID" 2>/dev/null || true
  for _ in $(seq 30); do kill -0 "$COGKIT_DOCKERD_PID" 2>/dev/null || break; sleep 1; done
  engine_log "stopped dockerd"
}
