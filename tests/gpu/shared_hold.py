#!/usr/bin/env python3
"""A process that takes device memory under a shared budget.

    shared_hold.py hold MIB [--seconds S] [--ready FILE]
        One allocation of MIB MiB, then sleep S seconds (default: until
        killed). FILE is written once the memory is held.
    shared_hold.py request MIB [--expect ok|oom] [--go FILE] [--retry-ms N]
        Start (CUDA context made, nothing allocated), wait for FILE to exist
        (it holds the wall-clock time an event happened, e.g. a kill), then
        ask for MIB MiB (FILE: "T [T0]", seconds since the epoch; e.g. when
        a holder was reaped, and when it was killed), retrying a refusal every 20 ms for up to N ms
        (default 0: once). --expect oom: PASS when the request is refused
        with an out-of-memory error; ok: PASS when it is granted (within
        --within S seconds of the event, when given).
    shared_hold.py fill --chunk MIB [--hold S] [--barrier DIR --n N]
        Start, charge the context with one small allocation, wait until N
        processes have reached DIR, then allocate MIB-MiB chunks until
        out of memory, hold them S seconds, free and exit.

--backend torch (the GPU machine), driver (the CUDA driver API through
ctypes, looked up in the global namespace so a preloaded shim is what is
called: runs over the test driver too) or auto (torch when it imports).

Prints one RESULT line (_gpucommon.py); anything raised is a FAIL row.
Progress lines (HELD, REFUSED, ...) go to stdout for the caller's log.
"""
import argparse
import ctypes
import os
import sys
import time

from _gpucommon import MIB, first_line, run

CUDA_ERROR_OUT_OF_MEMORY = 2


class OutOfMemory(Exception):
    pass


class TorchBackend:
    name = "torch"

    def __init__(self):
        import torch

        self.torch = torch
        free, total = torch.cuda.mem_get_info()  # makes the context
        self.info = f"torch {torch.__version__}, mem_get_info free {free} total {total}"

    def alloc(self, nbytes):
        try:
            return self.torch.empty(nbytes, dtype=self.torch.uint8, device="cuda")
        except self.torch.OutOfMemoryError as exc:
            raise OutOfMemory(first_line(exc)) from None

    def free(self, buf):
        pass  # the tensor goes when the caller drops its last reference

    def finish(self):
        self.torch.cuda.synchronize()
        self.torch.cuda.empty_cache()


class DriverBackend:
    name = "driver"

    def __init__(self):
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
        cu = ctypes.CDLL(None)  # the global namespace: a preloaded shim first
        self.cu = cu
        dev, ctx = ctypes.c_int(), ctypes.c_void_p()
        for what, rc in (("cuInit", lambda: cu.cuInit(0)),
                         ("cuDeviceGet", lambda: cu.cuDeviceGet(ctypes.byref(dev), 0)),
                         ("cuDevicePrimaryCtxRetain",
                          lambda: cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev)),
                         ("cuCtxSetCurrent", lambda: cu.cuCtxSetCurrent(ctx))):
            code = rc()
            if code != 0:
                raise RuntimeError(f"{what}: CUresult {code}")
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        cu.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total))
        self.info = f"driver API, cuMemGetInfo free {free.value} total {total.value}"

    def alloc(self, nbytes):
        ptr = ctypes.c_uint64()
        rc = self.cu.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(nbytes))
        if rc == CUDA_ERROR_OUT_OF_MEMORY:
            raise OutOfMemory(f"cuMemAlloc_v2: CUDA_ERROR_OUT_OF_MEMORY ({rc})")
        if rc != 0:
            raise RuntimeError(f"cuMemAlloc_v2({nbytes}): CUresult {rc}")
        return ptr.value

    def free(self, buf):
        rc = self.cu.cuMemFree_v2(ctypes.c_uint64(buf))
        if rc != 0:
            raise RuntimeError(f"cuMemFree_v2: CUresult {rc}")

    def finish(self):
        pass


def backend(which):
    if which == "torch":
        return TorchBackend()
    if which == "driver":
        return DriverBackend()
    try:
        import torch  # noqa: F401
    except ImportError:
        return DriverBackend()
    return TorchBackend()


def say(*args):
    print(*args, flush=True)


def hold(a, be):
    buf = be.alloc(a.mib * MIB)
    say(f"HELD {a.mib} MiB pid {os.getpid()} ({be.info})")
    if a.ready:
        with open(a.ready + ".tmp", "w") as f:
            f.write(f"{os.getpid()}\n")
        os.rename(a.ready + ".tmp", a.ready)
    deadline = time.time() + (a.seconds if a.seconds > 0 else 3600)
    while time.time() < deadline:
        time.sleep(0.2)
    be.free(buf)
    buf = None
    be.finish()
    return "info", f"pid {os.getpid()} held {a.mib} MiB for {a.seconds} s and freed it"


