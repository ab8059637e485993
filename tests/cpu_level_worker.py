"""Worker for tests/test_cpu_dispatch.py:
``CBN_CPU_LEVEL=v3 python cpu_level_worker.py OUT.npz [--reference]``.

Imports cbn (which picks the forced level), then runs every public kernel (train, backward,
inference, frozen-statistics backward, fold, and the four split phases; plain, and with a fused
ReLU and residual) on both dtypes over `CASES`, on 1 and 2 threads (asserting the same bits),
and saves to OUT.npz, for each output "<case>/<dtype>/<op>/<name>": the SHA-256 of its bytes
(key + "#sha") and its values (at most SAMPLE_SIZE of them, evenly strided: key + "#sample"),
with the level it ran at under "level". With --reference, also the float64 NumPy reference
(cbn.reference) of the training, backward and inference outputs, sampled the same way, under
"<case>/<dtype>/reference/<op>/<name>#sample". The inputs depend only on the case (`inputs`),
so workers at different levels compute the same thing. (Large arrays stay here: the test
process keeps only small ones, which leaves its malloc state as the other tests expect.)

Importing this module does not import cbn (the test imports `CASES` and `inputs` from it).
"""
import hashlib
import sys

import numpy as np

SAMPLE_SIZE = 8192

# Shapes that reach each kernel path (tests/conftest.py tags them; tests/test_kernel_paths.py):
# channels-first columns, groups, ranges; channels-last whole tiles and row blocks; the other
# layout's path for C == 1 and S == 1; one of each layout large enough to stream its output.
CASES = [
    ("NCHW", (5, 3)),
    ("NCHW", (3, 5, 7)),                 # cf-columns
    ("NCHW", (4, 300, 1, 2)),
    ("NCHW", (2, 3, 5, 7)),
    ("NCHW", (12, 8, 33, 31)),           # cf-ranges
    ("NCHW", (8, 96, 32, 32)),           # cf-groups on 1 thread (run below at 1 and 2)
    ("NCHW", (4, 1, 170, 101)),          # C == 1
    ("NCHW", (70001, 2)),                # S == 1: cl-blocks
    ("NHWC", (3, 7, 5)),                 # cl-whole-tiles
    ("NHWC", (2, 5, 7, 3)),
    ("NHWC", (4, 8, 5, 600)),            # cl-blocks, C over a column tile
    ("NHWC", (8, 20, 18, 24)),           # cl-blocks
    ("NHWC", (2, 1, 40003)),             # cl-whole-tiles, many channels
    ("NHWC", (70001, 1)),                # C == 1: cf-ranges
    ("NCHW", (4, 3, 600, 700)),          # cf-ranges+stream (float32 16.8 MB)
    ("NHWC", (16, 1024, 260)),           # cl-blocks+stream
]
THREADS = (1, 2)


def case_key(case):
    layout, shape = case
    return layout + "x".join(map(str, shape))


def inputs(case, dtype):
    """(x, dy, residual, weight, bias, running_mean, running_var) of a case, from its key."""
    layout, shape = case
    rng = np.random.default_rng(sum(map(ord, case_key(case))))
    C = shape[1] if layout == "NCHW" else shape[-1]
    x = rng.normal(2.0, 3.0, shape).astype(dtype)
    dy = rng.normal(0.5, 1.0, shape).astype(dtype)
    residual = rng.normal(0.0, 1.0, shape).astype(dtype)
    weight = rng.normal(1.0, 0.5, C).astype(dtype)
    bias = rng.normal(0.0, 0.5, C).astype(dtype)
    running_mean = rng.normal(2.0, 0.1, C).astype(dtype)
    running_var = rng.uniform(5.0, 12.0, C).astype(dtype)
    return x, dy, residual, weight, bias, running_mean, running_var


