#!/usr/bin/env python3
"""The multi-process GPU checks of the shim's cache mode, for tests/gpu/run_pool.sh.

Each subcommand runs one scenario (its own child processes, each under its
own timeout), prints what it saw (for the log) and RESULT rows
(_gpucommon.py) that run_pool.sh collects. Child output is copied indented,
so the children's own RESULT lines are not collected twice. CUDART| and
POOL| lines are table rows for run_pool.sh. Anything raised is a FAIL row.

    cache_mode.py cudart-pairs --bin STATIC_CUDART --preload SHIM [--rounds 5] [--pairs 2000]
    cache_mode.py torch-same   --preload SHIM [--steps 60]
    cache_mode.py torch-oom    --preload SHIM [--budget-gib 2]
    cache_mode.py pool-bench   --bin POOL_BENCH
    cache_mode.py shim-threads --bin BENCH_PAIRS --preload SHIM [--rounds 11]

"Default" below is the shim with VRAMGUARD_POOL unset (the pass-through
shim); "cache" is the shim with VRAMGUARD_POOL=cache.
"""
import argparse
import os
import re
import signal
import statistics
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _gpucommon import GIB, first_line, result, say, sh, show  # noqa: E402

PY = sys.executable or "python3"
DROP = ("VRAMGUARD_", "CUDA_DEVICE_MEMORY_", "PYTORCH_CUDA_ALLOC_CONF",
        "PYTORCH_NO_CUDA_MEMORY_CACHING", "CUBLAS_WORKSPACE_CONFIG", "LD_PRELOAD")


def env_for(mode, preload, **extra):
    """native | default (shim, VRAMGUARD_POOL unset) | cache (shim, =cache)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROP)}
    env["PYTHONUNBUFFERED"] = "1"
    if mode != "native":
        env["LD_PRELOAD"] = preload
    if mode == "cache":
        env["VRAMGUARD_POOL"] = "cache"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def rows_of(text):
    out = []
    for ln in text.splitlines():
        if ln.startswith("RESULT|"):
            parts = ln.split("|", 3)
            if len(parts) == 4:
                out.append((parts[1], parts[2], parts[3]))
    return out


def last_err(err):
    return (err.strip().splitlines() or ["(no stderr)"])[-1][:150]


def q(v, frac):
    """Nearest-rank quantile, as gpu_common.h's."""
    v = sorted(v)
    if not v:
        return 0.0
    i = int(frac * (len(v) - 1) + 0.5)
    return v[min(i, len(v) - 1)]


# ------------------------------------------------------------ 1. static cudart

MODES = ("native", "default", "cache")


