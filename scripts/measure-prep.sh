#!/usr/bin/env bash
# Preparation speed and peak memory on a large generated corpus (issue 12).
#
#   scripts/measure-prep.sh [SIZE_MB]        # default 2048 (2 GB); writes only under /tmp
#
# Builds /tmp/charrnn-prep-SIZE.txt from tiny Shakespeare and the Chinese quatrains in turn (one-
# and three-byte UTF-8, ~6,300 distinct characters), then runs `charrnn prep` on it twice under
# /usr/bin/time -v with a fresh cache: plain, with --min-count 5, and read from a pipe (process
# substitution, which is read once and spooled into the cache). Prints wall time, MB/s and peak
# resident memory. Needs about 4×SIZE of free space in /tmp (text, spool, ids); deletes it after.
set -euo pipefail
size_mb=${1:-2048}
here=$(cd "$(dirname "$0")/.." && pwd)
charrnn=${CHARRNN:-$here/.venv/bin/charrnn}
corpora=${CORPORA:-/work/shared/corpora}
text=/tmp/charrnn-prep-$size_mb.txt
cache=$(mktemp -d /tmp/charrnn-prep-cache.XXXXXX)
trap 'rm -rf "$cache" "$text"' EXIT

python3 - "$text" "$size_mb" "$corpora" <<'PY'
import sys
path, size, corpora = sys.argv[1], int(sys.argv[2]) << 20, sys.argv[3]
parts = [open(f"{corpora}/{name}", "rb").read() for name in ("tinyshakespeare.txt", "wujue.txt")]
written = 0
with open(path, "wb") as out:
    while written < size:
        for part in parts:
            piece = part[: size - written]
            piece = piece[: len(piece.decode("utf-8", errors="ignore").encode("utf-8"))]  # whole characters
            out.write(piece)
            written += len(piece)
            if written >= size or not piece:
                break
        if written >= size - 4:
            break
PY
bytes=$(stat -c %s "$text")
echo "corpus: $text, $bytes bytes" >&2
for mode in plain "--min-count 5" pipe; do
    log=$(mktemp)
    case $mode in
        plain) args=("$text") ;;
        pipe) args=(/dev/stdin) ;;
        *) args=("$text" $mode) ;;
    esac
    if [ "$mode" = pipe ]; then
        cat "$text" | CHARRNN_CACHE=$cache /usr/bin/time -v "$charrnn" prep "${args[@]}" 2>"$log" || { cat "$log" >&2; exit 1; }
    else
        CHARRNN_CACHE=$cache /usr/bin/time -v "$charrnn" prep "${args[@]}" 2>"$log" || { cat "$log" >&2; exit 1; }
    fi
    wall=$(grep "Elapsed (wall clock)" "$log" | awk '{print $NF}')
    rss_kb=$(grep "Maximum resident set size" "$log" | awk '{print $NF}')
    python3 - "$wall" "$rss_kb" "$bytes" "$mode" <<'PY'
import sys
wall, rss_kb, size, label = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
print(f"prep {label}: {size / 2**20:,.0f} MB in {seconds:.1f} s = {size / 2**20 / seconds:,.1f} MB/s; "
      f"peak resident memory {rss_kb / 1024:,.0f} MB")
PY
    grep -E "^corpus |^  --min-count" "$log" >&2 || true
    rm -f "$log"
    rm -rf "${cache:?}"/*
done
