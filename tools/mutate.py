#!/usr/bin/env python3
"""Mutation testing of cbn's fast test suite: does the suite notice plausible one-line mistakes?

Each mutant replaces one piece of text in the library (an expression, a comparison, a loop
bound) by a plausible wrong one. The script copies the repository's working tree to a temporary
directory, builds the extension in place, and for every mutant copies that tree, applies the
mutant, rebuilds (C mutants only) and runs ``pytest -m "not slow" -x`` with PYTHONPATH pointing
at the copy. A failing suite kills the mutant; a passing one lets it survive. Every mutant
should be killed, or listed with a reason why it cannot change a result (``survives_because``).

A mutant is located by its text alone, searched across src/cbn/csrc/*.c, src/cbn/csrc/*.h and
src/cbn/*.py: the text must occur exactly once. When it does not (the code was edited, split or
renamed), the mutant is reported as "stale", never as survived: update its text.

Not run in CI (a full run takes an hour or more on a small machine). Run it before a release
and after large kernel changes:

    python tools/mutate.py                  # every mutant; the unmutated tree must pass first
    python tools/mutate.py --list           # the mutants, and whether each is found
    python tools/mutate.py --only 7 --only 12 --keep
    python tools/mutate.py --no-baseline --timeout 900 --json results.json

The Python running the script builds and tests (it needs setuptools, Cython, NumPy, pytest and
hypothesis; cbn itself need not be installed: PYTHONPATH takes precedence).
"""
import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEARCHED = ("src/cbn/csrc/*.c", "src/cbn/csrc/*.h", "src/cbn/*.py", "src/cbn/*.pyx")
PYTEST_ARGS = ["-m", "not slow", "-x", "-q", "-p", "no:cacheprovider"]


@dataclass(frozen=True)
class Mutant:
    name: str
    old: str
    new: str
    breaks: str
    survives_because: str = ""      # a reason it cannot change a result, if it cannot