def cudart_pairs(a):
    """static_cudart pairs N, the three modes interleaved (the order rotates
    each round), one process each."""
    got = {m: [] for m in MODES}  # (p50, p10, p90) per round
    errors = []
    for r in range(a.rounds):
        order = MODES[r % 3:] + MODES[:r % 3]
        for m in order:
            t0 = time.time()
            rc, out, err = sh([a.bin, "pairs", str(a.pairs)], env_for(m, a.preload), a.timeout)
            mt = re.search(r"^PAIRS\|(\d+)\|(\d+)\|(\d+)$", out, re.M)
            say(f"round {r + 1} {m}: exit {rc} in {time.time() - t0:.1f} s: "
                + (f"median {mt.group(1)} ns, p10 {mt.group(2)}, p90 {mt.group(3)}" if mt
                   else "no PAIRS line"))
            if err.strip():
                show(f"stderr ({m}, round {r + 1})", err, 5)
            if rc != 0 or not mt:
                errors.append(f"{m} round {r + 1}: exit {rc}, "
                              + next((d for c, s, d in rows_of(out) if s == "FAIL"),
                                     last_err(err)))
                continue
            got[m].append(tuple(int(x) for x in mt.groups()))
    for m in MODES:
        v = got[m]
        if not v:
            result(f"cudart_pairs_{m}", "FAIL", "no round finished")
            continue
        med = statistics.median(x[0] for x in v)
        p10 = statistics.median(x[1] for x in v)
        p90 = statistics.median(x[2] for x in v)
        lo, hi = min(x[0] for x in v), max(x[0] for x in v)
        nat = statistics.median(x[0] for x in got["native"]) if got["native"] else 0
        speed = f"{nat / med:.1f}" if nat and med else "-"
        say(f"CUDART|{m} | {len(v)} x {a.pairs} | {med:.0f} | {p10:.0f} | {p90:.0f} | "
            f"{lo}–{hi} | {speed}")
        result(f"cudart_pairs_{m}", "info",
               f"{len(v)} processes x {a.pairs} cudaMalloc+cudaFree 4 KiB: median of process "
               f"medians {med:.0f} ns/pair (p10 {p10:.0f}, p90 {p90:.0f}; process medians "
               f"{lo}..{hi})")
    # paired per round: native / mode
    ratios = {}
    for m in ("default", "cache"):
        n = min(len(got["native"]), len(got[m]))
        ratios[m] = [got["native"][i][0] / got[m][i][0] for i in range(n) if got[m][i][0]]
    rc_ = ratios["cache"]
    if errors:
        result("cudart_pairs_errors", "FAIL", "; ".join(errors)[:280])
    if not rc_:
        result("cudart_cache_speedup", "FAIL", "no paired native/cache rounds")
        return
    med = statistics.median(rc_)
    rd = ratios["default"]
    result("cudart_cache_speedup", "PASS" if med >= 20 else "FAIL",
           f"native/cache per round x{med:.1f} (rounds x{min(rc_):.1f}..x{max(rc_):.1f}, "
           f"target >= x20); native/default x{statistics.median(rd):.2f}" if rd else
           f"native/cache per round x{med:.1f} (target >= x20)")


# ------------------------------------------------------------ 3. PyTorch

TRAIN = os.path.join(HERE, "torch_pool.py")
OOM = os.path.join(HERE, "torch_oom.py")


def torch_same(a):
    """The deterministic training run in both modes, with PyTorch's caching
    allocator and without it (every tensor its own cudaMalloc): the same
    parameters and losses, bit for bit, within each allocator setting."""
    sums = {}
    for alloc, extra in (("caching", {}), ("uncached", {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})):
        for m in ("default", "cache"):
            t0 = time.time()
            rc, out, err = sh([PY, TRAIN, "train", "--steps", str(a.steps)],
                              env_for(m, a.preload, **extra), a.timeout)
            show(f"torch_pool.py train, {alloc} allocator, {m} (exit {rc}, "
                 f"{time.time() - t0:.1f} s)", out + err, 12)
            rows = rows_of(out)
            mt = re.search(r"^SUM\|(\w+)\|(\w+)\|([^|]+)\|([^|]+)\|([\d.]+)$", out, re.M)
            st = rows[0][1] if rows else "FAIL"
            if rc != 0 or not mt or st != "PASS":
                result(f"train_{alloc}_{m}", "FAIL", f"exit {rc}: "
                       + (rows[0][2] if rows else last_err(err)))
                continue
            sums[(alloc, m)] = mt.groups()
            result(f"train_{alloc}_{m}", "info", rows[0][2])
    for alloc in ("caching", "uncached"):
        d, c = sums.get((alloc, "default")), sums.get((alloc, "cache"))
        if not d or not c:
            result(f"same_{alloc}", "FAIL", "a run did not finish (rows above)")
            continue
        same = d[0] == c[0] and d[1] == c[1]
        speed = f"; train time default {float(d[4]):.2f} s, cache {float(c[4]):.2f} s"
        result(f"same_{alloc}", "PASS" if same else "FAIL",
               f"{alloc} allocator, {a.steps} steps: params sha256 {d[0][:16]} (default) vs "
               f"{c[0][:16]} (cache), losses {d[1][:12]} vs {c[1][:12]}, last loss {d[3]} vs "
               f"{c[3]}: {'bit-identical' if same else 'DIFFERENT'}{speed}")
    k = [sums.get(("caching", "default")), sums.get(("uncached", "default"))]
    if all(k):
        result("same_across_allocators", "info",
               f"caching vs uncached allocator (default mode): params "
               f"{'identical' if k[0][0] == k[1][0] else 'different'}, losses "
               f"{'identical' if k[0][1] == k[1][1] else 'different'} (not required)")


