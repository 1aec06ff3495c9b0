#!/usr/bin/env python3
"""PyTorch under the shim's cache mode: the child runs of pool6.py.

    torch_pool.py train [--steps 60] [--seed 1234]
        A deterministic training run (fixed seed, CPU-generated data,
        torch.use_deterministic_algorithms, cuDNN deterministic, no TF32,
        only ops with deterministic CUDA kernels): a small conv net and
        an MLP, batch sizes varying by step so that tensors of many sizes
        (hundreds of bytes to a few MiB) come and go. Prints
        SUM|<sha256 of the final parameters>|<sha256 of every step's loss,
        as float.hex>|<first loss>|<last loss>|<train seconds>
        and one RESULT row: PASS when every loss is finite and the loss fell.
        Run it with PYTORCH_NO_CUDA_MEMORY_CACHING=1 and every tensor is
        its own cudaMalloc of its exact size: the pool's small blocks.
    torch_pool.py small-oom [--budget BYTES] [--cap BYTES] [--size BYTES]
        Tensors of --size (default 1 MiB: the largest pooled request) until
        the first out-of-memory error or --cap bytes (default 3 GiB). Meant
        for PYTORCH_NO_CUDA_MEMORY_CACHING=1, where that error is cudaMalloc's
        own (a RuntimeError, not always torch.OutOfMemoryError). Prints
        OOM|<exception type>|<first line>, and one RESULT row: under a budget
        PASS when an out-of-memory error came with between half the budget
        and the budget held, mem_get_info's total is the budget, and a
        tensor can be had again after freeing; natively (--budget 0) when
        the cap is reached.
"""
import argparse
import hashlib
import math
import os
import struct
import time

from _gpucommon import GIB, MIB, first_line, gib, run

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS


def tensor_bytes(t):
    t = t.detach().to("cpu").contiguous()
    try:
        return t.numpy().tobytes()
    except (RuntimeError, TypeError, ImportError):  # no numpy
        flat = t.flatten().tolist()
        return struct.pack(f"<{len(flat)}f", *flat)


def train(a):
    import torch

    torch.manual_seed(a.seed)
    # warn_only: an op without a deterministic kernel is named on stderr
    # (the log) instead of stopping the run
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = a.device
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    uncached = os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING", "") not in ("", "0")
    gen = torch.Generator().manual_seed(a.seed)  # the data, made on the CPU

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Sequential(
                torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
                torch.nn.AvgPool2d(4))  # not AdaptiveAvgPool2d: its CUDA backward uses atomics
            self.mlp = torch.nn.Sequential(
                torch.nn.Linear(16 * 16 + 3 * 16, 512), torch.nn.ReLU(),
                torch.nn.Linear(512, 512), torch.nn.ReLU(),
                torch.nn.Linear(512, 10))

        def forward(self, x):
            pooled = torch.nn.functional.avg_pool2d(x, 4).flatten(1)  # what the labels use
            return self.mlp(torch.cat([self.conv(x).flatten(1), pooled], dim=1))

    model = Net().to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    # labels from 4x4-pooled inputs: something the net can learn in 60 steps
    teacher = torch.randn(3 * 4 * 4, 10, generator=gen)
    losses = []
    t0 = time.time()
    for step in range(a.steps):
        batch = 16 + (step * 37) % 113  # 16..128: many tensor sizes
        x = torch.randn(batch, 3, 16, 16, generator=gen)
        y = (torch.nn.functional.avg_pool2d(x, 4).flatten(1) @ teacher).argmax(dim=1)
        x, y = x.to(dev), y.to(dev)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
        if step % 10 == 9:
            sync()  # cudaDeviceSynchronize: freed blocks reusable
    sync()
    train_s = time.time() - t0
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor_bytes(p))
    params = h.hexdigest()
    lsum = hashlib.sha256(" ".join(float.hex(v) for v in losses).encode()).hexdigest()
    print(f"SUM|{params}|{lsum}|{losses[0]!r}|{losses[-1]!r}|{train_s:.3f}", flush=True)
    reserved = torch.cuda.memory_reserved() if dev == "cuda" else 0
    print(f"torch {torch.__version__} on {dev}; uncached allocator: {uncached}; reserved "
          f"{reserved} B; losses every 10 steps: "
          + " ".join(f"{v:.5f}" for v in losses[::10]), flush=True)
    finite = all(math.isfinite(v) for v in losses)
    fell = sum(losses[-10:]) < sum(losses[:10])
    detail = (f"{a.steps} steps in {train_s:.2f} s ({'uncached' if uncached else 'caching'} "
              f"allocator), loss {losses[0]:.4f} -> {losses[-1]:.4f}; params sha256 "
              f"{params[:16]}, losses sha256 {lsum[:16]}")
    return ("PASS" if finite and fell else "FAIL"), detail


def small_oom(a):
    import torch

    free, total = torch.cuda.mem_get_info()
    print(f"torch {torch.__version__}: mem_get_info free {free} total {total}", flush=True)
    held, refused = [], None
    t0 = time.time()
    while (len(held) + 1) * a.size <= a.cap:
        try:
            held.append(torch.empty(a.size, dtype=torch.uint8, device="cuda"))
        except RuntimeError as exc:  # torch.OutOfMemoryError is one
            if "out of memory" not in str(exc).lower():
                raise
            refused = exc
            break
    torch.cuda.synchronize()
    secs = time.time() - t0
    n = len(held)
    allocated = n * a.size
    kind = type(refused).__name__ if refused else "none"
    line = first_line(refused) if refused else "cap reached"
    print(f"OOM|{kind}|{line}", flush=True)
    del held
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    try:
        torch.empty(a.size, dtype=torch.uint8, device="cuda")
        torch.cuda.synchronize()
        after = ""
    except RuntimeError as exc:
        after = f"; {a.size} B after freeing all REFUSED: {first_line(exc)}"
    if a.budget:
        ok = refused is not None and a.budget // 2 <= allocated <= a.budget and \
            total == a.budget and not after
    else:
        ok = refused is None and not after
    detail = (f"mem_get_info total {gib(total)} free {gib(free)}; {n} x {a.size} B = "
              f"{gib(allocated)} in {secs:.2f} s, then {kind}: {line}{after}")
    return ("PASS" if ok else "FAIL"), detail


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=["train", "small-oom"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--budget", type=int, default=0)
    p.add_argument("--cap", type=int, default=3 * GIB)
    p.add_argument("--size", type=int, default=MIB)
    p.add_argument("--device", default="cuda", help="train only: cpu tries the script itself")
    args = p.parse_args()
    if args.cmd == "train":
        run("torch_pool_train", lambda: train(args))
    else:
        run("torch_small_oom", lambda: small_oom(args))