MUTANTS = [
    # ---- channels-first, long runs -----------------------------------------------------------
    Mutant("cf-fold-skips-chunk-0",
           "for (int64_t k = 0; k < p->n_chunks; k++)\n        for (int64_t i = 0; i < ns; i++)",
           "for (int64_t k = 1; k < p->n_chunks; k++)\n        for (int64_t i = 0; i < ns; i++)",
           "a channel's sums lose their first chunk"),
    Mutant("cf-group-pieces-into-chunk-0",
           "part + ns * (c * K + k)",
           "part + ns * (c * K)",
           "grouped reduce adds every piece into chunk 0: right sums, another rounding than the "
           "chunk-by-chunk reduce of channels cut between threads"),
    Mutant("cf-piece-offset-ignores-start",
           "return (n * p->C + c) * p->S + s;",
           "return (n * p->C + c) * p->S;",
           "a chunk that starts inside a run reads from the run's start"),
    Mutant("cf-own-partial-channel",
           "own0 = (u0 + K - 1) / K",
           "own0 = u0 / K",
           "a thread treats a channel it holds only part of as its own"),
    Mutant("cf-cut-channel-outputs-never-written",
           "(c_lo + 1) * K - 1 < u1",
           "0",
           "per-channel outputs of a channel cut between threads are never written"),
    Mutant("cf-runs-drop-backward-b",
           "const T coefs[N_COEF] = {center[c], scale[c], shift[c], xmu[c]};",
           "const T coefs[N_COEF] = {center[c], scale[c], shift[c], 0};",
           "channels-first backward apply loses its (x - mean) term"),
    Mutant("cf-second-pass-skips-last-chunk",
           "for (int64_t k = 0; k < jb->plan.n_chunks; k++) {",
           "for (int64_t k = 0; k + 1 < jb->plan.n_chunks; k++) {",
           "the mean-centred second pass of a long channel misses its last chunk"),
    # ---- channels-first, dynamic channel groups ------------------------------------------------
    Mutant("groups-skip-last-partial-group",
           "(g = FN(take_unit)(jb)) * group < p->C;",
           "(g = FN(take_unit)(jb)) * group + group <= p->C;",
           "threads taking channel groups never take the last, partial group"),
    Mutant("groups-apply-misses-last-channel",
           "FN(cf_apply_runs)(jb, n * jb->plan.C + c0, n * jb->plan.C + c1);",
           "FN(cf_apply_runs)(jb, n * jb->plan.C + c0, n * jb->plan.C + c1 - 1);",
           "a whole channel group's apply leaves its last channel unwritten"),
    # ---- shared run primitives -----------------------------------------------------------------
    Mutant("lanes-fold-wrong-lane",
           "a16[j] = a[j] + a[j + 16]",
           "a16[j] = a[j] + a[j + 15]",
           "the lane reduction adds one lane twice and drops another"),
    Mutant("dy-sums-tail-ignores-mean",
           "tq = MULADD(g, e, tq);\n        td += e;\n    }\n    s[0] += FN(sum_flanes)(a) + ta;",
           "tq = MULADD(g, (double)WIDEN(x[i]), tq);\n        td += e;\n    }\n"
           "    s[0] += FN(sum_flanes)(a) + ta;",
           "backward sums of the last n % 32 values of a run forget to centre x"),
    Mutant("relu-grad-passes-zero",
           "return y > 0 ? dy : (T)0;",
           "return y >= 0 ? dy : (T)0;",
           "the fused ReLU's gradient passes dy where the output was clamped to 0"),
    Mutant("run-apply-ignores-relu",
           "const T lo = relu ? (T)0 : (T)-INFINITY;     /* v < -inf never holds: no clamp */",
           "const T lo = (T)-INFINITY;",
           "channels-first (non-streaming) forward ignores the fused ReLU"),
    # ---- streaming stores -----------------------------------------------------------------------
    Mutant("stream-cf-ignores-relu",
           "jb->relu, jb->x + off + i,",
           "0, jb->x + off + i,",
           "channels-first streaming apply drops the fused ReLU"),
    Mutant("stream-cl-ignores-relu",
           "FN(cl_apply_rows)(op, jb->relu, coef, x + o,",
           "FN(cl_apply_rows)(op, 0, coef, x + o,",
           "channels-last / column-mode streaming apply drops the fused ReLU"),
    Mutant("stream-store-tail-dropped",
           "    memcpy(d, s, n);\n#else",
           "#else",
           "the last bytes (less than one vector) of a streamed block are not written"),
    Mutant("stream-cl-tile-width",
           "c0 + p->col_tile < C ? p->col_tile : C - c0",
           "p->col_tile",
           "channels-last streaming of wide rows writes whole tiles past the row's end"),
    # ---- channels-first column mode -------------------------------------------------------------
    Mutant("column-fold-squares-from-sums",
           "sums[1] += q[j];",
           "sums[1] += s[j];",
           "column mode folds the first sums in place of the squares"),
    Mutant("column-coef-last-column",
           "j < (c - g0 + 1) * S; j++) col[j] = value;",
           "j < (c - g0 + 1) * S - 1; j++) col[j] = value;",
           "column mode leaves the last column of each channel with stale coefficients"),
    Mutant("column-second-pass-keeps-squares",
           "col[j] = pivot, s[j] = q[j] = 0.0;",
           "col[j] = pivot, s[j] = 0.0;",
           "column mode's second pass adds its squares onto the first pass's"),
    # ---- channels-last --------------------------------------------------------------------------
    Mutant("cl-fold-squares-from-sums",
           "q[c] += pq[rb * C + c];",
           "q[c] += ps[rb * C + c];",
           "channels-last fold takes the first sums as squares"),
    Mutant("cl-sums-drop-row",
           "sj[j] += (d0 + d1) + (d2 + d3);",
           "sj[j] += (d0 + d1) + d2;",
           "channels-last sums miss every fourth row"),
    Mutant("cl-tail-rows-wrong-pivot",
           "const double d = (double)WIDEN(xr[j]) - pivot[j];",
           "const double d = (double)WIDEN(xr[j]) - pivot[0];",
           "channels-last rows past the last multiple of 4 use column 0's pivot"),
    Mutant("cl-dy-sums-wrong-row",
           "x2 = (double)WIDEN_V(xw2[j]) - m",
           "x2 = (double)WIDEN_V(xw3[j]) - m",
           "channels-last backward pairs dy of one row with x of another"),
    Mutant("cl-apply-train-shift-column-0",
           "TRAIN_VALUE(WIDEN_V(xr[j]), center[j], scale[j], shift[j])",
           "TRAIN_VALUE(WIDEN_V(xr[j]), center[j], scale[j], shift[0])",
           "channels-last forward adds channel 0's shift everywhere"),
    Mutant("cl-second-pass-stores-wrong-channels",
           "if (!jb->second_pass[c]) continue;",
           "if (jb->second_pass[c]) continue;",
           "channels-last second pass finalizes the channels that did not need it"),
    Mutant("cl-second-pass-keeps-pivot",
           "pivot[j] = FN(second_pivot)(pivot[j], mean[j]);",
           "pivot[j] = pivot[j];",
           "channels-last second pass sums around the same far pivot again"),
    Mutant("cl-backward-center-zero",
           "center[j] = mean[j];\n        FN(backward_coef_values)",
           "center[j] = 0;\n        FN(backward_coef_values)",
           "channels-last backward centres x at 0 instead of the mean"),
    Mutant("cl-dweight-without-invstd",
           "M, &delta) *\n                        (double)inv[j]);",
           "M, &delta));",
           "channels-last dweight forgets the factor invstd"),
    # ---- channels-last, whole tiles (few rows: a tile reduced, finalized, applied alone) -----
    Mutant("tile-second-pass-wrong-channels",
           "if (!second_pass[j]) continue;",
           "if (second_pass[j]) continue;",
           "a whole tile's second pass finalizes the channels that did not need it"),
    Mutant("tile-second-pass-keeps-sums",
           "        for (int64_t j = 0; j < t.w; j++) s[j] = q[j] = 0.0;\n"
           "        FN(cl_shifted_sums)",
           "        FN(cl_shifted_sums)",
           "a whole tile's second pass adds its sums onto the first pass's"),
    Mutant("tile-infer-var-from-channel-0",
           "jb->infer.running_var + t.c0,",
           "jb->infer.running_var,",
           "whole-tile inference folds every tile with the first tile's running variances"),
    # ---- finalize formulas ----------------------------------------------------------------------
    Mutant("mean-divides-by-m-minus-1",
           "*mean = pivot + s / M;",
           "*mean = pivot + s / (M - 1.0);",
           "the batch mean"),
    Mutant("second-pass-never",
           "return q > STATS_MAX_CANCEL * m2;",
           "return 0 && q > STATS_MAX_CANCEL * m2;",
           "no channel is ever summed again around its mean (precision far from the pivot)"),
    Mutant("second-pass-threshold-f64",
           "#define STATS_MAX_CANCEL 16.0",
           "#define STATS_MAX_CANCEL 1e6",
           "float64 accepts one-pass sums that cancelled a million-fold"),
    Mutant("second-pass-threshold-f32",
           "float32 instantiation of the kernels in kernels_impl.h. */\n#define T float\n"
           "#define STATS_MAX_CANCEL 4.0",
           "float32 instantiation of the kernels in kernels_impl.h. */\n#define T float\n"
           "#define STATS_MAX_CANCEL 0x1p16",
           "float32's float blocks accept one-pass sums that cancelled 2^16-fold (the old "
           "threshold of double sums)"),
    Mutant("float-blocks-overflow-kept",
           "    for (int64_t i = 0; i < n; i++) finite &= fabs(s[i]) <= DBL_MAX;",
           "    for (int64_t i = 0; i < n; i++) finite &= 1;",
           "backward keeps the sums of float blocks that overflowed (data near FLT_MAX)"),
    Mutant("float-blocks-second-pass-in-float",
           "        FN(cf_reduce_chunk)(jb, c, k, pivot, 1, chunk);",
           "        FN(cf_reduce_chunk)(jb, c, k, pivot, 0, chunk);",
           "channels-first second sums stay in float blocks, which overflow near FLT_MAX"),
    Mutant("cl-pivot-first-row-only",
           "        const int64_t rows = M / 8 < 1 ? 1 : M / 8 > 16 ? 16 : M / 8;",
           "        const int64_t rows = 1;",
           "channels-last pivots from the first row only: a far first row sends every call "
           "through the second pass (time only)",
           survives_because=(
               "a pivot from fewer rows changes only how often the second pass runs, and the "
               "second pass makes the result as exact: no result can tell (a speed mutant)")),
    Mutant("m2-not-clamped",
           "return m2 < 0.0 ? 0.0 : m2;",
           "return m2;",
           "a rounding-negative M2 would reach the variance",
           survives_because=(
               "no M2 below 0 reaches it: a first pass with M2 <= 0 < q counts as cancelled "
               "and goes to the second pass (q == 0 means s == 0 and M2 == 0); there, around "
               "the mean, q >= s^2/M (Cauchy-Schwarz) with s near 0, so rounding cannot take "
               "q - s*(s/M) below 0 except for a constant channel, whose sums are exactly 0. "
               "A fuzz of 20000 near-constant channels (1-3 ulp steps, outlier pivots, both "
               "dtypes) against a build without the clamp found no negative M2: the clamp is "
               "a guard")),
    Mutant("invstd-without-eps",
           "1.0 / sqrt(var + eps)",
           "1.0 / sqrt(var)",
           "eps is ignored in training"),
    Mutant("running-var-biased",
           "(m2) / (M - 1.0)",
           "(m2) / M",
           "the running variance follows the biased estimate"),
    Mutant("momentum-update-unweighted",
           "(1.0 - momentum) * (double)running + momentum * value",
           "(1.0 - momentum) * (double)running + value",
           "running statistics add the whole batch value"),
    Mutant("train-shift-drops-mean-rounding",
           "*shift = (T)(beta - (mean - (double)*center) * sc);",
           "*shift = (T)beta;",
           "the rounding of the mean to the element type is not compensated (float32 far from 0)"),
    Mutant("batch-stats-mean-rounded",
           "jb->train.mean_out[c] = mean;",
           "jb->train.mean_out[c] = (T)mean;",
           "batch_stats returns the mean rounded to the input's type, not in float64"),
    Mutant("infer-fold-shift",
           "shift[c] = (T)(beta - (double)running_mean[c] * s);",
           "shift[c] = (T)(beta - (double)running_mean[c]);",
           "inference's shift forgets to scale the running mean"),
    # ---- backward coefficients ------------------------------------------------------------------
    Mutant("backward-shift-m-minus-1",
           "*shift = (T)(-a * sum_dy / M - k * delta);",
           "*shift = (T)(-a * sum_dy / (M - 1.0) - k * delta);",
           "dx's mean-of-dy term"),
    Mutant("backward-b-one-invstd",
           "k = -a * invstd * invstd * sum_dy_xmu / M;",
           "k = -a * invstd * sum_dy_xmu / M;",
           "dx's (x - mean) term misses a factor invstd"),
    Mutant("backward-dweight-without-invstd",
           "jb->backward.dweight[c] = (T)(sum_dy_xmu * invstd);",
           "jb->backward.dweight[c] = (T)(sum_dy_xmu);",
           "channels-first dweight forgets the factor invstd"),
    Mutant("backward-ignores-third-sum",
           "return sum_dy_xc - *delta * sum_dy;",
           "return sum_dy_xc;",
           "backward sums around save_mean as if it were the batch mean (float32 far from 0)"),
    Mutant("cl-third-sum-drops-row",
           "dj[j] += (x0 + x1) + (x2 + x3);",
           "dj[j] += (x0 + x1) + x2;",
           "channels-last backward's sum(x - center) misses every fourth row"),
    # ---- plan -----------------------------------------------------------------------------------
    Mutant("plan-drops-partial-chunk",
           "p->n_chunks = p->M > 0 ? ceil_div(p->M, p->chunk) : 0;",
           "p->n_chunks = p->M > 0 ? p->M / p->chunk : 0;",
           "channels-first drops a channel's last partial chunk"),
    Mutant("plan-drops-partial-column-tile",
           "p->n_col_tiles = C > 0 ? ceil_div(C, p->col_tile) : 0;",
           "p->n_col_tiles = C > 0 ? C / p->col_tile : 0;",
           "channels-last drops the channels past the last whole column tile"),
    # ---- split kernels and combine_stats --------------------------------------------------------
    Mutant("combine-reverse-order",
           "for (int64_t p = 0; p < P; p++) {",
           "for (int64_t p = P - 1; p >= 0; p--) {",
           "combine_stats merges the parts last to first (other bits than the documented order)"),
    Mutant("combine-drops-part-m2",
           "*m2 += qb + delta * delta * (n * nb / total);",
           "*m2 += delta * delta * (n * nb / total);",
           "combine_stats forgets each part's own M2"),
    Mutant("combine-empty-part-not-skipped",
           "if (nb == 0.0) continue;",
           "",
           "an empty first part makes combine_stats divide 0 by 0"),
    Mutant("split-reduce-sums-swapped",
           "jb->backward.sum_dy_xmu_out[c] = s[1];",
           "jb->backward.sum_dy_xmu_out[c] = s[0];",
           "backward_reduce (channels-first) returns sum(dy) twice"),
    Mutant("split-dx-sums-swapped",
           "{sum_dy[c], sum_dy_xmu[c], sum_xmu[c]}",
           "{sum_dy_xmu[c], sum_dy[c], sum_xmu[c]}",
           "backward_dx swaps the two global sums"),
    Mutant("split-apply-pieces-wrong-channel",
           "const int64_t r = v / S, c = r % C;",
           "const int64_t r = v / S, c = (r + 1) % C;",
           "apply-only kernels with few runs use the next channel's coefficients"),
    # ---- Python checks --------------------------------------------------------------------------
    Mutant("py-layer-counts-before-kernel",
           "            momentum = (1.0 / (self.num_batches_tracked + 1) if self.momentum is None\n"
           "                        else self.momentum)\n"
           "        y, mean, invstd = _api.batch_norm_train(\n"
           "            x, self.weight, self.bias, "
           "running_mean=self.running_mean if update else None,\n"
           "            running_var=self.running_var if update else None,\n"
           "            momentum=momentum if update else 0.0, eps=self.eps, layout=self.layout,\n"
           "            activation=self.activation, residual=residual, n_threads=self.n_threads)\n"
           "        if update:\n"
           "            self.num_batches_tracked += 1\n",
           "            self.num_batches_tracked += 1\n"
           "            momentum = (1.0 / self.num_batches_tracked if self.momentum is None\n"
           "                        else self.momentum)\n"
           "        y, mean, invstd = _api.batch_norm_train(\n"
           "            x, self.weight, self.bias, "
           "running_mean=self.running_mean if update else None,\n"
           "            running_var=self.running_var if update else None,\n"
           "            momentum=momentum if update else 0.0, eps=self.eps, layout=self.layout,\n"
           "            activation=self.activation, residual=residual, n_threads=self.n_threads)\n",
           "BatchNorm counts a batch before its kernel call: a failing forward still counts, "
           "and with momentum=None the next batch moves the running mean by the wrong fraction"),
    Mutant("py-overlap-not-copied",
           "if lo < o_lo + out.nbytes and o_lo < lo + a.nbytes:",
           "if False:",
           "an input partially overlapping out= is read while being overwritten"),
    Mutant("py-momentum-upper-bound",
           "if not 0.0 <= momentum <= 1.0:",
           "if not 0.0 <= momentum:",
           "momentum > 1 accepted"),
    Mutant("py-eps-nan-accepted",
           "if not 0.0 <= eps < math.inf:",
           "if eps < 0.0 or eps >= math.inf:",
           "eps = NaN accepted"),
    Mutant("py-one-value-per-channel",
           "    if count == 1:\n        got = (",
           "    if count < 1:\n        got = (",
           "training on one value per channel reaches the kernel (RuntimeError, not ValueError)"),
    Mutant("py-read-only-out",
           "if not flags & _WRITEABLE:",
           "if False:",
           "a read-only out= is written"),
    Mutant("py-combine-negative-counts",
           "if (counts < 0).any():",
           "if False:",
           "combine_stats accepts negative counts"),
    Mutant("py-dx-count-zero",
           "if not count > 0:",
           "if not count >= 0:",
           "backward_dx with count 0 reaches the kernel (RuntimeError, not ValueError)"),
    # ---- the output cache and float16's vectors ------------------------------------------------
    Mutant("output-cache-never-reuses",
           "block.ptr = _take(n)",
           "block.ptr = NULL",
           "gone outputs are held but never handed out again"),
    Mutant("output-cache-ignores-limit",
           "while _count > 0 and (_count == SLOTS or _held + n > _limit):",
           "while _count == SLOTS:",
           "more than the limit is held"),
    Mutant("half-vector-clamp-swaps-operands",
           "return _mm512_max_ps(lo, v);",
           "return _mm512_max_ps(v, lo);",
           "float16's ReLU turns NaN into 0 (maxps returns its second operand on NaN); the "
           "AVX-512 build only, as the tests run at the machine's level"),
    Mutant("carried-chunk-drops-run-tails",
           "        FN(dy_run_tail)(dy, yr, x, i, len, center, a, q, d, t);\n    }",
           "    }",
           "a chunk of short runs carried across runs loses each run's last values (fewer than a "
           "step) from the backward sums"),
    Mutant("contended-calls-still-start-teams",
           "    if (p->n_threads > 1 && cbn_contended()) p->n_threads = 1;   /* a busy machine */\n",
           "",
           "calls on a busy machine keep waiting for helper threads that lost their CPU"),
    Mutant("contention-probe-never-decides",
           "    if (__atomic_exchange_n(&next_is_probe, 0, __ATOMIC_RELAXED) &&",
           "    if (0 && __atomic_exchange_n(&next_is_probe, 0, __ATOMIC_RELAXED) &&",
           "a probe team that lost its CPU again goes back to teams until a fifth of a window "
           "is lost again"),
]