def shape(text):
    """A message with its numbers and addresses blanked."""
    text = re.sub(r"\d+(\.\d+)? ?(bytes|[KMGT]iB|B)\b", "#", text)  # 250.00 MiB, 0 bytes
    return re.sub(r"0x[0-9a-f]+|\d+(\.\d+)?", "#", text)


def torch_oom(a):
    """torch_oom.py (256 MiB tensors: not pooled, but the pool's chunks are
    charged against the same budget) and small tensors with the uncached
    allocator (1 MiB each: pooled), under a 2 GiB budget, default vs cache."""
    budget = a.budget_gib * GIB
    want = f"total capacity of {a.budget_gib}.00 GiB"
    big, small = {}, {}
    for m in ("default", "cache"):
        env = env_for(m, a.preload, VRAMGUARD_BUDGET=f"{a.budget_gib}GiB")
        rc, out, err = sh([PY, OOM, "default", "--cap", str(3 * GIB), "--budget", str(budget)],
                          env, a.timeout)
        show(f"torch_oom.py default under {a.budget_gib} GiB, {m} (exit {rc})", out + err, 12)
        rows = rows_of(out)
        if not rows:
            result(f"oom_256MiB_{m}", "FAIL", f"exit {rc}: {last_err(err)}")
        else:
            big[m] = rows[0]
            result(f"oom_256MiB_{m}", rows[0][1], rows[0][2])
        env = env_for(m, a.preload, VRAMGUARD_BUDGET=f"{a.budget_gib}GiB",
                      PYTORCH_NO_CUDA_MEMORY_CACHING="1")
        rc, out, err = sh([PY, TRAIN, "small-oom", "--budget", str(budget)], env, a.timeout)
        show(f"torch_pool.py small-oom under {a.budget_gib} GiB, uncached allocator, {m} "
             f"(exit {rc})", out + err, 12)
        rows = rows_of(out)
        mo = re.search(r"^OOM\|([^|]*)\|(.*)$", out, re.M)
        if not rows:
            result(f"oom_1MiB_{m}", "FAIL", f"exit {rc}: {last_err(err)}")
        else:
            small[m] = (rows[0], mo.groups() if mo else ("?", "?"))
            result(f"oom_1MiB_{m}", rows[0][1], rows[0][2])
    if len(big) == 2:
        d, c = big["default"][2], big["cache"][2]
        held = [re.search(r"held ([\d.]+ GiB)", x) for x in (d, c)]
        # the message up to "is free." (the rest is cut at a length that
        # depends on the numbers in it)
        msg = [re.search(r"refused: (.*?is free\.|.{0,80})", x) for x in (d, c)]
        same_shape = all(msg) and shape(msg[0].group(1)) == shape(msg[1].group(1))
        ok = (big["default"][1] == "PASS" and big["cache"][1] == "PASS" and want in d and
              want in c and same_shape and all(held) and held[0].group(1) == held[1].group(1))
        result("oom_256MiB_same", "PASS" if ok else "FAIL",
               f"torch.OutOfMemoryError with '{want}' in both: "
               f"{'yes' if want in d and want in c else 'NO'}; held "
               f"{held[0].group(1) if held[0] else '?'} (default) vs "
               f"{held[1].group(1) if held[1] else '?'} (cache); messages up to 'is free.' "
               f"{'alike but for numbers' if same_shape else 'DIFFER'}")
    else:
        result("oom_256MiB_same", "FAIL", "a run gave no row")
    if len(small) == 2:
        (rd, od), (rc_, oc) = small["default"], small["cache"]
        ok = rd[1] == "PASS" and rc_[1] == "PASS" and od[0] == oc[0] and \
            shape(od[1]) == shape(oc[1])
        result("oom_1MiB_same", "PASS" if ok else "FAIL",
               f"uncached allocator, 1 MiB tensors: default raised {od[0]} ('{od[1][:60]}'), "
               f"cache raised {oc[0]} ('{oc[1][:60]}'); both within the budget: "
               f"{'yes' if rd[1] == 'PASS' and rc_[1] == 'PASS' else 'NO'}")
    else:
        result("oom_1MiB_same", "FAIL", "a run gave no row")


