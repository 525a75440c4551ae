#!/usr/bin/env bash
# Installs Berth's test world on Debian 12 (bookworm), idempotently, as root.
#
# Why: the integration tests (crates/testbed) drive real etcd, iproute2, CNI plugins and routing
# daemons; a fresh CI machine has none of them. Safe to run again: installed packages are
# skipped (no apt run at all when nothing is missing), and Debian's own etcd/frr/bird/keepalived
# system services are stopped and disabled so they never hold ports or routes beside the tests.
#
# Environment:
#   BERTH_EXTRA_PKGS  extra Debian packages to install too (space separated), e.g. golang-go
set -euo pipefail

PKGS=(
  etcd-server etcd-client bird2 frr gobgpd containernetworking-plugins keepalived
  iputils-arping iputils-ping tcpdump iproute2 iptables conntrack rsync protobuf-compiler libprotobuf-dev
  # berth-netlink's tests send Neighbor Solicitations with ndisc6 to Berth's NDP responder.
  ndisc6
  # The L2 tests and `cargo xtask bench l2` cut one node off the others on the test bridge
  # with an nftables bridge-family filter (while the client still reaches it).
  nftables
  socat openssl jq
  # Real nodes (crates/lab, `berth lab up`): containerd 1.6 + runc run the pods the kubelet asks for.
  containerd runc
  # Kubernetes control plane for the tests, built from Debian's source by hack/kube-build.sh.
  golang-go make curl golang-github-modern-go-reflect2-dev
  # The fresh-machine check (hack/fresh-check.sh) builds a minimal Debian root.
  mmdebstrap
)
# shellcheck disable=SC2206
EXTRA=(${BERTH_EXTRA_PKGS:-})
PKGS+=("${EXTRA[@]}")

# Debian services that packages above ship (and would start on install).
SERVICES=(etcd frr bird keepalived gobgpd containerd)