# ---- locating and applying ----------------------------------------------------------------------

def searched_files(root):
    files = []
    for pattern in SEARCHED:
        files += sorted(glob.glob(os.path.join(root, pattern)))
    return files


def locate(root, mutant):
    """(path, None) of the one file holding mutant.old once, or (None, why it is stale)."""
    hits = []
    for path in searched_files(root):
        with open(path, encoding="utf-8") as f:
            n = f.read().count(mutant.old)
        if n:
            hits.append((path, n))
    total = sum(n for _, n in hits)
    if total == 1:
        return hits[0][0], None
    if total == 0:
        return None, "stale: text not found"
    where = ", ".join(f"{os.path.relpath(p, root)} x{n}" for p, n in hits)
    return None, f"stale: text ambiguous ({where})"


def apply(path, mutant):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(mutant.old, mutant.new, 1))


# ---- building and testing a tree ----------------------------------------------------------------

def snapshot(repo, dest):
    """Copy the working tree (tracked and untracked, not ignored files) of repo to dest."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=repo, check=True, capture_output=True).stdout
    for rel in filter(None, out.decode().split("\0")):
        src = os.path.join(repo, rel)
        if not os.path.isfile(src):          # deleted but still tracked
            continue
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel))


def run(cmd, cwd, timeout, env=None):
    """(returncode or "timeout", combined output); the whole process group dies on timeout."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out.decode(errors="replace")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return "timeout", out.decode(errors="replace")