# ------------------------------------------------------------ 4. threads

POOL_ROW = re.compile(r"^\| (driver cuMemAlloc\+cuMemFree|vg_pool_alloc\+vg_pool_free) \| "
                      r"([\d.]+ \w+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", re.M)


def pool_bench(a):
    t0 = time.time()
    rc, out, err = sh([a.bin], os.environ.copy(), a.timeout)
    say(f"pool_bench: exit {rc} in {time.time() - t0:.0f} s")
    show("pool_bench", out + err, 40)
    rows = POOL_ROW.findall(out)
    get = {}
    for what, size, threads, med, p10, p90 in rows:
        get[(what, size, int(threads))] = (float(med), float(p10), float(p90))
        say(f"POOL|pool_bench: {what} | {size} | {threads} | {med} | {p10} | {p90}")
    drv = get.get(("driver cuMemAlloc+cuMemFree", "4.00 KiB", 1))
    pool = {t: get.get(("vg_pool_alloc+vg_pool_free", "4.00 KiB", t)) for t in (1, 2, 4, 8, 16)}
    missing = [t for t, v in pool.items() if not v]
    if rc != 0 or not drv or missing:
        result("pool_bench_4KiB", "FAIL", f"exit {rc}; {len(rows)} rows; missing thread counts "
               f"{missing}{'' if drv else ' and the driver pair'}: {last_err(err)}")
        return
    stats = re.search(r"^stats: .*$", out, re.M)
    result("pool_bench_4KiB", "info",
           "vg_pool_alloc+vg_pool_free 4 KiB, ns/pair/thread, median (p10..p90) of 15 rounds: "
           + ", ".join(f"{t} thr {v[0]:.0f} ({v[1]:.0f}..{v[2]:.0f})" for t, v in pool.items())
           + f"; driver cuMemAlloc+cuMemFree, 1 thread, same run: {drv[0]:.0f} "
             f"({drv[1]:.0f}..{drv[2]:.0f}); target 1 thread <= 100 ns: "
             f"{'met' if pool[1][0] <= 100 else 'MISSED'}" + (f"; {stats.group(0)}" if stats else ""))


def example(a):
    """The eviction example (tests/examples/model_slots.c): exit 0 and its summary."""
    t0 = time.time()
    rc, out, err = sh([a.bin], timeout=a.timeout)
    show(f"model_slots (exit {rc}, {time.time() - t0:.1f} s)", out + err, 200)
    m = re.search(r"^evictions .*$", out, re.M)
    result("model_slots", "PASS" if rc == 0 and m else "FAIL",
           f"exit {rc}: {m.group(0) if m else last_err(err)}")


BENCH_THREADS = re.compile(r"^BENCH\|4 KiB pairs, (\d+) threads? \((\d+) x (\d+) each\), pairs/s \| "
                           r"([\d.]+) \| ([\d.]+) \| ([\d.]+) \| \| ([\d.]+) \| ([\d.]+) \| "
                           r"([\d.]+)–([\d.]+) \| ([\d.]+)–([\d.]+)$", re.M)
