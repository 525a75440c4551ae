#!/usr/bin/env bash
# Builds the Kubernetes v1.20.2 components the tests run (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, and kubectl for `apply -k`) from Debian's `kubernetes` source package and caches them,
# idempotently, as root.
#
# Why: the integration tests need a real Kubernetes control plane, but no registry the test
# machines may reach ships kube-apiserver. Debian bookworm's source package `kubernetes`
# (1.20.5+really1.20.2) holds the whole upstream tree with its vendor/ directory, and Debian's
# golang-go builds it with nothing fetched from the network (GOPROXY=off, vendored modules).
# The cold build takes ~7-9 minutes on 2 cores, so the result is cached and this script returns
# at once when the cache is complete (the stamp file is written only after every binary is in).
#
# Environment:
#   BERTH_KUBE_CACHE   cache directory (default ~/.cache/berth/kubernetes-1.20.2); binaries go
#                      to $BERTH_KUBE_CACHE/bin
#   BERTH_KUBE_WHAT    extra targets to build besides these, e.g. "cmd/kubeadm"
#   BERTH_KUBE_KEEP    set to 1 to keep the build tree (for debugging)
#
# `--prepare` does everything but the compilation: the build tools, the deb-src entry and the
# source package's download, and checks that the tools run. The fresh-machine check uses it on
# runs where the Kubernetes cache is warm, so a missing package still shows.
set -euo pipefail
PREPARE=0
[[ ${1:-} == --prepare ]] && PREPARE=1

VERSION=1.20.2
CACHE=${BERTH_KUBE_CACHE:-$HOME/.cache/berth/kubernetes-$VERSION}
BIN=$CACHE/bin
STAMP=$CACHE/.build-complete
REQUIRED=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
# shellcheck disable=SC2206
WHAT=(cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy cmd/kubectl ${BERTH_KUBE_WHAT:-})
SRC_LIST=/etc/apt/sources.list.d/berth-kube-src.sources

log() { printf 'kube-build: %s\n' "$*" >&2; }

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cached() {
  [[ -f $STAMP ]] || return 1
  # Builds before the reflect2 fix (stamp without it) panic at run time: rebuild them.
  grep 'reflect2-fix' "$STAMP" >/dev/null || return 1
  local b
  for b in "${REQUIRED[@]}"; do
    [[ -x $BIN/$b ]] || return 1
  done
}

if ((!PREPARE)) && cached; then
  log "cached: $BIN ($(cat "$STAMP"))"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    log "not root: re-running under sudo"
    exec sudo -n -E bash "$0" "$@"
  fi
  log "must run as root (no sudo found): it adds a deb-src entry and installs build tools"
  exit 1
fi

t_start=$(date +%s)
elapsed() { echo "$(($(date +%s) - t_start))s"; }

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q -o DPkg::Lock::Timeout=600)

# Build tools (hack/install-deps.sh installs them too; this keeps the script usable alone).
need=()
# golang-github-modern-go-reflect2-dev: see the reflect2 note below.
for p in golang-go rsync make golang-github-modern-go-reflect2-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep 'install ok installed' >/dev/null || need+=("$p")
done

# Prints the machine's Debian archive URI for bookworm main, and its Signed-By keyring if any,
# as "URI<TAB>KEYRING", from the deb822 *.sources files or the one-line *.list files.
archive_entry() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r $f && $f != "$SRC_LIST" ]] || continue
    # deb822: stanzas separated by blank lines; we want Types with deb, Suites with bookworm,
    # Components with main.
    awk '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && suites ~ /(^| )bookworm( |$)/ && comps ~ /(^| )main( |$)/ && uris != "" && !done) {
          split(uris, u, " "); printf "%s\t%s\n", u[1], signed; done = 1
        }
        types = suites = comps = uris = signed = ""
      }
      /^[[:space:]]*#/ { next }
      /^[[:space:]]*$/ { flush(); next }
      { key = $1; sub(/:$/, "", key); val = $0; sub(/^[^:]*:[[:space:]]*/, "", val)
        if (key == "Types") types = val
        else if (key == "Suites") suites = val
        else if (key == "Components") comps = val
        else if (key == "URIs") uris = val
        else if (key == "Signed-By") signed = val
        else if (key == "Enabled" && val == "no") types = "" }
      END { flush() }
    ' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r $f ]] || continue
    # one-line: deb [opts] URI SUITE COMPONENTS...
    awk '
      $1 == "deb" {
        i = 2; signed = ""
        if ($2 ~ /^\[/) {
          while (i <= NF) {
            if ($i ~ /^\[?signed-by=/) { s = $i; sub(/^\[?signed-by=/, "", s); sub(/\]$/, "", s); signed = s }
            if ($i ~ /\]$/) { i++; break }
            i++
          }
        }
        uri = $i; suite = $(i + 1); main = 0
        for (j = i + 2; j <= NF; j++) if ($j == "main") main = 1
        if (suite == "bookworm" && main) { printf "%s\t%s\n", uri, signed; exit }
      }
    ' "$f"
  done
}

have_source() { apt-cache showsrc kubernetes 2>/dev/null | grep '^Package: kubernetes' >/dev/null; }