def request(a, be):
    t_event = None
    if a.go:
        say(f"WAITING for {a.go} ({be.info})")
        end = time.time() + 60
        while not os.path.exists(a.go):
            if time.time() > end:
                return "FAIL", f"{a.go} never appeared"
            time.sleep(0.01)
        with open(a.go) as f:  # "EVENT [EARLIER]": e.g. reaped, killed
            times = [float(x) for x in f.read().split()]
        t_event = times[0] if times else None
        t_first = times[1] if len(times) > 1 else None
    else:
        t_first = None
    t0 = time.time()
    tries, err = 0, None
    while True:
        tries += 1
        try:
            buf = be.alloc(a.mib * MIB)
            break
        except OutOfMemory as exc:
            err = exc
            buf = None
            if (time.time() - t0) * 1000 >= a.retry_ms:
                break
            time.sleep(0.02)
    now = time.time()
    names = (a.events.split(",") + ["the earlier event"])[:2]
    since = f"{now - t_event:.3f} s after {names[0]}" if t_event else f"{now - t0:.3f} s"
    if t_first:
        since += f" ({now - t_first:.3f} s after {names[1]})"
    if buf is not None:
        say(f"GRANTED {a.mib} MiB after {tries} tries, {since}")
        be.free(buf)
        buf = None
        be.finish()
        detail = f"{a.mib} MiB granted ({be.name}) after {tries} tries, {since}"
        late = a.within > 0 and t_event is not None and now - t_event > a.within
        if late:
            detail += f" (later than {a.within} s)"
        return ("PASS" if a.expect == "ok" and not late else "FAIL"), detail
    say(f"REFUSED {a.mib} MiB: {err}")
    detail = f"{a.mib} MiB refused after {tries} tries, {since}: {err}"
    return ("PASS" if a.expect == "oom" else "FAIL"), detail


def fill(a, be):
    small = None
    try:  # the first allocation measures and charges the context
        small = be.alloc(2 * MIB)
    except OutOfMemory as exc:
        say(f"small allocation refused: {exc}")
    waited = ""
    if a.barrier:
        with open(os.path.join(a.barrier, f"ready.{os.getpid()}"), "w") as f:
            f.write("1\n")
        end = time.time() + 60
        while True:
            n = sum(1 for x in os.listdir(a.barrier) if x.startswith("ready."))
            if n >= a.n or time.time() > end:
                break
            time.sleep(0.02)
        waited = f", {n}/{a.n} at the barrier"
    held, err = [], None
    while len(held) < a.max_chunks:
        try:
            held.append(be.alloc(a.chunk * MIB))
        except OutOfMemory as exc:
            err = exc
            break
    count = len(held)
    total = count * a.chunk
    say(f"FILLED pid {os.getpid()} {total} MiB in {len(held)} chunks; "
        f"stopped by: {err or 'cap'}")
    time.sleep(a.hold)
    while held:  # no name left bound to a tensor: torch frees it here
        be.free(held.pop())
    if small is not None:
        be.free(small)
        small = None
    be.finish()
    status = "info" if err is not None else "FAIL"
    return status, (f"pid {os.getpid()} held {total} MiB ({count} x {a.chunk} MiB, "
                    f"{be.name}){waited}; stopped by: {err or 'the chunk cap (no refusal)'}")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["hold", "request", "fill"])
    p.add_argument("mib", type=int, nargs="?", default=0)
    p.add_argument("--backend", choices=["auto", "torch", "driver"], default="auto")
    p.add_argument("--seconds", type=float, default=0)
    p.add_argument("--ready")
    p.add_argument("--expect", choices=["ok", "oom"], default="ok")
    p.add_argument("--go")
    p.add_argument("--retry-ms", type=int, default=0)
    p.add_argument("--events", default="the event,the earlier event",
                   help="request: what the two times in --go FILE are, for the report")
    p.add_argument("--within", type=float, default=0,
                   help="request: FAIL if granted later than this many seconds after the event")
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--max-chunks", type=int, default=256)
    p.add_argument("--hold", type=float, default=3)
    p.add_argument("--barrier")
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--check", default=None, help="the RESULT row's name")
    a = p.parse_args()
    fn = {"hold": hold, "request": request, "fill": fill}[a.mode]
    run(a.check or f"shared_{a.mode}", lambda: fn(a, backend(a.backend)))


if __name__ == "__main__":
    sys.exit(main())
