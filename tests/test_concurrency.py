"""Stress: many Python threads calling every op at once, on shared read-only inputs, with
different n_threads (and set_num_threads changing under them), give the bits of serial calls.

(tests/test_threads.py has the small version: a few threads, one n_threads.) Every input array
here is read-only, so a kernel writing one would raise instead of silently sharing state; the
outputs of all threads are carved side by side out of one buffer, with guard values between
them, so a write past the end of one output shows up in its neighbour's guard.
"""
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import cbn
from conftest import assert_identical, make_params, make_running, make_x, n_channels

N_PY_THREADS = 8
ROUNDS = 6                       # each Python thread runs every task this many times, shuffled
N_THREADS = [1, 2, 3, 4, 7, None, -1]
GUARD = 64                       # guard values around every output slot

# Big enough that the kernels really use several OpenMP threads (>= 32768 values per thread),
# both layouts and dtypes, a channel split across threads, channels-last column tiles, small.
PROBLEMS = [
    ("NCHW", (8, 16, 40, 41), np.float32),
    ("NHWC", (8, 40, 41, 16), np.float32),
    ("NCHW", (4, 3, 70001), np.float64),
    ("NHWC", (300, 600), np.float64),
    ("NHWC", (2, 3, 70001, 2), np.float32),
    ("NCHW", (3, 5, 7), np.float64),
]


def _ro(a):
    a = np.ascontiguousarray(a) if a is not None else None
    if a is not None:
        a.setflags(write=False)
    return a


@pytest.fixture(autouse=True)
def _restore_default_threads():
    yield
    cbn.set_num_threads(None)


@pytest.fixture(scope="module")
def problems():
    rng = np.random.default_rng(42)
    out = []
    for layout, shape, dtype in PROBLEMS:
        C = n_channels(shape, layout)
        x = make_x(rng, shape, dtype, layout, loc=5.0)
        x.reshape(-1)[:: 997] = dtype(1e4)           # outliers: some channels take pass two
        w, b = make_params(rng, C, dtype)
        rm, rv = make_running(rng, C, dtype)
        dy = make_x(rng, shape, dtype, layout)
        p = dict(layout=layout, shape=shape, dtype=dtype, C=C, x=_ro(x), dy=_ro(dy), w=_ro(w),
                 b=_ro(b), rm=_ro(rm), rv=_ro(rv))
        y, m, s = cbn.batch_norm_train(p["x"], p["w"], p["b"], layout=layout, n_threads=1,
                                       activation="relu")
        p.update(y_relu=_ro(y), m=_ro(m), s=_ro(s))
        out.append(p)
    return out


# Each op: f(p, n_threads, out) -> tuple of arrays. `out` is a writeable slot of x's shape (or
# None), running statistics are fresh copies made inside the op.
def _train(p, n, out):
    rm, rv = p["rm"].copy(), p["rv"].copy()
    y, m, s = cbn.batch_norm_train(p["x"], p["w"], p["b"], running_mean=rm, running_var=rv,
                                   momentum=0.3, layout=p["layout"], out=out, n_threads=n)
    return y, m, s, rm, rv


def _train_relu(p, n, out):
    return cbn.batch_norm_train(p["x"], p["w"], None, layout=p["layout"], activation="relu",
                                unbiased_running_var=False, out=out, n_threads=n)


def _backward(p, n, out):
    return cbn.batch_norm_backward(p["dy"], p["x"], p["m"], p["s"], p["w"], layout=p["layout"],
                                   out=out, n_threads=n)


def _backward_relu(p, n, out):
    return cbn.batch_norm_backward(p["dy"], p["x"], p["m"], p["s"], p["w"], layout=p["layout"],
                                   y=p["y_relu"], activation="relu", out=out, n_threads=n)


def _infer(p, n, out):
    return (cbn.batch_norm_infer(p["x"], p["rm"], p["rv"], p["w"], p["b"], layout=p["layout"],
                                 out=out, n_threads=n),)


def _infer_strided(p, n, out):
    xt = p["x"].T.copy().T                           # Fortran order: copied inside the call
    return (cbn.batch_norm_infer(xt, p["rm"], p["rv"], None, p["b"], layout=p["layout"],
                                 activation="relu", out=out, n_threads=n),)


def _fold(p, n, out):
    return cbn.fold_scale_shift(p["rm"], p["rv"], p["w"], p["b"], eps=1e-3)


def _raises(p, n, out):
    """A call that fails validation, between the others: it must not disturb them."""
    with pytest.raises(ValueError):
        cbn.batch_norm_train(p["x"], p["w"][:-1] if p["C"] > 1 else np.ones(2),
                             layout=p["layout"], out=out, n_threads=n)
    return ()


