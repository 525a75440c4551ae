# Shared shell helpers for hack/*.sh. Source after defining `log`.

# Run a command up to three times, 10 s then 20 s apart (apt mirrors have passing failures).
retry() {
  local n=1
  until "$@"; do
    if ((n >= 3)); then
      log "failed 3 times: $*"
      return 1
    fi
    log "retrying in $((n * 10))s: $*"
    sleep $((n * 10))
    n=$((n + 1))
  done
}