def outputs(cbn, case, dtype, n_threads):
    """{op/name: array} of every kernel on the case."""
    from cbn import split
    layout = case[0]
    x, dy, residual, weight, bias, rm0, rv0 = inputs(case, dtype)
    out = {}
    rm, rv = rm0.copy(), rv0.copy()
    y, mean, invstd = cbn.batch_norm_train(x, weight, bias, running_mean=rm, running_var=rv,
                                           layout=layout, n_threads=n_threads)
    out.update({"train/y": y, "train/save_mean": mean, "train/save_invstd": invstd,
                "train/running_mean": rm, "train/running_var": rv})
    y_act, mean_a, invstd_a = cbn.batch_norm_train(x, weight, bias, layout=layout,
                                                   activation="relu", residual=residual,
                                                   n_threads=n_threads)
    out["train_relu_residual/y"] = y_act
    for name, a in zip(("dx", "dweight", "dbias"),
                       cbn.batch_norm_backward(dy, x, mean, invstd, weight, layout=layout,
                                               n_threads=n_threads)):
        out["backward/" + name] = a
    for name, a in zip(("dx", "dweight", "dbias", "d_residual"),
                       cbn.batch_norm_backward(dy, x, mean_a, invstd_a, weight, layout=layout,
                                               y=y_act, activation="relu", residual=True,
                                               n_threads=n_threads)):
        out["backward_relu_residual/" + name] = a
    out["infer/y"] = cbn.batch_norm_infer(x, rm0, rv0, weight, bias, layout=layout,
                                          n_threads=n_threads)
    y_inf = cbn.batch_norm_infer(x, rm0, rv0, weight, bias, layout=layout, activation="relu",
                                 residual=residual, n_threads=n_threads)
    out["infer_relu_residual/y"] = y_inf
    for name, a in zip(("dx", "dweight", "dbias"),
                       cbn.batch_norm_infer_backward(dy, x, rm0, rv0, weight, layout=layout,
                                                     n_threads=n_threads)):
        out["infer_backward/" + name] = a
    scale, shift = cbn.fold_scale_shift(rm0, rv0, weight, bias)
    out.update({"fold/scale": scale, "fold/shift": shift})
    count, s_mean, s_m2 = split.batch_stats(x, layout=layout, n_threads=n_threads)
    out.update({"batch_stats/mean": s_mean, "batch_stats/m2": s_m2})
    s_invstd = 1.0 / np.sqrt(s_m2 / count + 1e-5)
    out["normalize/y"] = split.batch_norm_normalize(x, s_mean, s_invstd, weight, bias,
                                                    layout=layout, n_threads=n_threads)
    sums = split.batch_norm_backward_reduce(dy, x, mean, layout=layout, n_threads=n_threads)
    for name, a in zip(("sum_dy", "sum_dy_xmu", "sum_xmu"), sums):
        out["backward_reduce/" + name] = a
    out["backward_dx/dx"] = split.batch_norm_backward_dx(dy, x, mean, invstd, *sums, count,
                                                         weight=weight, layout=layout,
                                                         n_threads=n_threads)
    return out


def sample(a):
    """The values of a kept in OUT.npz: all of them, or every k-th, at most SAMPLE_SIZE."""
    a = np.asarray(a).ravel()
    return a[::-(-a.size // SAMPLE_SIZE)] if a.size > SAMPLE_SIZE else a


def reference_outputs(case, dtype, save_mean, save_invstd):
    """{op/name: float64 array} of cbn.reference for the training forward (with running
    statistics), backward (at the kernels' own save_mean and save_invstd) and inference."""
    from cbn import reference as ref
    layout = case[0]
    x, dy, _, weight, bias, rm, rv = inputs(case, dtype)
    y, mean, invstd, _, _ = ref.batch_norm_train(x, weight, bias, layout=layout)
    dx, dw, db = ref.batch_norm_backward(dy, x, save_mean, save_invstd, weight, layout=layout)
    return {"train/y": y, "train/save_mean": mean, "train/save_invstd": invstd,
            "backward/dx": dx, "backward/dweight": dw, "backward/dbias": db,
            "infer/y": ref.batch_norm_infer(x, rm, rv, weight, bias, layout=layout)}


def main(path, reference=False):
    import cbn
    saved = {"level": np.array(cbn.cpu_level())}
    for case in CASES:
        for dtype in (np.float32, np.float64):
            runs = [outputs(cbn, case, dtype, n) for n in THREADS]
            for name, a in runs[0].items():
                for other in runs[1:]:    # every thread count: the same bits, at every level
                    assert other[name].tobytes() == a.tobytes(), (case, dtype, name)
                key = f"{case_key(case)}/{np.dtype(dtype).name}/{name}"
                saved[key + "#sha"] = np.array(hashlib.sha256(a.tobytes()).hexdigest())
                saved[key + "#sample"] = sample(a)
            if reference:
                prefix = f"{case_key(case)}/{np.dtype(dtype).name}/reference/"
                for name, a in reference_outputs(case, dtype, runs[0]["train/save_mean"],
                                                 runs[0]["train/save_invstd"]).items():
                    saved[prefix + name + "#sample"] = sample(a)
    np.savez(path, **saved)


if __name__ == "__main__":
    main(sys.argv[1], reference="--reference" in sys.argv[2:])