updated=0
if ! have_source; then
  entry=$(archive_entry | head -n1)
  if [[ -z $entry ]]; then
    log "no 'deb' entry for bookworm main found in /etc/apt/sources.list{,.d/}; cannot add deb-src"
    exit 1
  fi
  uri=${entry%%$'\t'*}
  keyring=${entry#*$'\t'}
  log "adding deb-src for bookworm main from $uri to $SRC_LIST"
  {
    echo "# written by berth hack/kube-build.sh: Debian's kubernetes source package for the test control plane"
    echo "Types: deb-src"
    echo "URIs: $uri"
    echo "Suites: bookworm"
    echo "Components: main"
    [[ -n $keyring ]] && echo "Signed-By: $keyring"
  } >"$SRC_LIST"
  retry apt-get "${APT_OPTS[@]}" update
  updated=1
  have_source || { log "apt still knows no source package 'kubernetes' after adding $SRC_LIST"; exit 1; }
fi
if ((${#need[@]} > 0)); then
  log "installing build tools: ${need[*]}"
  ((updated)) || retry apt-get "${APT_OPTS[@]}" update
  retry apt-get "${APT_OPTS[@]}" install --no-install-recommends "${need[@]}"
fi
log "apt ready after $(elapsed)"

WORK=$(mktemp -d /var/tmp/berth-kube-build.XXXXXX)
cleanup() {
  if [[ ${BERTH_KUBE_KEEP:-0} == 1 ]]; then
    log "keeping build tree $WORK"
  else
    # Go's module cache marks files read-only; make them removable first.
    chmod -R u+w "$WORK" 2>/dev/null || true
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

cd "$WORK"
# Download as root into our own dir (no sandbox user needed: it only fetches three files).
retry apt-get -q -o APT::Sandbox::User=root source --download-only kubernetes >&2
orig=$(ls ./kubernetes_*.orig.tar.gz 2>/dev/null | head -n1)
[[ -n $orig ]] || { log "no kubernetes_*.orig.tar.gz downloaded"; ls -la >&2; exit 1; }
log "downloaded $(basename "$orig") after $(elapsed)"
if ((PREPARE)); then
  for t in "go version" "make --version" "rsync --version" "tar --version" "gzip --version"; do
    $t >/dev/null 2>&1 || { log "prepare: '$t' fails: a build tool is missing"; exit 1; }
  done
  tar -tzf "$orig" >/dev/null || { log "prepare: $orig is not a readable tarball"; exit 1; }
  log "prepare: tools and source package ready after $(elapsed) (nothing compiled)"
  exit 0
fi

mkdir src
tar -xzf "$orig" -C src
# The tarball holds one top directory (the upstream tree).
tree=$(find src -mindepth 1 -maxdepth 1 -type d | head -n1)
[[ -f $tree/Makefile && -d $tree/vendor ]] || { log "unexpected tarball layout under $tree"; exit 1; }
tree=$(cd "$tree" && pwd)
log "unpacked after $(elapsed)"

cd "$tree"
# Kubernetes 1.20 vendors github.com/modern-go/reflect2 v1.0.1, which reads Go runtime internals
# that changed in Go 1.18: built with Debian's Go 1.19 the apiserver compiles but panics (nil
# pointer in reflect2.(*frozenConfig).Type2) whenever json-iterator encodes a map, i.e. on most
# requests. reflect2 v1.0.2 fixed exactly that with the same API; Debian ships it, so replace the
# vendored copy with Debian's (go.mod/modules.txt keep the old version string, which the go
# command does not check against file contents).
r2_debian=/usr/share/gocode/src/github.com/modern-go/reflect2
r2_vendor=vendor/github.com/modern-go/reflect2
if grep -E '^# github.com/modern-go/reflect2 v1\.0\.1( |$)' vendor/modules.txt >/dev/null; then
  [[ -f $r2_debian/reflect2.go ]] || { log "missing $r2_debian (golang-github-modern-go-reflect2-dev)"; exit 1; }
  rm -f "$r2_vendor"/*.go "$r2_vendor"/*.s
  cp "$r2_debian"/*.go "$r2_debian"/*.s "$r2_vendor"/
  rm -f "$r2_vendor"/*_test.go
  log "vendored reflect2 v1.0.1 replaced by Debian's $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev) (Go >= 1.18 fix)"
fi

mkdir -p .go/src/k8s.io
ln -sfn ../../.. .go/src/k8s.io/kubernetes
cd .go/src/k8s.io/kubernetes

# Offline, static, reproducible enough: nothing is fetched, modules come from vendor/.
export GOPATH=$tree/.go
export GOCACHE=$WORK/gocache
export GOPROXY=off
export GOSUMDB=off
export GOTOOLCHAIN=local
export GOFLAGS=-mod=vendor
export CGO_ENABLED=0
export KUBE_GIT_VERSION=v$VERSION
unset GO111MODULE

t_make=$(date +%s)
log "make WHAT=\"${WHAT[*]}\" (takes ~7-9 minutes on 2 cores when cold)"
make WHAT="${WHAT[*]}" >&2
log "make finished in $(($(date +%s) - t_make))s"

mkdir -p "$BIN"
# Only the requested commands (_output/bin also holds the code generators the build used).
for w in "${WHAT[@]}"; do
  install -m 0755 "_output/bin/$(basename "$w")" "$BIN/"
done
for b in "${REQUIRED[@]}"; do
  [[ -x $BIN/$b ]] || { log "missing after build: $BIN/$b"; exit 1; }
done
"$BIN/kube-apiserver" --version >&2
echo "kubernetes v$VERSION reflect2-fix built $(date -u +%FT%TZ) in $(elapsed)" >"$STAMP"
log "done: $BIN in $(elapsed)"