def build(tree, python, timeout):
    return run([python, "setup.py", "-q", "build_ext", "--inplace"], tree, timeout)


def test_env(tree):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(tree, "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONSTARTUP", None)
    return env


def run_suite(tree, python, timeout, extra):
    return run([python, "-m", "pytest"] + PYTEST_ARGS + extra, tree, timeout, test_env(tree))


def first_failure(output):
    """The first FAILED/ERROR line of pytest's summary, the crash (a mutant that corrupts
    memory can kill the interpreter), or the output's last line."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line[:200]
    for line in output.splitlines():
        if line.startswith("Fatal Python error"):
            return "crashed: " + line[:180]
    lines = [l for l in output.splitlines() if l.strip()]
    return lines[-1][:200] if lines else ""


# ---- the run ------------------------------------------------------------------------------------

def select(only):
    if not only:
        return list(enumerate(MUTANTS, 1))
    chosen = []
    for key in only:
        for i, m in enumerate(MUTANTS, 1):
            if key == str(i) or key == m.name:
                chosen.append((i, m))
                break
        else:
            sys.exit(f"no mutant {key!r} (see --list)")
    return chosen


def list_mutants(repo):
    for i, m in enumerate(MUTANTS, 1):
        path, why = locate(repo, m)
        where = os.path.relpath(path, repo) if path else why
        print(f"{i:3d}  {m.name:40s} {where}\n     breaks: {m.breaks}")


def mutate_one(base, work, i, m, args):
    """Build and test one mutant; returns its result record."""
    record = {"id": i, "name": m.name, "breaks": m.breaks}
    path, why = locate(base, m)
    if path is None:
        return dict(record, status="stale", detail=why, seconds=0.0)
    tree = os.path.join(work, f"m{i:02d}")
    shutil.copytree(base, tree, symlinks=True)
    rel = os.path.relpath(path, base)
    apply(os.path.join(tree, rel), m)
    record["file"] = rel
    t0 = time.monotonic()
    try:
        if not rel.endswith(".py"):
            rc, out = build(tree, args.python, args.build_timeout)
            if rc != 0:
                return dict(record, status="build-failed", detail=out[-400:],
                            seconds=time.monotonic() - t0)
        rc, out = run_suite(tree, args.python, args.timeout, args.pytest_arg)
    finally:
        if not args.keep:
            shutil.rmtree(tree, ignore_errors=True)
    seconds = time.monotonic() - t0
    if rc == 0:
        status = "equivalent" if m.survives_because else "survived"
        return dict(record, status=status, detail=m.survives_because, seconds=seconds)
    if rc == "timeout":
        return dict(record, status="killed", detail=f"timeout after {args.timeout} s",
                    seconds=seconds)
    return dict(record, status="killed", detail=first_failure(out), seconds=seconds)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--only", action="append", metavar="K",
                    help="run mutant K (number or name); repeatable")
    ap.add_argument("--repo", default=REPO, help="repository root (default: this checkout)")
    ap.add_argument("--python", default=sys.executable, help="interpreter that builds and tests")
    ap.add_argument("--timeout", type=float, default=1200.0,
                    help="seconds for one mutant's test run (default 1200)")
    ap.add_argument("--build-timeout", type=float, default=600.0)
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip checking that the unmutated tree passes")
    ap.add_argument("--keep", action="store_true", help="keep the mutated trees")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    ap.add_argument("--pytest-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for pytest (e.g. a test path); repeatable")
    args = ap.parse_args(argv)

    if args.list:
        list_mutants(args.repo)
        return 0
    chosen = select(args.only)
    work = tempfile.mkdtemp(prefix="cbn-mutate-")
    base = os.path.join(work, "base")
    print(f"work dir {work}", flush=True)
    snapshot(args.repo, base)
    rc, out = build(base, args.python, args.build_timeout)
    if rc != 0:
        sys.exit(f"the unmutated tree does not build:\n{out[-2000:]}")
    rc, out = run([args.python, "-c", "import cbn; print(cbn.__file__)"], base, 120,
                  test_env(base))
    if rc != 0 or not out.strip().startswith(os.path.join(base, "src")):
        sys.exit(f"the tests would not import the copy's cbn: {out.strip()}")
    if not args.no_baseline:
        t0 = time.monotonic()
        rc, out = run_suite(base, args.python, args.timeout, args.pytest_arg)
        if rc != 0:
            sys.exit(f"the unmutated tree fails its tests ({first_failure(out)}): fix that first")
        print(f"baseline: the unmutated tree passes ({time.monotonic() - t0:.0f} s)", flush=True)

    results = []
    for i, m in chosen:
        r = mutate_one(base, work, i, m, args)
        results.append(r)
        print(f"{i:3d} {m.name:40s} {r['status']:12s} {r['seconds']:6.0f} s  {r['detail']}",
              flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)

    counts = {s: sum(r["status"] == s for r in results)
              for s in ("killed", "survived", "equivalent", "stale", "build-failed")}
    tested = counts["killed"] + counts["survived"] + counts["equivalent"]
    rate = counts["killed"] / tested if tested else 0.0
    print(f"\n{len(results)} mutants: {counts['killed']} killed, {counts['survived']} survived, "
          f"{counts['equivalent']} equivalent, {counts['stale']} stale, "
          f"{counts['build-failed']} did not build; kill rate {rate:.0%} of {tested} tested")
    for r in results:
        if r["status"] in ("survived", "stale", "build-failed"):
            print(f"  {r['status']}: {r['id']} {r['name']}: {r['breaks']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"counts": counts, "kill_rate": rate, "results": results}, f, indent=1)
    return 0 if counts["survived"] == counts["stale"] == counts["build-failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
