#!/usr/bin/env python3
"""What NVML reports for device 0 while this process holds a CUDA context
and 512 MiB (created through torch). Informational: the shim may not hook
NVML yet, so this never fails the suite unless it crashes.
pynvml when importable, else ctypes on libnvidia-ml.so.1.
"""
import ctypes

from _gpucommon import MIB, gib, parse, run


class NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong),
                ("used", ctypes.c_ulonglong)]


def nvml_memory():
    try:
        import pynvml
        pynvml.nvmlInit()
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
        return "pynvml", info.total, info.free, info.used
    except ImportError:
        pass
    lib = ctypes.CDLL("libnvidia-ml.so.1")
    handle = ctypes.c_void_p()
    mem = NvmlMemory()
    for name, call in (("nvmlInit_v2", lambda: lib.nvmlInit_v2()),
                       ("nvmlDeviceGetHandleByIndex_v2",
                        lambda: lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(handle))),
                       ("nvmlDeviceGetMemoryInfo",
                        lambda: lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(mem)))):
        rc = call()
        if rc != 0:
            raise RuntimeError(f"{name} returned {rc}")
    return "ctypes", mem.total, mem.free, mem.used


def check(args):
    import torch

    x = torch.empty(512 * MIB, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    cfree, ctotal = torch.cuda.mem_get_info()
    try:
        how, total, free, used = nvml_memory()
    except Exception as exc:  # noqa: BLE001 - NVML missing is news, not failure
        return "info", f"NVML unavailable ({type(exc).__name__}: {exc}); CUDA total {gib(ctotal)}"
    del x
    view = ""
    if args.budget:
        view = "; NVML shows the budget" if total == args.budget else "; NVML shows the card, not the budget"
    return "info", (f"{how}: NVML total {gib(total)} free {gib(free)} used {gib(used)}; "
                    f"CUDA total {gib(ctotal)} free {gib(cfree)}{view}")


if __name__ == "__main__":
    a = parse(["view"], "view", __doc__)
    run("nvml_view", lambda: check(a))