BENCH_PAIR = re.compile(r"^BENCH\|(4 KiB|1 MiB|64 MiB) pair \((\d+) x (\d+)\) \| (\d+) \| (\d+) \| "
                        r"([\d.]+) \|", re.M)


def shim_threads(a):
    """bench_pairs with VRAMGUARD_POOL=cache in the environment: its shim
    workers (plain and with a 70 GiB budget) run cache mode, its native
    ones ignore it. cuMemAlloc+cuMemFree of 4 KiB from 1 to 16 threads,
    10000 pairs a thread per round: with 500 (bench_pairs' default on the
    GPU) a cache-mode round is 50-100 us a thread, the order of the threads'
    start-up skew, which the round's wall time includes."""
    env = env_for("native", a.preload, VRAMGUARD_POOL="cache")
    t0 = time.time()
    rc, out, err = sh([a.bin, "--preload", a.preload, "--rounds", str(a.rounds), "--threads",
                       "1,2,4,8,16", "--pairs", "10000", "--budget", "70GiB"], env, a.timeout)
    say(f"bench_pairs under VRAMGUARD_POOL=cache: exit {rc} in {time.time() - t0:.0f} s")
    show("bench_pairs", out + err, 60)
    for c, s, d in rows_of(out):
        if s == "FAIL":
            result(f"cache_{c}", s, d)
    pairs = BENCH_PAIR.findall(out)
    for size, rounds, n, nat, shim, ratio in pairs:
        result(f"cache_pair_{size.replace(' ', '')}", "info",
               f"one cuMemAlloc+cuMemFree of {size}, {rounds} x {n} timed one by one: native "
               f"{nat} ns, shim in cache mode {shim} ns (x{float(ratio):.3f} paired; "
               f"native/cache x{int(nat) / max(int(shim), 1):.1f})")
    rows = BENCH_THREADS.findall(out)
    summary = []
    for (thr, rounds, n, nat, shim, _r, _b, _rb, n10, n90, s10, s90) in rows:
        t = int(thr)
        # pairs/s for all threads -> ns per pair per thread (a high rate is a low time)
        ns = lambda rate: t * 1e9 / float(rate) if float(rate) else 0.0  # noqa: E731
        say(f"POOL|bench_pairs: native cuMemAlloc+cuMemFree | 4.00 KiB | {t} | {ns(nat):.1f} | "
            f"{ns(n90):.1f} | {ns(n10):.1f}")
        say(f"POOL|bench_pairs: shim cache mode cuMemAlloc+cuMemFree | 4.00 KiB | {t} | "
            f"{ns(shim):.1f} | {ns(s90):.1f} | {ns(s10):.1f}")
        summary.append(f"{t} thr native {ns(nat):.0f}, cache {ns(shim):.0f}")
    if rc != 0 or len(rows) != 5:
        result("cache_threads", "FAIL", f"exit {rc}, {len(rows)} of 5 thread rows: {last_err(err)}")
    else:
        result("cache_threads", "info",
               "cuMemAlloc+cuMemFree 4 KiB, ns/pair/thread (wall time of all threads; median of "
               f"7 rounds): {'; '.join(summary)}")


# ------------------------------------------------------------ main

def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=["cudart-pairs", "torch-same", "torch-oom", "pool-bench",
                                   "shim-threads", "example"])
    p.add_argument("--bin")
    p.add_argument("--preload")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pairs", type=int, default=2000)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--budget-gib", type=int, default=2)
    p.add_argument("--timeout", type=int, default=60, help="per child process, seconds")
    a = p.parse_args()
    fn = {"cudart-pairs": cudart_pairs, "torch-same": torch_same, "torch-oom": torch_oom,
          "pool-bench": pool_bench, "shim-threads": shim_threads, "example": example}[a.cmd]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        fn(a)
        return 0
    except BaseException as exc:  # noqa: BLE001 - a crash must be a row
        traceback.print_exc()
        result(a.cmd, "FAIL", f"{type(exc).__name__}: {first_line(exc)}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
