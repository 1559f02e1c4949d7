#!/usr/bin/env bash
# One command for the receiver comparison (issue 6) and the Sluice pipeline benchmark (issue 3):
#   bench/scripts/compare.sh            # full run, ~12 min on a 2-core machine
#   bench/scripts/compare.sh --quick    # validation run, ~2 min
# Extra arguments go to `sluice-bench compare` (see `sluice-bench compare --help`).
# Installs rsyslog and syslog-ng privately (install-peers.sh), builds release, raises
# net.core.rmem_max for the run and restores it afterwards, and writes
# bench/results/<stamp>-{peers,pipeline}/ plus bench/results/latest*.md and latest-*.png.
set -euo pipefail
cd "$(dirname "$0")/../.."

SUDO=
[[ $(id -u) -ne 0 ]] && SUDO=sudo

bash bench/scripts/install-peers.sh
if [[ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]]; then
    $SUDO apt-get install -y -qq --no-install-recommends fonts-dejavu-core >/dev/null
fi

cargo build --release -p sluice-bench
# The daemon may not exist yet on this branch: the harness skips Sluice receivers without it.
cargo build --release -p sluice-ingest --bin sluice || echo "note: sluice daemon did not build; Sluice receivers are skipped"

OLD_RMEM=$(sysctl -n net.core.rmem_max)
restore() { $SUDO sysctl -q -w net.core.rmem_max="$OLD_RMEM" || true; }
trap restore EXIT
$SUDO sysctl -q -w net.core.rmem_max=$((64 * 1024 * 1024)) || echo "warning: could not raise net.core.rmem_max"

BENCH=target/release/sluice-bench
QUICK=()
for arg in "$@"; do [[ $arg == --quick ]] && QUICK=(--quick); done

"$BENCH" compare --preset peers "$@"
"$BENCH" compare --preset pipeline "${QUICK[@]}" --max-count 200000 --base-port 45000