log() { printf 'install-deps: %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    log "not root: re-running under sudo"
    exec sudo -n -E bash "$0" "$@"
  fi
  log "must run as root (no sudo found)"
  exit 1
fi

if [[ ! -r /etc/debian_version ]]; then
  log "this script targets Debian 12; /etc/debian_version not found"
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep 'install ok installed' >/dev/null; then
    missing+=("$p")
  fi
done

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if ((${#missing[@]} > 0)); then
  log "installing: ${missing[*]}"
  # Keep package scripts from starting services while we install: invoke-rc.d honours
  # policy-rc.d's exit code 101 ("action forbidden"). Restore whatever was there afterwards.
  policy=/usr/sbin/policy-rc.d
  backup=""
  if [[ -e $policy ]]; then
    backup=$(mktemp /tmp/policy-rc.d.XXXXXX)
    cp -p "$policy" "$backup"
  fi
  restore_policy() {
    if [[ -n $backup ]]; then
      cp -p "$backup" "$policy" && rm -f "$backup"
    else
      rm -f "$policy"
    fi
  }
  trap restore_policy EXIT
  printf '#!/bin/sh\n# written by berth hack/install-deps.sh during package installation\nexit 101\n' >"$policy"
  chmod 0755 "$policy"

  retry apt-get "${APT_OPTS[@]}" update
  # Name every package the archive cannot give, before apt fails on the first one.
  unavailable=()
  for p in "${missing[@]}"; do
    cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
    [[ -n $cand && $cand != "(none)" ]] || unavailable+=("$p")
  done
  if ((${#unavailable[@]} > 0)); then
    log "FAILED: no installation candidate for: ${unavailable[*]}"
    log "the configured archive (/etc/apt/sources.list{,.d/}) must offer Debian 12 (bookworm) main; check it with: apt-cache policy ${unavailable[*]}"
    exit 1
  fi
  if ! retry apt-get "${APT_OPTS[@]}" install --no-install-recommends "${missing[@]}"; then
    log "FAILED: apt-get install --no-install-recommends ${missing[*]}: see apt's output above"
    exit 1
  fi
  # Recommends are not installed: everything the build and tests use is named above, so a package
  # that is still absent here is a failure, not something a later step trips over.
  still=()
  for p in "${missing[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep 'install ok installed' >/dev/null || still+=("$p")
  done
  if ((${#still[@]} > 0)); then
    log "FAILED: not installed after apt-get install: ${still[*]}"
    exit 1
  fi

  restore_policy
  trap - EXIT
else
  log "all ${#PKGS[@]} packages already installed"
fi

# Make sure no Debian system service of these packages runs or starts at boot.
# Nothing is killed by name: test instances of the same programs (other people's tests on this
# machine) must survive. With systemd, units are stopped through their cgroup. Without it, a
# system instance is recognised only by the pidfile or control socket the Debian service uses,
# and stopped through that.
alive_pidfile() { [[ -r $1 ]] && pid=$(cat "$1" 2>/dev/null) && [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; }
if [[ -d /run/systemd/system ]]; then
  for svc in "${SERVICES[@]}"; do
    if systemctl cat "${svc}.service" >/dev/null 2>&1; then
      systemctl disable --now "${svc}.service" >/dev/null 2>&1 || true
      log "systemd: ${svc} stopped and disabled"
    fi
  done
else
  if alive_pidfile /run/etcd.pid; then
    log "stopping Debian's etcd service (pid $(cat /run/etcd.pid))"
    /etc/init.d/etcd stop >/dev/null 2>&1 || log "warning: could not stop etcd"
  fi
  for f in /run/frr/*.pid; do
    if alive_pidfile "$f"; then
      log "stopping Debian's frr service"
      /etc/init.d/frr stop >/dev/null 2>&1 || log "warning: could not stop frr"
      break
    fi
  done
  if [[ -S /run/bird/bird.ctl ]] && command -v birdc >/dev/null 2>&1; then
    if birdc -s /run/bird/bird.ctl show status >/dev/null 2>&1; then
      log "stopping Debian's bird service through /run/bird/bird.ctl"
      birdc -s /run/bird/bird.ctl down >/dev/null 2>&1 || log "warning: could not stop bird"
    fi
  fi
  if alive_pidfile /run/keepalived.pid; then
    log "stopping Debian's keepalived service (pid $(cat /run/keepalived.pid))"
    /etc/init.d/keepalived stop >/dev/null 2>&1 || log "warning: could not stop keepalived"
  fi
fi
if command -v update-rc.d >/dev/null 2>&1; then
  for svc in "${SERVICES[@]}"; do
    [[ -x /etc/init.d/$svc ]] && { update-rc.d "$svc" disable >/dev/null 2>&1 || true; }
  done
fi

# Facts the build and the tests rely on, checked by file so a package that stops shipping one
# (or is only recommended by another) fails here, named, instead of in a later build step.
for f in /usr/bin/etcd /usr/bin/etcdctl /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/bin/protoc \
  /usr/bin/ip /usr/bin/ping /usr/sbin/iptables /usr/bin/socat /usr/bin/mmdebstrap /usr/bin/arping /usr/bin/ndisc6 \
  /usr/bin/containerd /usr/bin/containerd-shim-runc-v2 /usr/bin/ctr /usr/sbin/runc; do
  [[ -x $f ]] || { log "FAILED: $f is missing after the install"; exit 1; }
done
# etcd-client's build compiles etcd's .proto files, which import protobuf's well-known types.
for f in /usr/include/google/protobuf/descriptor.proto; do
  [[ -r $f ]] || { log "FAILED: $f is missing after the install (libprotobuf-dev): building etcd-client would fail"; exit 1; }
done

# Rust tooling: cargo, rustfmt and clippy come with the toolchain (the README's precondition).
if command -v cargo >/dev/null 2>&1; then
  for sub in fmt clippy; do
    cargo "$sub" --version >/dev/null 2>&1 || log "warning: cargo $sub is missing (rustup component add)"
  done
else
  log "warning: cargo not found in PATH; the Rust toolchain must be installed separately"
fi

log "done"
