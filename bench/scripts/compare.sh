#!/usr/bin/env bash
# One command for the receiver comparison (issue 6):
#   bench/scripts/compare.sh              # drain, Sluice, rsyslog, syslog-ng; 3 repetitions
#   bench/scripts/compare.sh --quick      # validation run: 1 repetition, fewer rates
#   bench/scripts/compare.sh --pipeline   # afterwards also the Sluice pipeline benchmark (issue 3)
# Other arguments go to `sluice-bench compare --preset peers` (see `sluice-bench compare --help`).
# Installs what it needs, idempotently: the peers privately (install-peers.sh) and a font for
# the plots. Builds release (without the XDP program, which no receiver here uses), raises
# net.core.rmem_max for the run and restores it afterwards, and writes
# bench/results/<stamp>-<preset>/ plus bench/results/latest*.md and latest-*.png.
set -euo pipefail
cd "$(dirname "$0")/../.."
STARTED=$(date +%s)

SUDO=
[[ $(id -u) -ne 0 ]] && SUDO=sudo

QUICK=()
PIPELINE=0
PASS=()
for arg in "$@"; do
    case $arg in
        --quick) QUICK=(--quick) ;;
        --pipeline) PIPELINE=1 ;;
        *) PASS+=("$arg") ;;
    esac
done

# The peers' apt work (network and disk) runs while cargo compiles (CPU); both finish before
# anything is measured.
PEER_LOG=$(mktemp)
(
    bash bench/scripts/install-peers.sh
    if [[ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]]; then
        $SUDO apt-get install -y -qq --no-install-recommends fonts-dejavu-core >/dev/null
    fi
) >"$PEER_LOG" 2>&1 &
PEERS=$!

# One invocation: shared dependencies are built once, both binaries in parallel. No receiver
# here attaches XDP, so both are built without the XDP program (cargo feature `xdp`): the
# eBPF toolchain (nightly rust-src, bpf-linker: ~4 min on a fresh 2-core machine) is not
# needed. The daemon's receive, parse, map and write path is the same code either way.
cargo build --release --no-default-features -p sluice-bench -p sluice-ingest --bin sluice-bench --bin sluice
if ! wait "$PEERS"; then
    cat "$PEER_LOG" >&2
    echo "error: installing the peers failed (log above)" >&2
    exit 1
fi
cat "$PEER_LOG"
rm -f "$PEER_LOG"
echo "set-up and build: $(( $(date +%s) - STARTED )) s"

OLD_RMEM=$(sysctl -n net.core.rmem_max)
restore() { $SUDO sysctl -q -w net.core.rmem_max="$OLD_RMEM" || true; }
trap restore EXIT
$SUDO sysctl -q -w net.core.rmem_max=$((64 * 1024 * 1024)) || echo "warning: could not raise net.core.rmem_max"

BENCH=target/release/sluice-bench
"$BENCH" compare --preset peers "${QUICK[@]}" "${PASS[@]}"
if [[ $PIPELINE == 1 ]]; then
    "$BENCH" compare --preset pipeline "${QUICK[@]}" --base-port 26000
fi
echo "compare.sh finished in $(( ($(date +%s) - STARTED) / 60 )) min $(( ($(date +%s) - STARTED) % 60 )) s"