OPS = {"train": _train, "train_relu": _train_relu, "backward": _backward,
       "backward_relu": _backward_relu, "infer": _infer, "infer_strided": _infer_strided,
       "fold": _fold, "raises": _raises}


def _serial(problems):
    return {(i, name): op(p, 1, None) for i, p in enumerate(problems) for name, op in OPS.items()}


def _tasks(problems, seed):
    rnd = random.Random(seed)
    tasks = [(i, name, rnd.choice(N_THREADS), rnd.random() < 0.5)
             for i in range(len(problems)) for name in OPS]
    return tasks


def _slots(problems, n_workers):
    """Per worker and problem: an output slot inside one shared buffer, guarded both sides."""
    slots, guards = {}, []
    for i, p in enumerate(problems):
        size = int(np.prod(p["shape"]))
        stride = size + 2 * GUARD
        buf = np.full(n_workers * stride + GUARD, np.inf, p["dtype"])
        for t in range(n_workers):
            start = GUARD + t * stride
            slots[t, i] = buf[start:start + size].reshape(p["shape"])
        guards.append((buf, stride, size))
    return slots, guards


def _check_guards(guards):
    for buf, stride, size in guards:
        mask = np.ones(buf.size, bool)
        for start in range(GUARD, buf.size - GUARD, stride):
            mask[start:start + size] = False
        assert np.all(np.isposinf(buf[mask])), "a kernel wrote outside its output"


def _stress(problems, serial, n_workers, rounds, seed, toggler=False):
    slots, guards = _slots(problems, n_workers)
    barrier = threading.Barrier(n_workers + (1 if toggler else 0))
    stop = threading.Event()

    def worker(t):
        rnd = random.Random(seed * 1000 + t)
        tasks = _tasks(problems, seed * 1000 + t) * rounds
        rnd.shuffle(tasks)
        barrier.wait()
        done = 0
        for i, name, n, use_out in tasks:
            p = problems[i]
            out = slots[t, i] if use_out and name not in ("fold",) else None
            got = OPS[name](p, n, out)
            want = serial[i, name]
            for k, (g, w) in enumerate(zip(got, want)):
                assert_identical(g, w, f"{name} of problem {i} output {k}, n_threads={n}, "
                                       f"python thread {t}")
            if out is not None and got:
                assert got[0] is out
            done += 1
        return done

    def toggle():
        barrier.wait()
        k = 0
        while not stop.is_set():
            cbn.set_num_threads([1, 3, None, 2, -1][k % 5])
            k += 1
        return k

    with ThreadPoolExecutor(max_workers=n_workers + 1) as pool:
        tog = pool.submit(toggle) if toggler else None
        futures = [pool.submit(worker, t) for t in range(n_workers)]
        try:
            done = sum(f.result(timeout=300) for f in futures)
        finally:
            stop.set()
        if tog is not None:
            assert tog.result(timeout=60) > 0
    assert done == n_workers * rounds * len(problems) * len(OPS)
    _check_guards(guards)


def test_many_threads_every_op_same_bits_as_serial(problems):
    """8 Python threads, each running every op on every problem ROUNDS times in its own random
    order with a random n_threads: every result equals the serial one bit for bit."""
    serial = _serial(problems)
    _stress(problems, serial, N_PY_THREADS, ROUNDS, seed=1)
    # the shared inputs are untouched (they are read-only, but check the bits anyway)
    again = _serial(problems)
    for key in serial:
        for a, b in zip(serial[key], again[key]):
            assert_identical(a, b)


def test_set_num_threads_changing_under_running_calls(problems):
    """One thread keeps changing the default thread count while 6 others call with
    n_threads=None among others: results do not depend on it."""
    serial = _serial(problems)
    _stress(problems, serial, 6, 2, seed=2, toggler=True)


def test_shared_output_buffer_no_crash(problems):
    """Not a guarantee of values (two calls writing one `out` at once is a race by the caller),
    but cbn must not crash or write outside the buffer: after the storm the buffer holds one of
    the valid results wherever the calls wrote the same values."""
    p = problems[0]
    slots, guards = _slots([p], 1)
    out = slots[0, 0]
    want = cbn.batch_norm_infer(p["x"], p["rm"], p["rv"], p["w"], p["b"], layout=p["layout"])

    def work(t):
        for n in N_THREADS:
            cbn.batch_norm_infer(p["x"], p["rm"], p["rv"], p["w"], p["b"], layout=p["layout"],
                                 out=out, n_threads=n)

    with ThreadPoolExecutor(max_workers=N_PY_THREADS) as pool:
        list(pool.map(work, range(N_PY_THREADS)))
    assert_identical(out, want)            # every call wrote the same values
    _check_guards(guards)
