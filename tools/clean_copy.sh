#!/usr/bin/env bash
# Copy the repository, as a fresh clone would have it, into a directory: tracked files plus
# untracked ones git does not ignore (no build/, dist/, .so, egg-info); outside git, everything
# but build outputs. Used by tools/sanitize.sh and tools/build_wheel.sh.
#
#   bash tools/clean_copy.sh DEST
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:?usage: clean_copy.sh DEST}
mkdir -p "$DEST"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do if [ -f "$f" ]; then printf '%s\0' "$f"; fi; done |
        tar --null -T - -cf -) | tar -xf - -C "$DEST"
else
    cp -a "$ROOT/." "$DEST"
    rm -rf "$DEST/build" "$DEST/dist" "$DEST/src/cbn/_core.c" "$DEST/src/cbn/bench/_copy.c" \
        "$DEST"/src/*.egg-info
    find "$DEST" \( -name '*.so' -o -name '*.o' -o -name '__pycache__' \) -prune \
        -exec rm -rf {} +
fi
