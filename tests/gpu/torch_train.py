#!/usr/bin/env python3
"""A small PyTorch training loop for the audit log.

A 4-layer MLP (1024 wide) trained for --steps steps (default 200) on random
batches of --batch (256) with Adam, then an evaluation pass on a larger
batch, torch.cuda.empty_cache() between phases (so the driver sees frees as
well as allocations), and one deliberately oversized request (--oversize
MiB, default 4096: more than a 2 GiB budget) that must fail with
torch.OutOfMemoryError when a budget is given (a refusal for the timeline)
and is skipped natively. The model is kept to the end, so the leak report
has something live at exit.

    torch_train.py [--steps N] [--batch B] [--budget BYTES] [--oversize MIB]

PASS: the loss fell, every step ran, and (under a budget) the oversized
request was refused. One RESULT line (_gpucommon.py).
"""
import argparse
import time

from _gpucommon import MIB, first_line, gib, run


def check(a):
    import torch

    free, total = torch.cuda.mem_get_info()
    print(f"torch {torch.__version__}: mem_get_info free {free} total {total}", flush=True)
    torch.manual_seed(0)
    dev = "cuda"
    width, classes = 1024, 16
    model = torch.nn.Sequential(
        torch.nn.Linear(512, width), torch.nn.ReLU(),
        torch.nn.Linear(width, width), torch.nn.ReLU(),
        torch.nn.Linear(width, width), torch.nn.ReLU(),
        torch.nn.Linear(width, classes)).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    # a fixed target function, so the loss can fall
    teacher = torch.randn(512, classes, device=dev)
    losses = []
    t0 = time.time()
    for step in range(a.steps):
        x = torch.randn(a.batch, 512, device=dev)
        y = (x @ teacher).argmax(dim=1)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == a.steps - 1:
            losses.append(float(loss))
        if step == a.steps // 2:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    torch.cuda.synchronize()
    train_s = time.time() - t0
    peak = torch.cuda.max_memory_allocated()
    torch.cuda.empty_cache()
    with torch.no_grad():  # evaluation on a larger batch: a second plateau
        x = torch.randn(a.batch * 16, 512, device=dev)
        acc = float((model(x).argmax(1) == (x @ teacher).argmax(1)).float().mean())
        del x
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    over = "skipped (no budget)"
    refused_ok = True
    if a.budget:
        try:
            big = torch.empty(a.oversize * MIB, dtype=torch.uint8, device=dev)
            del big
            over = f"{a.oversize} MiB GRANTED"
            refused_ok = False
        except torch.OutOfMemoryError as exc:
            over = f"{a.oversize} MiB refused: {first_line(exc)[:60]}"
    torch.cuda.synchronize()
    fell = len(losses) >= 2 and losses[-1] < losses[0]
    print("losses every 20 steps:", " ".join(f"{v:.3f}" for v in losses), flush=True)
    detail = (f"{a.steps} steps x batch {a.batch} in {train_s:.1f} s, loss {losses[0]:.3f} -> "
              f"{losses[-1]:.3f}, eval acc {acc:.2f}; peak allocated {gib(peak)}; "
              f"mem_get_info total {gib(total)}; oversize {over}")
    return ("PASS" if fell and refused_ok else "FAIL"), detail


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--budget", type=int, default=0)
    p.add_argument("--oversize", type=int, default=4096)
    args = p.parse_args()
    run("torch_train", lambda: check(args))
