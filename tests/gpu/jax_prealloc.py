#!/usr/bin/env python3
"""What JAX preallocates and can allocate.

MODE: prealloc (XLA's default: 75% of the total cuMemGetInfo reports) |
noprealloc (XLA_PYTHON_CLIENT_PREALLOCATE=false). Under a budget XLA must
size itself to it: bytes_limit from memory_stats() <= the budget, and
allocating 256 MiB arrays must fail (RESOURCE_EXHAUSTED) at or below it.
"""
import os

from _gpucommon import CHUNK, gib, parse, run, verdict, first_line


def is_oom(exc):
    text = str(exc)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def check(args):
    if args.mode == "noprealloc":
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    else:
        os.environ.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
    import jax
    import jax.numpy as jnp

    dev = jax.local_devices()[0]
    if dev.platform != "gpu":
        return "FAIL", f"JAX found no GPU (device 0 is {dev.platform}: {dev})"
    stats = dev.memory_stats() or {}
    limit = stats.get("bytes_limit", 0)
    print(f"jax {jax.__version__}: {dev.device_kind} memory_stats {stats}", flush=True)
    held, refused = [], None
    while len(held) * CHUNK + CHUNK <= args.cap:
        try:
            x = jnp.zeros((CHUNK // 4,), dtype=jnp.float32)
            x.block_until_ready()
            held.append(x)
        except Exception as exc:  # XlaRuntimeError / JaxRuntimeError
            if not is_oom(exc):
                raise
            refused = exc
            break
    allocated = len(held) * CHUNK
    peak = (dev.memory_stats() or {}).get("peak_bytes_in_use", 0)
    del held
    limit_ok = args.budget == 0 or 0 < limit <= args.budget
    stop = f"refused: {first_line(refused)}" if refused else "cap reached"
    detail = (f"bytes_limit {gib(limit)}, peak in use {gib(peak)}; held {gib(allocated)} "
              f"then {stop}")
    if args.budget == 0 and args.mode == "prealloc":
        return ("PASS" if refused is None else "FAIL"), detail
    return verdict(args.budget, allocated, refused, args.cap, limit_ok), detail


if __name__ == "__main__":
    a = parse(["prealloc", "noprealloc"], "prealloc", __doc__)
    run(f"jax_{a.mode}", lambda: check(a))
