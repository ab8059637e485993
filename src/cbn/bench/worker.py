"""Peers in their own processes: each library's threads and allocator undisturbed by cbn's.

The parent starts one worker per library (`Worker`) and wraps each case in a `Remote` candidate
for the timing engine; the worker (``python -m cbn.bench.worker``) builds the same inputs from
the same seed (`arrays.make_inputs`, which never calls cbn), times its own calls and answers one
JSON line per request on its stdout. Requests:

  {"cmd": "setup", "impl", "op", "layout", "shape", "dtype", "threads", "seed"}
      -> {"ok": true, "check": [a strided sample of the output]} or {"ok": false, "why": ...}
  {"cmd": "sample", "number": n, "warm": bool}   -> {"s": seconds per call}
  {"cmd": "quit"}
"""
import json
import os
import subprocess
import sys

CHECK_ELEMS = 4096  # values of each peer's output sent back to be compared with cbn's


class WorkerError(RuntimeError):
    pass


class Worker:
    """One worker process hosting `impl` at `n_threads` threads."""

    def __init__(self, impl, n_threads):
        from .optional_peers import xla_flags
        env = dict(os.environ)
        if impl == "jax":
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla_flags(n_threads)).strip()
            env.setdefault("JAX_PLATFORMS", "cpu")
        self.impl = impl
        self.proc = subprocess.Popen([sys.executable, "-m", "cbn.bench.worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                     text=True, bufsize=1)

    @property
    def pid(self):
        return self.proc.pid

    def request(self, **msg):
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError) as e:
            raise WorkerError(f"{self.impl} worker: {e}")
        if not line:
            raise WorkerError(f"{self.impl} worker exited (status {self.proc.wait()})")
        return json.loads(line)

    def setup(self, op, inputs_key, n_threads):
        """Prepare `op` on the inputs named by inputs_key (shape, layout, dtype, seed); returns
        the check sample of its output, or None when the library cannot run this case."""
        shape, layout, dtype, seed = inputs_key
        r = self.request(cmd="setup", impl=self.impl, op=op, shape=list(shape), layout=layout,
                         dtype=dtype, threads=n_threads, seed=seed)
        return r["check"] if r["ok"] else None

    def close(self):
        if self.proc.poll() is None:
            try:
                self.request(cmd="quit")
            except (WorkerError, ValueError):
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Remote:
    """A worker's current case as a candidate of `timing.time_interleaved`."""

    def __init__(self, worker):
        self.worker = worker

    def sample(self, number, warm):
        return self.worker.request(cmd="sample", number=int(number), warm=bool(warm))["s"]


def serve(requests, reply):
    """The worker's loop: `requests` yields dicts, `reply(dict)` answers each."""
    from .arrays import make_inputs
    from .peers import make_candidates, main_output, set_torch_threads, strided_sample
    from .timing import Local
    inputs_key, inputs, current = None, None, None
    for msg in requests:
        cmd = msg["cmd"]
        if cmd == "quit":
            return
        if cmd == "sample":
            reply({"s": current.sample(msg["number"], msg["warm"])})
            continue
        key = (tuple(msg["shape"]), msg["layout"], msg["dtype"], msg["seed"])
        if key != inputs_key:
            inputs_key, inputs, current = None, None, None  # free the last case's arrays first
            inputs = make_inputs(key[0], key[1], key[2], seed=key[3])
            inputs_key = key
        if msg["impl"] == "torch":
            set_torch_threads(msg["threads"])
        current = None
        try:
            fn = make_candidates(msg["op"], inputs, msg["threads"], [msg["impl"]]).get(
                msg["impl"])
            out = None if fn is None else main_output(fn(), msg["layout"])
        except Exception as e:  # the library failed on this case: report it, keep serving
            reply({"ok": False, "why": f"{type(e).__name__}: {e}"})
            continue
        if fn is None:
            reply({"ok": False, "why": f"{msg['impl']} cannot run this case"})
            continue
        current = Local(fn)
        reply({"ok": True, "check": strided_sample(out, CHECK_ELEMS).tolist()})


def main():
    # The protocol owns the original stdout; anything a library prints goes to stderr.
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(obj):
        channel.write(json.dumps(obj) + "\n")
        channel.flush()

    serve((json.loads(line) for line in sys.stdin if line.strip()), reply)


if __name__ == "__main__":
    main()
