"""Optional peers beyond PyTorch, each used only inside its own worker process (`worker.py`):

* ``jax``  a batch norm written in jax.numpy and compiled with ``jax.jit`` on the CPU: training
           forward (y and the statistics), backward through ``jax.vjp`` of that forward (as JAX
           differentiates it: the statistics are recomputed inside the compiled function),
           inference. JAX keeps its own thread pool; with ``n_threads=1`` it is asked for one
           thread through XLA_FLAGS (set by the worker before JAX is imported).
* ``ort``  ONNX Runtime's ``BatchNormalization`` operator (inference only), the model built with
           the ``onnx`` package's helpers, ``intra_op_num_threads=n_threads``. ONNX's operator
           takes channels on axis 1, so NHWC cases with more than 2 dimensions are left out.

Neither is a dependency of cbn: `make` returns None when the library is missing or cannot
express the case.
"""
import numpy as np

from .._layout import channel_axis, is_channels_last
from .cases import EPS, MOMENTUM, channel_count


def available(impl):
    import importlib.util
    mods = {"jax": ("jax",), "ort": ("onnxruntime", "onnx")}[impl]
    return all(importlib.util.find_spec(m) is not None for m in mods)


def version(impl):
    try:
        if impl == "jax":
            import jax
            return jax.__version__
        import onnxruntime
        return onnxruntime.__version__
    except Exception:
        return None


def xla_flags(n_threads):
    """XLA_FLAGS for a JAX worker: one thread when asked for one, XLA's default pool otherwise."""
    if n_threads == 1:
        return "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return ""


def make(impl, op, inputs, n_threads):
    """A zero-argument callable for `impl` on `op`, or None when it cannot run this case."""
    if not available(impl) or op not in ("train", "backward", "infer"):
        return None
    if impl == "jax":
        return _jax(op, inputs)
    return _ort(op, inputs, n_threads)


def _jax(op, inputs):
    try:
        import jax
        import jax.numpy as jnp
    except Exception:
        return None
    if inputs["x"].dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    layout = inputs["layout"]
    ndim = inputs["x"].ndim
    axis = channel_axis(layout, ndim)
    axes = tuple(i for i in range(ndim) if i != axis)
    bshape = tuple(-1 if i == axis else 1 for i in range(ndim))
    M = inputs["x"].size // channel_count(inputs["x"].shape, layout)
    put = jax.device_put
    x, w, b = put(inputs["x"]), put(inputs["weight"]), put(inputs["bias"])
    rm, rv = put(inputs["running_mean"]), put(inputs["running_var"])

    def forward(x, w, b):
        mean = jnp.mean(x, axis=axes)
        var = jnp.var(x, axis=axes)
        invstd = jax.lax.rsqrt(var + EPS)
        y = (x - mean.reshape(bshape)) * (invstd * w).reshape(bshape) + b.reshape(bshape)
        return y, mean, var

    if op == "train":
        @jax.jit
        def train(x, w, b, rm, rv):
            y, mean, var = forward(x, w, b)
            new_rm = (1 - MOMENTUM) * rm + MOMENTUM * mean
            new_rv = (1 - MOMENTUM) * rv + MOMENTUM * var * (M / (M - 1))
            return y, new_rm, new_rv
        return lambda: train(x, w, b, rm, rv)[0].block_until_ready()
    if op == "backward":
        dy = put(inputs["dy"])

        @jax.jit
        def backward(dy, x, w, b):
            _, vjp = jax.vjp(lambda x, w, b: forward(x, w, b)[0], x, w, b)
            return vjp(dy)  # (dx, dweight, dbias)
        return lambda: backward(dy, x, w, b)[0].block_until_ready()

    @jax.jit
    def infer(x, rm, rv, w, b):
        scale = w * jax.lax.rsqrt(rv + EPS)
        return x * scale.reshape(bshape) + (b - rm * scale).reshape(bshape)
    return lambda: infer(x, rm, rv, w, b).block_until_ready()


def _ort(op, inputs, n_threads):
    x = inputs["x"]
    if op != "infer" or (is_channels_last(inputs["layout"]) and x.ndim > 2):
        return None
    try:
        import onnx
        import onnxruntime as ort
        from onnx import helper, numpy_helper
    except Exception:
        return None
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    params = [numpy_helper.from_array(inputs[k], name) for k, name in
              (("weight", "scale"), ("bias", "B"), ("running_mean", "mean"),
               ("running_var", "var"))]
    node = helper.make_node("BatchNormalization", ["X", "scale", "B", "mean", "var"], ["Y"],
                            epsilon=EPS)
    graph = helper.make_graph(
        [node], "cbn_bench_bn", [helper.make_tensor_value_info("X", elem, list(x.shape))],
        [helper.make_tensor_value_info("Y", elem, list(x.shape))], initializer=params)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(n_threads)
    opts.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
    except Exception:  # e.g. a dtype this build has no kernel for
        return None
    feed = {"X": x}
    return lambda: sess.run(None, feed)[0]
