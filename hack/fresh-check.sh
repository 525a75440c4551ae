#!/usr/bin/env bash
# The fresh-machine check: the README's quick start on a minimal Debian 12 root, every run.
#
# Why: CI runs on a developer's machine, where a package installed by hand long ago hides a gap
# in hack/install-deps.sh. This builds a minimal Debian 12 root from Debian's archive (mmdebstrap
# --variant=minbase plus build-essential, the README's precondition: Rust with its C linker) and
# gives it only what the README says a user has, plus what the machine's base image brings:
#   - the Rust toolchain, bind-mounted read-only ($RUSTUP_HOME and $CARGO_HOME/bin);
#   - a copy of the checkout (tracked and untracked, not ignored, files: what `git status` shows);
#   - the base image's CA bundle (/etc/ssl/certs, read-only), resolv.conf, hosts, the apt
#     settings no package owns, and the TLS/proxy environment, through which registries are reached.
# Inside it runs, as the README says:
#   1. `cargo xtask demo`: install-deps, the release build, the demo end to end;
#   2. `cargo xtask test --install-only`: the test command's install step (install-deps again,
#      which must now find everything, and the Kubernetes build's tools and source package). When
#      the host's Kubernetes cache is incomplete it builds it there (`--kube-build`), and the
#      binaries are copied to the host's cache, so a cold CI run builds Kubernetes once.
# The root runs in private mount and PID namespaces: when the check ends, however it ends, every
# mount inside it and every process it started is gone with them; the root's files are removed.
# A failing step prints the command, its exit status and the end of its output, and fails.
#
# The root's tarball is cached under ~/.cache/berth/fresh-root, keyed by date, package list and
# the archive's sources (a new one each day; older ones are removed).
#
# Environment:
#   BERTH_FRESH_KEEP=1       keep the root's directory afterwards (for debugging)
#   BERTH_FRESH_STEPS        steps to run (default "demo test-install"; "ci" runs the whole
#                            .ci/run in the root, to measure a cold CI run; "shell" opens a shell)
#   BERTH_KUBE_CACHE         the host's Kubernetes cache (default ~/.cache/berth/kubernetes-1.20.2)
set -euo pipefail

log() { printf 'fresh-check: %s\n' "$*" >&2; }
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${BERTH_CACHE_DIR:-$HOME/.cache/berth}/fresh-root
KUBE_CACHE=${BERTH_KUBE_CACHE:-$HOME/.cache/berth/kubernetes-1.20.2}
SUITE=bookworm
# The README's precondition, and nothing else.
PRECONDITION=(build-essential)
STEPS=${BERTH_FRESH_STEPS:-demo test-install}

[[ $(id -u) -eq 0 ]] || { log "must run as root (it builds a root and mounts /proc, /sys, /dev, /run in it)"; exit 1; }
for t in mmdebstrap unshare chroot git tar; do
  command -v "$t" >/dev/null 2>&1 || { log "missing $t: run hack/install-deps.sh (it installs mmdebstrap)"; exit 1; }
done

