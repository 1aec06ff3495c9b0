#!/usr/bin/env python3
"""A small PyTorch inference loop that grows its batch until the GPU says no.

    vramguard run --budget 2GiB -- python3 examples/infer.py

Under vramguard, torch sees the budget as the card's size
(torch.cuda.mem_get_info) and the allocation that would pass it fails with
torch.cuda.OutOfMemoryError, as on a card that small.
"""
import sys

try:
    import torch
except ImportError:
    sys.exit("examples/infer.py needs PyTorch (pip install torch); "
             "build/alloc-until-refused does the same without it")

if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to PyTorch")

free, total = torch.cuda.mem_get_info()
print(f"device 0 as this process sees it: {total / 2**30:.2f} GiB total, "
      f"{free / 2**30:.2f} GiB free")

model = torch.nn.Sequential(
    torch.nn.Linear(4096, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 1000)
).cuda().eval()

batch = 256
kept = []  # keep each output so use grows until the budget refuses
with torch.inference_mode():
    while True:
        try:
            x = torch.randn(batch, 4096, device="cuda")
            kept.append(model(x))
            kept.append(x)
        except torch.cuda.OutOfMemoryError:
            held = torch.cuda.memory_allocated() / 2**30
            print(f"refused at batch {batch}: {held:.2f} GiB allocated by PyTorch")
            break
        batch *= 2
