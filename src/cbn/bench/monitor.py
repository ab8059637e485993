"""Other processes' CPU use while the benchmark runs, and the busy process of --busy."""
import os
import signal
import subprocess
import sys
import time

# Cores' worth of CPU used by other processes above which timings are flagged as unreliable.
BUSY = 0.2


def _process_jiffies(pid):
    """utime + stime of process `pid` in clock ticks (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


class CpuMonitor:
    """CPU time that other processes took while we measured (Linux /proc/stat; else None).

    sample() returns the other processes' busy CPU seconds per wall-clock second since the last
    call (1.0 = one core fully busy): on a machine with as many cores as threads, anything
    sizeable there slows multithreaded kernels down in steps of scheduler time slices. The
    processes in `ignore_pids` (the benchmark's own workers and its --busy spinner) do not count.
    """

    def __init__(self, ignore_pids=()):
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.ignore_pids = list(ignore_pids)
        self.last = self._read()

    @staticmethod
    def _busy_jiffies():
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        v = [int(t) for t in fields[1:9]]  # user nice system idle iowait irq softirq steal
        return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]

    def _read(self):
        busy = self._busy_jiffies()
        if busy is None:
            return None
        ours = sum(_process_jiffies(p) or 0 for p in self.ignore_pids)
        return busy - ours, time.process_time(), time.perf_counter()

    def sample(self):
        now = self._read()
        prev, self.last = self.last, now
        if now is None or prev is None or now[2] - prev[2] <= 0:
            return None
        others = (now[0] - prev[0]) / self.hz - (now[1] - prev[1])
        # /proc/stat counts whole clock ticks per CPU: allow one tick of slack per CPU.
        others -= (os.cpu_count() or 1) / self.hz
        return max(0.0, others / (now[2] - prev[2]))


def idle_check(seconds=0.5, ignore_pids=()):
    """Others' CPU load (cores) over `seconds` while this process sleeps."""
    mon = CpuMonitor(ignore_pids)
    time.sleep(seconds)
    return mon.sample()


class BusyProcess:
    """One process spinning in pure Python beside the benchmark (--busy): a core's worth of
    contention, as from any other program. pause()/resume() stop and continue it (SIGSTOP,
    SIGCONT) for measurements that need an idle machine in between. Use as a context manager."""

    def __init__(self):
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                     stdin=subprocess.DEVNULL)
        time.sleep(0.1)  # let it reach the loop (and the scheduler notice it)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.05)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)
        time.sleep(0.05)

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        return False
