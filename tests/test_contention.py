"""A busy machine (src/cbn/csrc/contention.c): when helper threads lose their CPU, calls run on
one thread for a while, with the same bits. The rule is checked on reported times (the
kernels report their own helper threads' wall and CPU time), each case in a fresh process with
the fallback on, since the test session turns it off (conftest.py)."""
import os
import subprocess
import sys
import textwrap

import pytest

import cbn


def run_in_fresh_process(code, fallback=None):
    env = dict(os.environ)
    env.pop("CBN_CONTENTION_FALLBACK", None)
    if fallback is not None:
        env["CBN_CONTENTION_FALLBACK"] = fallback
    prelude = "import time\nimport numpy as np\nimport cbn\nfrom cbn import _core\n"
    run = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith("ok"), run.stdout


needs_openmp = pytest.mark.skipif(not cbn.openmp_enabled(), reason="a serial build has no teams")


@needs_openmp
def test_lost_time_over_a_fifth_of_the_window_falls_back_to_one_thread():
    run_in_fresh_process("""
        assert not _core.contended()
        _core.contention_note(0.010, 0.009)      # 1 ms off the CPU (less 50 us to start)
        _core.contention_note(0.010, 0.0)        # 11 ms lost lately: under 20 of 100 ms
        assert not _core.contended()
        _core.contention_note(0.019, 0.0)        # 30 ms
        assert _core.contended()
        print("ok")
    """)


@needs_openmp
def test_a_team_of_many_helpers_counts_their_mean_loss():
    run_in_fresh_process("""
        for _ in range(2):
            _core.contention_note(0.030, 0.0, n_helpers=4)   # 7.5 ms each: 15 ms
        assert not _core.contended()
        _core.contention_note(0.030, 0.0, n_helpers=4)       # 22.5 ms
        assert _core.contended()
        print("ok")
    """)


@needs_openmp
def test_after_the_backoff_a_probe_decides():
    run_in_fresh_process("""
        _core.contention_note(0.030, 0.0)
        assert _core.contended()
        time.sleep(0.3)                          # past the 250 ms
        assert not _core.contended()
        _core.contention_note(0.002, 0.0)        # the probe lost its CPU too: one thread again,
        assert _core.contended()                 # for 500 ms (the spell came back at once)
        time.sleep(0.6)
        _core.contention_note(0.002, 0.002)      # a probe that kept its CPU: teams again ...
        assert not _core.contended()
        _core.contention_note(0.002, 0.0)        # ... until a fifth of a window is lost again
        assert not _core.contended()
        print("ok")
    """)


@needs_openmp
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_calls_while_contended_start_no_thread_and_give_the_same_bits():
    run_in_fresh_process("""
        import os
        threads = lambda: len(os.listdir("/proc/self/task"))
        x = np.random.default_rng(0).standard_normal((16, 24, 40, 40)).astype(np.float32)
        _core.contention_note(0.030, 0.0)
        assert _core.contended()
        before = threads()
        y, m, s = cbn.batch_norm_train(x, n_threads=2)
        _core.contention_note(0.030, 0.0)        # the 250 ms again, however slow the call
        dx = cbn.batch_norm_backward(x, x, m, s, n_threads=2)[0]
        assert threads() == before, "a contended call started threads"
        time.sleep(0.3)                          # the backoff is over: a team again
        y2, m2, s2 = cbn.batch_norm_train(x, n_threads=2)
        dx2 = cbn.batch_norm_backward(x, x, m2, s2, n_threads=2)[0]
        if _core.thread_limit(2) > 1:
            assert threads() > before, "no team after the backoff"
        for a, b in ((y, y2), (m, m2), (s, s2), (dx, dx2)):
            assert a.tobytes() == b.tobytes()
        print("ok")
    """)


@needs_openmp
def test_a_spell_that_comes_back_at_once_lasts_twice_as_long():
    run_in_fresh_process("""
        _core.contention_note(0.030, 0.0)
        time.sleep(0.3)                          # the 250 ms are over
        assert not _core.contended()
        _core.contention_note(0.030, 0.0)        # lost again at once: 500 ms
        time.sleep(0.3)
        assert _core.contended()
        time.sleep(0.3)
        assert not _core.contended()
        print("ok")
    """)


def test_fallback_off_in_the_environment():
    run_in_fresh_process("""
        _core.contention_note(0.030, 0.0)
        _core.contention_note(0.030, 0.0)
        assert not _core.contended()
        print("ok")
    """, fallback="0")


def test_set_contention_fallback_returns_the_previous_state_and_checks_its_argument():
    run_in_fresh_process("""
        import pytest
        assert cbn.set_contention_fallback(False) is True
        assert cbn.set_contention_fallback(False) is False
        _core.contention_note(0.030, 0.0)
        assert not _core.contended()             # off: no call falls back
        assert cbn.set_contention_fallback(True) is False
        with pytest.raises(TypeError, match="bool"):
            cbn.set_contention_fallback(1)
        print("ok")
    """)