# --- the inner stage: runs as PID 1 of its own PID namespace, in a private mount namespace -------
if [[ ${1:-} == --inside ]]; then
  R=$2
  shift 2
  toolchain_home=${RUSTUP_HOME:-$HOME/.rustup}
  cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
  # The root must be a mount point of its own: `ip netns` and `ip -n` make `/` a slave mount.
  mount --bind "$R" "$R"
  mount -t proc proc "$R/proc"
  mount -t sysfs sysfs "$R/sys"
  # The whole CI run starts labs of real nodes, which need the machine's cgroup hierarchies
  # (a booted machine has them mounted; a fresh sysfs has none).
  if [[ " $STEPS " == *" ci "* && -d /sys/fs/cgroup ]]; then
    mount --rbind /sys/fs/cgroup "$R/sys/fs/cgroup"
  fi
  mount --rbind /dev "$R/dev"
  mount -t tmpfs -o mode=0755 tmpfs "$R/run"
  mkdir -p "$R/root/.rustup" "$R/root/.cargo/bin" "$R/etc/ssl/certs"
  mount --bind "$toolchain_home" "$R/root/.rustup"
  mount -o remount,bind,ro "$R/root/.rustup"
  mount --bind "$cargo_bin" "$R/root/.cargo/bin"
  mount -o remount,bind,ro "$R/root/.cargo/bin"
  mount --bind /etc/ssl/certs "$R/etc/ssl/certs"
  mount -o remount,bind,ro "$R/etc/ssl/certs"
  # What a user's environment has: the base image's TLS and proxy settings, nothing of ours.
  envs=(HOME=/root TERM=dumb LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
  for v in SSL_CERT_FILE SSL_CERT_DIR CURL_CA_BUNDLE REQUESTS_CA_BUNDLE GIT_SSL_CAINFO \
    http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY ALL_PROXY all_proxy \
    CARGO_HTTP_CAINFO CARGO_HTTP_PROXY RUSTUP_AUTO_INSTALL CI; do
    [[ -n ${!v:-} ]] && envs+=("$v=${!v}")
  done
  run_step() {
    local name=$1
    shift
    local t0 rc=0 out=$R/var/log/fresh-$name.log
    log "step $name: $* (in the fresh root)"
    t0=$(date +%s)
    chroot "$R" /usr/bin/env -i "${envs[@]}" bash -c 'cd /src/berth && exec "$@"' bash "$@" >"$out" 2>&1 </dev/null || rc=$?
    if ((rc != 0)); then
      log "FAILED: step $name: '$*' exited $rc after $(($(date +%s) - t0))s in the fresh root; the end of its output:"
      grep -v -E '^ +(Compiling|Downloaded|Downloading|Checking) ' "$out" | tail -n 80 >&2
      exit "$rc"
    fi
    log "step $name passed in $(($(date +%s) - t0))s"
    printf '%s %s\n' "$name" "$(($(date +%s) - t0))" >>"$R/var/log/fresh-times"
  }
  for s in $STEPS; do
    case $s in
      demo) run_step demo cargo xtask demo ;;
      test-install)
        if [[ -f $R/.kube-build ]]; then
          run_step test-install cargo xtask test --install-only --kube-build
        else
          run_step test-install cargo xtask test --install-only
        fi
        ;;
      # The whole CI run on a machine that has never run it (cold apt, cargo and Kubernetes
      # caches), to measure it; the nested fresh-machine check is skipped (it is this one).
      ci) envs+=(BERTH_FRESH_CHECK=0) && run_step ci bash .ci/run ;;
      shell) chroot "$R" /usr/bin/env -i "${envs[@]}" bash -c 'cd /src/berth && exec bash -i' ;;
      *) log "unknown step $s"; exit 2 ;;
    esac
  done
  exit 0
fi

