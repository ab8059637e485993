#!/usr/bin/env bash
# Compile every C source of the kernels (src/cbn/csrc/*.c) as strict C99 with every warning an
# error, with and without OpenMP, seeing only the public header directory (-Iinclude): the C
# core must build cleanly with any C99 compiler, on its own, as embedders build it.
#
#   bash tools/werror.sh            (from the repository root; CC=clang to use another compiler)
#
# Exits non-zero on the first warning or error. Optimization levels differ in the warnings they
# can see (-Wmaybe-uninitialized needs data flow), so both -O0 and -O3 are compiled.
set -euo pipefail
cd "$(dirname "$0")/.."

CC=${CC:-cc}
STRICT=(-std=c99 -Wall -Wextra -Werror -pedantic -Iinclude)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

shopt -s nullglob
sources=(src/cbn/csrc/*.c)
if [ ${#sources[@]} -eq 0 ]; then
    echo "werror.sh: no C sources in src/cbn/csrc" >&2
    exit 1
fi

status=0
for variant in openmp serial; do
    if [ "$variant" = openmp ]; then
        extra=(-fopenmp)
    else
        extra=(-Wno-unknown-pragmas)
    fi
    for opt in -O0 -O3; do
        for src in "${sources[@]}"; do
            obj="$out/$(basename "$src" .c).o"
            if ! "$CC" "${STRICT[@]}" "${extra[@]}" "$opt" -c "$src" -o "$obj"; then
                echo "werror.sh: FAILED: $CC ${STRICT[*]} ${extra[*]} $opt -c $src" >&2
                status=1
            fi
        done
    done
    echo "werror.sh: $variant: ${#sources[@]} files compiled at -O0 and -O3$([ $status -eq 0 ] && echo ', no warnings')"
done
exit $status
