#!/usr/bin/env python3
"""PyTorch allocates 256 MiB tensors until torch.OutOfMemoryError.

MODE: default | expandable (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True)
      | async (backend:cudaMallocAsync). Under the shim with a budget,
torch.cuda.mem_get_info() must report the budget as the total and the
refusal must come at or below it. Only torch.OutOfMemoryError counts as a
refusal; any other exception is a failure.
"""
import os

from _gpucommon import CHUNK, gib, parse, run, verdict, first_line

CONF = {"default": None, "expandable": "expandable_segments:True",
        "async": "backend:cudaMallocAsync"}


def check(args):
    if CONF[args.mode]:
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = CONF[args.mode]
    else:
        os.environ.pop("PYTORCH_CUDA_ALLOC_CONF", None)
    import torch

    free, total = torch.cuda.mem_get_info()
    print(f"torch {torch.__version__}: mem_get_info free {free} total {total}", flush=True)
    held, refused = [], None
    while len(held) * CHUNK + CHUNK <= args.cap:
        try:
            held.append(torch.empty(CHUNK, dtype=torch.uint8, device="cuda"))
        except torch.OutOfMemoryError as exc:
            refused = exc
            break
    torch.cuda.synchronize()
    allocated = len(held) * CHUNK
    reserved = torch.cuda.memory_reserved()
    try:  # after freeing, the process must be able to allocate again
        del held
        torch.cuda.empty_cache()
        torch.empty(CHUNK, dtype=torch.uint8, device="cuda")
        after = ""
    except torch.OutOfMemoryError as exc:
        after = f"; 256 MiB after freeing all REFUSED: {first_line(exc)}"
    total_ok = args.budget == 0 or total == args.budget
    stop = f"refused: {first_line(refused)}" if refused else "cap reached"
    detail = (f"mem_get_info total {gib(total)} free {gib(free)}; held {gib(allocated)} "
              f"(reserved {gib(reserved)}) then {stop}{after}")
    return verdict(args.budget, allocated, refused, args.cap, total_ok and not after), detail


if __name__ == "__main__":
    a = parse(list(CONF), "default", __doc__)
    run(f"torch_{a.mode}", lambda: check(a))