# --- the outer stage -------------------------------------------------------------------------------
# The archive as the base image configures it: its Debian entries, handed to mmdebstrap as is.
sources() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    grep -E '^URIs:.*debian' "$f" >/dev/null && grep -E '^Types:.*\bdeb\b' "$f" >/dev/null && cat "$f" && echo
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r $f ]] && grep -E "^deb .*debian.* $SUITE" "$f" || true
  done
}
src=$(sources)
[[ -n $src ]] || { log "no Debian $SUITE entry found in /etc/apt/sources.list{,.d/}"; exit 1; }
# apt settings of the base image (files in apt.conf.d that no package owns), e.g. a proxy.
aptopts=()
for f in /etc/apt/apt.conf.d/*; do
  [[ -f $f ]] || continue
  dpkg -S "$f" >/dev/null 2>&1 && continue
  aptopts+=(--aptopt="$f")
done

key=$(printf '%s\n' "$(date -u +%F)" "${PRECONDITION[*]}" "$src" | sha256sum | cut -c1-16)
tarball=$CACHE/$SUITE-minbase-$key.tar
mkdir -p "$CACHE"
t_start=$(date +%s)
if [[ ! -s $tarball ]]; then
  log "building a minimal $SUITE root (mmdebstrap --variant=minbase --include=${PRECONDITION[*]})"
  rm -rf "$CACHE"/*.tar.part
  if ! printf '%s\n' "$src" | retry mmdebstrap --quiet --format=tar --variant=minbase --include="$(
    IFS=,
    echo "${PRECONDITION[*]}"
  )" "${aptopts[@]}" "$SUITE" "$tarball.part" - >"$CACHE/mmdebstrap.log" 2>&1; then
    log "FAILED: mmdebstrap; the end of its output:"
    tail -n 60 "$CACHE/mmdebstrap.log" >&2
    exit 1
  fi
  mv "$tarball.part" "$tarball"
  find "$CACHE" -maxdepth 1 -name '*.tar' ! -name "$(basename "$tarball")" -delete
  log "root tarball built in $(($(date +%s) - t_start))s: $tarball"
else
  log "cached root tarball: $tarball"
fi

R=$(mktemp -d /var/tmp/berth-fresh.XXXXXX)
cleanup() {
  local rc=$?
  # The namespaces are gone by now, and with them every mount and process of the check; make
  # sure of it before removing anything, so a leftover bind mount can never lead rm into the
  # toolchain or the checkout.
  if grep -F " $R/" /proc/self/mountinfo >/dev/null 2>&1 || grep -F " $R " /proc/self/mountinfo >/dev/null 2>&1; then
    log "mounts under $R remain; not removing it"
  elif [[ ${BERTH_FRESH_KEEP:-0} == 1 ]]; then
    log "kept the root at $R"
  else
    rm -rf --one-file-system "$R"
  fi
  exit "$rc"
}
trap cleanup EXIT
tar -xf "$tarball" -C "$R"
for f in /etc/resolv.conf /etc/hosts; do
  [[ -r $f ]] && cp -L "$f" "$R$f"
done
mkdir -p "$R/src/berth"
# The checkout as `git status` shows it: tracked files and new files that are not ignored.
(cd "$here" && git ls-files -z --cached --others --exclude-standard |
  tar --null --no-recursion --ignore-failed-read -T - -cf -) | tar -xf - -C "$R/src/berth"
# The Kubernetes binaries are built in the root when the host has none yet, then shared.
if [[ ! -f $KUBE_CACHE/.build-complete ]] && [[ " $STEPS " == *" test-install "* ]]; then
  touch "$R/.kube-build"
fi
log "root ready at $R in $(($(date +%s) - t_start))s"

# --kill-child: if unshare dies (this script killed, CI's timeout), the root's PID 1 is killed,
# and with it every process in the namespace; a TERM or INT here is passed on the same way.
rc=0
unshare --mount --pid --fork --kill-child --propagation private -- bash "$here/hack/fresh-check.sh" --inside "$R" &
inner=$!
trap 'kill -KILL "$inner" 2>/dev/null' TERM INT
wait "$inner" || rc=$?
trap - TERM INT
# A signal interrupts `wait` before the namespace is gone: wait for it before cleaning up.
while kill -0 "$inner" 2>/dev/null; do wait "$inner" || true; done
if ((rc != 0)); then
  log "the fresh-machine check failed (exit $rc)"
  exit "$rc"
fi
if [[ -f $R/.kube-build ]]; then
  built=$R/root/.cache/berth/kubernetes-1.20.2
  [[ -f $built/.build-complete ]] || { log "the root's Kubernetes build left no $built/.build-complete"; exit 1; }
  mkdir -p "$KUBE_CACHE"
  cp -a "$built/bin" "$KUBE_CACHE/"
  cp -a "$built/.build-complete" "$KUBE_CACHE/"
  log "Kubernetes binaries built in the fresh root copied to $KUBE_CACHE"
fi
log "passed in $(($(date +%s) - t_start))s: $(tr '\n' ' ' <"$R/var/log/fresh-times")"
