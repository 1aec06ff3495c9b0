#!/usr/bin/env python3
"""CuPy allocates 256 MiB arrays until cupy.cuda.memory.OutOfMemoryError.

MODE: default (CuPy's MemoryPool) | async (cupy.cuda.MemoryAsyncPool, which
draws through cuMemAllocFromPoolAsync). Under a budget, memGetInfo's total
must read the budget and the refusal must come at or below it.
"""
from _gpucommon import CHUNK, gib, parse, run, verdict, first_line


def check(args):
    import cupy

    if args.mode == "async":
        cupy.cuda.set_allocator(cupy.cuda.MemoryAsyncPool().malloc)
    free, total = cupy.cuda.runtime.memGetInfo()
    print(f"cupy {cupy.__version__}: memGetInfo free {free} total {total}", flush=True)
    held, refused = [], None
    while len(held) * CHUNK + CHUNK <= args.cap:
        try:
            held.append(cupy.empty(CHUNK, dtype=cupy.uint8))
        except cupy.cuda.memory.OutOfMemoryError as exc:
            refused = exc
            break
    cupy.cuda.Device().synchronize()
    allocated = len(held) * CHUNK
    try:  # after freeing, the process must be able to allocate again
        del held
        cupy.get_default_memory_pool().free_all_blocks()
        cupy.empty(CHUNK, dtype=cupy.uint8)
        after = ""
    except cupy.cuda.memory.OutOfMemoryError as exc:
        after = f"; 256 MiB after freeing all REFUSED: {first_line(exc)}"
    total_ok = args.budget == 0 or total == args.budget
    stop = f"refused: {first_line(refused)}" if refused else "cap reached"
    detail = (f"memGetInfo total {gib(total)} free {gib(free)}; held {gib(allocated)} "
              f"then {stop}{after}")
    return verdict(args.budget, allocated, refused, args.cap, total_ok and not after), detail


if __name__ == "__main__":
    a = parse(["default", "async"], "default", __doc__)
    run(f"cupy_{a.mode}", lambda: check(a))
