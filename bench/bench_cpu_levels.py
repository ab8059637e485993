"""Speed of the level cbn runs at (cbn.cpu_level()), to compare the dispatched levels with a
CBN_NATIVE=1 build of the same source::

    CBN_CPU_LEVEL=v3 python bench/bench_cpu_levels.py --json v3.json
    CBN_CPU_LEVEL=v4 python bench/bench_cpu_levels.py --json v4.json
    <venv with CBN_NATIVE=1 pip install .>/bin/python bench/bench_cpu_levels.py --json native.json
    python bench/bench_cpu_levels.py --compare native.json v3.json v4.json

Each (op, dtype, layout, shape) is timed as the median of --repeat calls on --threads threads.
`--once OP DTYPE LAYOUT SHAPE` makes one call after one warm-up call, for instruction counts:

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect='cbn_train_forward_f32' \\
        python bench/bench_cpu_levels.py --once train float32 NCHW 8x64x32x32

(valgrind 3.19-3.22 has no AVX-512: it runs v2 and v3, not v4 or a native build for an
AVX-512 CPU.)
"""
import argparse
import json
import time

import numpy as np

import cbn

SHAPES = [("NCHW", (32, 64, 56, 56)), ("NHWC", (32, 56, 56, 64)), ("NCHW", (256, 1024, 1, 1)),
          ("NCHW", (8, 64, 32, 32))]
OPS = ("train", "backward", "infer")


def setup(dtype, layout, shape):
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, shape).astype(dtype)
    dy = rng.normal(0.0, 1.0, shape).astype(dtype)
    C = shape[1] if layout == "NCHW" else shape[-1]
    w, b = np.ones(C, dtype), np.zeros(C, dtype)
    axes = tuple(i for i in range(len(shape)) if i != (1 if layout == "NCHW" else len(shape) - 1))
    mean = x.mean(axis=axes, dtype=np.float64)          # NumPy, so that --once counts only the
    invstd = 1.0 / np.sqrt(x.var(axis=axes, dtype=np.float64) + 1e-5)  # measured calls
    mean, invstd = mean.astype(dtype), invstd.astype(dtype)
    out = np.empty_like(x)
    return {
        "train": lambda n: cbn.batch_norm_train(x, w, b, layout=layout, out=out, n_threads=n),
        "backward": lambda n: cbn.batch_norm_backward(dy, x, mean, invstd, w, layout=layout,
                                                      out=out, n_threads=n),
        "infer": lambda n: cbn.batch_norm_infer(x, mean, 1.0 / invstd ** 2, w, b, layout=layout,
                                                out=out, n_threads=n),
    }


def parse_shape(text):
    return tuple(int(v) for v in text.split("x"))


def measure(args):
    rows = []
    for layout, shape in SHAPES:
        for dtype in (np.float32, np.float64):
            calls = setup(dtype, layout, shape)
            for op in OPS:
                calls[op](args.threads)
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    calls[op](args.threads)
                    times.append(time.perf_counter() - t0)
                rows.append({"op": op, "dtype": np.dtype(dtype).name, "layout": layout,
                             "shape": "x".join(map(str, shape)),
                             "median_s": float(np.median(times)), "min_s": float(min(times))})
                print(f"{cbn.cpu_level():7s} {op:9s} {rows[-1]['dtype']:8s} {layout} "
                      f"{rows[-1]['shape']:16s} median {rows[-1]['median_s'] * 1e3:8.3f} ms  "
                      f"min {rows[-1]['min_s'] * 1e3:8.3f} ms", flush=True)
    return {"level": cbn.cpu_level(), "threads": args.threads, "rows": rows}


def compare(paths):
    runs = []
    for p in paths:
        with open(p) as f:
            runs.append(json.load(f))
    base = runs[0]
    print("time relative to " + base["level"] + " (min over repeats; <1 is faster)")
    print(f"{'op':9s} {'dtype':8s} {'layout':6s} {'shape':16s} " +
          " ".join(f"{r['level']:>8s}" for r in runs[1:]))
    for i, row in enumerate(base["rows"]):
        print(f"{row['op']:9s} {row['dtype']:8s} {row['layout']:6s} {row['shape']:16s} " +
              " ".join(f"{r['rows'][i]['min_s'] / row['min_s']:8.3f}" for r in runs[1:]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--json")
    ap.add_argument("--compare", nargs="+", metavar="JSON")
    ap.add_argument("--once", nargs=4, metavar=("OP", "DTYPE", "LAYOUT", "SHAPE"))
    args = ap.parse_args()
    if args.compare:
        compare(args.compare)
    elif args.once:
        op, dtype, layout, shape = args.once
        call = setup(np.dtype(dtype), layout, parse_shape(shape))[op]
        call(args.threads)
        call(args.threads)
    else:
        result = measure(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
