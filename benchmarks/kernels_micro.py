"""Micro-benchmark of the fused Pallas kernels (albert_jax.kernels) against the XLA path they replace.

Times, at one encoder layer's activation shapes (default: ALBERT-large at seq 512, batch 32: 16384 rows,
H=1024, intermediate 4096, bf16), forward and forward+backward (the vjp w.r.t. every input) of

* ``add_layer_norm(x, bias, residual, scale, shift)`` against ``LayerNorm(x + bias + residual)`` as the
  model writes it (the bias added in the activation dtype, flax ``nn.LayerNorm(use_fast_variance=False)``),
* ``bias_gelu(x, bias)`` against ``jax.nn.gelu(x + bias)``,

each jitted alone, and prints one JSON line: milliseconds (median of --repeats), the kernel's speed-up,
the effective HBM bandwidth of the kernels (the bytes they must move: forward reads x and residual and
writes y; backward reads x, residual and g and writes dv), and the largest difference from the XLA path (over the XLA result's largest value).
Caveat: alone, XLA cannot fuse the bias add into the producing matmul's epilogue as it may in the model;
the step's own time (benchmarks/train_step.py) is the final word.

Needs a GPU: on CPU the kernels only run in Pallas' interpret mode, which says nothing about speed; it is
refused there unless --allow-cpu (then use small --rows).

    python benchmarks/kernels_micro.py --rows 16384 --hidden 1024 --intermediate 4096
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from albert_jax.kernels import add_layer_norm, bias_gelu


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kernels_micro.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--rows", type=int, default=16384, help="batch x sequence length (default 32 x 512)")
    p.add_argument("--hidden", type=int, default=1024, help="LayerNorm width H (ALBERT-large: 1024)")
    p.add_argument("--intermediate", type=int, default=4096, help="bias_gelu width (ALBERT-large: 4096)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="activation dtype")
    p.add_argument("--eps", type=float, default=1e-12, help="LayerNorm epsilon (ALBERT: 1e-12)")
    p.add_argument(
        "--gelu", choices=("tanh", "erf"), default="tanh", help="gelu_new/gelu_fast (tanh) or gelu (erf)"
    )
    p.add_argument("--repeats", type=int, default=20, help="timed calls of each function (median reported)")
    p.add_argument("--allow-cpu", action="store_true", help="run in interpret mode on CPU (correctness only)")
    return p


def _time_ms(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _fwd_and_fwd_bwd(fn):
    def fwd_bwd(*args):
        *inputs, g = args
        out, vjp = jax.vjp(fn, *inputs)
        return out, vjp(g)

    return jax.jit(lambda *args: fn(*args[:-1])), jax.jit(fwd_bwd)


def _compare(kernel, xla, args, bytes_fwd, bytes_bwd, repeats) -> dict:
    result = {}
    k_fwd, k_both = _fwd_and_fwd_bwd(kernel)
    x_fwd, x_both = _fwd_and_fwd_bwd(xla)
    for label, k, x in (("fwd", k_fwd, x_fwd), ("fwd_bwd", k_both, x_both)):
        k_ms, x_ms = _time_ms(k, args, repeats), _time_ms(x, args, repeats)
        moved = bytes_fwd + (bytes_bwd if label == "fwd_bwd" else 0)
        result[label] = {
            "pallas_ms": round(k_ms, 4),
            "xla_ms": round(x_ms, 4),
            "speedup": round(x_ms / k_ms, 3),
            "pallas_gb_per_s": round(moved / (k_ms * 1e-3) / 1e9, 1),
        }
    got, ref = k_both(*args), x_both(*args)
    diffs = [  # bf16: mostly the XLA path's own rounding (it rounds x + bias + residual, and in bf16)
        float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))) / jnp.max(jnp.abs(b)))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref))
    ]
    result["max_diff_over_max_xla"] = {"out": diffs[0], "grads": max(diffs[1:])}
    return result


def main(argv=None) -> int:
    parser = _parser()
    a = parser.parse_args(argv)
    backend = jax.default_backend()
    if backend != "gpu" and not a.allow_cpu:
        parser.error(f"needs a GPU (the JAX backend is {backend}); --allow-cpu runs interpret mode, slowly")
    if backend != "gpu":
        print("kernels_micro.py: warning: interpret mode on CPU; the times say nothing", file=sys.stderr)
    if min(a.rows, a.hidden, a.intermediate, a.repeats) < 1:
        parser.error("--rows, --hidden, --intermediate and --repeats must be positive")
    dtype = jnp.dtype(a.dtype)
    rng = np.random.default_rng(0)
    act = lambda *shape: jnp.asarray(rng.normal(size=shape), dtype)
    param = lambda n, mean=0.0: jnp.asarray(mean + 0.1 * rng.normal(size=n), jnp.float32)
    approximate = a.gelu == "tanh"
    item = dtype.itemsize

    ln = lambda v, s, t: nn.LayerNorm(epsilon=a.eps, dtype=dtype, use_fast_variance=False).apply(
        {"params": {"scale": s, "bias": t}}, v
    )
    h = a.hidden
    ln_args = (act(a.rows, h), param(h), act(a.rows, h), param(h, 1.0), param(h), act(a.rows, h))
    ln_result = _compare(
        lambda x, b, r, s, t: add_layer_norm(x, b, r, s, t, eps=a.eps),
        lambda x, b, r, s, t: ln(x + b.astype(dtype) + r, s, t),
        ln_args,
        3 * a.rows * h * item,
        4 * a.rows * h * item,
        a.repeats,
    )
    f = a.intermediate
    gelu_args = (act(a.rows, f), param(f), act(a.rows, f))
    gelu_result = _compare(
        lambda x, b: bias_gelu(x, b, approximate=approximate),
        lambda x, b: jax.nn.gelu(x + b.astype(dtype), approximate=approximate),
        gelu_args,
        2 * a.rows * f * item,
        3 * a.rows * f * item,
        a.repeats,
    )
    print(
        json.dumps(
            {
                "benchmark": "kernels_micro",
                "device": jax.devices()[0].device_kind,
                "backend": backend,
                "jax": jax.__version__,
                "rows": a.rows,
                "hidden": h,
                "intermediate": f,
                "dtype": a.dtype,
                "gelu": a.gelu,
                "add_layer_norm": ln_result,
                "bias_gelu": gelu_result,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
