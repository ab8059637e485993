#!/usr/bin/env bash
# Compile every C source of the kernels (src/cbn/csrc/*.c) as strict C99 with every warning an
# error, with and without OpenMP, seeing only the public header directory (-Iinclude): the C
# core must build cleanly with any C99 compiler, on its own, as embedders build it.
#
#   bash tools/werror.sh            (from the repository root; CC=clang to use another compiler)
#
# Exits non-zero on the first warning or error. Optimization levels differ in the warnings they
# can see (-Wmaybe-uninitialized needs data flow), so both -O0 and -O3 are compiled.
# On x86-64 it then compiles the dispatched build as setup.py does (the kernel files cbn_*.c once
# per level with -march=x86-64-vN -DCBN_KERNEL_LEVEL=vN, dispatch.c with -DCBN_DISPATCH) and
# links it into a shared library that may leave no symbol undefined: an entry point missing
# from kernel_list.h, or listed with no kernel behind it, fails here.
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

if [ "$(uname -m)" = x86_64 ]; then
    objects=()
    for src in "${sources[@]}"; do
        case "$(basename "$src")" in
        cbn_*.c)
            for level in v2 v3 v4; do
                obj="$out/$(basename "$src" .c)_$level.o"
                if ! "$CC" "${STRICT[@]}" -fopenmp -O3 -fPIC -march=x86-64-$level \
                        -DCBN_KERNEL_LEVEL=$level -c "$src" -o "$obj"; then
                    echo "werror.sh: FAILED: dispatched $src at $level" >&2
                    status=1
                fi
                objects+=("$obj")
            done ;;
        *)
            obj="$out/$(basename "$src" .c)_base.o"
            if ! "$CC" "${STRICT[@]}" -fopenmp -O3 -fPIC -DCBN_DISPATCH -c "$src" -o "$obj"; then
                echo "werror.sh: FAILED: dispatched $src" >&2
                status=1
            fi
            objects+=("$obj") ;;
        esac
    done
    if [ $status -eq 0 ] && ! "$CC" -shared -fopenmp -Wl,--no-undefined "${objects[@]}" -lm \
            -o "$out/libcbn_dispatch.so"; then
        echo "werror.sh: FAILED: linking the dispatched build (kernel_list.h vs the kernels)" >&2
        status=1
    fi
    echo "werror.sh: dispatched: ${#objects[@]} objects compiled and linked$([ $status -eq 0 ] && echo ', no warnings')"
fi
exit $status
