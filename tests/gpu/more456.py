#!/usr/bin/env python3
"""The multi-step GPU checks of the audit log and shared budgets, for tests/gpu/run_more.sh.

Each subcommand runs one scenario (its own child processes, CLI calls and
checks), prints what it saw (for more.log) and RESULT rows (_gpucommon.py)
that run_more.sh collects. Output of child processes is copied indented, so
their own RESULT lines are not collected twice; BENCH| lines are
table rows for run_more.sh. Anything raised is a FAIL row; every child is
killed (by its pid) before a subcommand returns.

    more456.py audit-check --cli VG --log LOG [--svg FILE] [--copy-log FILE]
    more456.py badptr      --bin BADPTR --preload SHIM --work DIR
    more456.py overhead    --bin BENCH_PAIRS --preload SHIM --work DIR [--rounds R]
    more456.py shared-pair --cli VG --preload SHIM --work DIR --name NAME
    more456.py shared-many --cli VG --preload SHIM --work DIR --name NAME [--procs 8]
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _gpucommon import GIB, MIB, first_line, gib, result, say, sh, show  # noqa: E402

PY = sys.executable or "python3"
HOLD = os.path.join(HERE, "shared_hold.py")
CHILDREN = []  # Popen objects to kill (by pid) on the way out


def spawn(cmd, env, logpath):
    f = open(logpath, "w")
    p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    p._logfile = f
    CHILDREN.append(p)
    return p


def kill_children():
    for p in CHILDREN:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def rows_of(text):
    """RESULT rows of a child's output: [(check, status, detail)]."""
    out = []
    for ln in text.splitlines():
        if ln.startswith("RESULT|"):
            parts = ln.split("|", 3)
            if len(parts) == 4:
                out.append((parts[1], parts[2], parts[3]))
    return out


def shim_env(preload, **extra):
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("VRAMGUARD_") or k in ("CUDA_DEVICE_MEMORY_LIMIT",
                                               "PYTORCH_CUDA_ALLOC_CONF"):
            del env[k]
    env["LD_PRELOAD"] = preload
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def native_env():
    env = shim_env("")
    del env["LD_PRELOAD"]
    return env


# ------------------------------------------------------------ audit log

def parse_log(path):
    """Every line of a JSON Lines audit log: (events, bad lines, counts)."""
    events, bad, ops = [], 0, {}
    with open(path, "rb") as f:
        for raw in f:
            try:
                ev = json.loads(raw)
                if not isinstance(ev, dict) or ev.get("v") != 1 or "op" not in ev:
                    raise ValueError("not a v1 event")
            except ValueError:
                bad += 1
                continue
            events.append(ev)
            ops[ev["op"]] = ops.get(ev["op"], 0) + 1
    return events, bad, ops


def skipped_of(stderr):
    m = re.search(r"skipped (\d+) line", stderr)
    return int(m.group(1)) if m else 0


def audit_check(a):
    log = a.log
    if not os.path.exists(log):
        result("audit_log", "FAIL", f"{log} was not written")
        return
    size = os.path.getsize(log)
    events, bad, ops = parse_log(log)
    say(f"audit log {log}: {size} bytes, {len(events)} events, {bad} unparsable; ops {ops}")
    sites = sum(1 for e in events if e.get("site"))
    if a.copy_log and size <= 8 * MIB:
        shutil.copyfile(log, a.copy_log)
    # the summary
    rc, out, err = sh([a.cli, "audit", log])
    show("vramguard audit LOG", out + err, 80)
    skipped = skipped_of(err)
    ok = (rc == 0 and skipped == 0 and bad == 0 and ops.get("alloc", 0) > 0
          and ops.get("free", 0) > 0)
    result("audit_summary", "PASS" if ok else "FAIL",
           f"vramguard audit exit {rc}, {skipped} lines skipped (own parse: {bad} bad of "
           f"{len(events) + bad}); {ops.get('alloc', 0)} alloc, {ops.get('free', 0)} free, "
           f"{ops.get('refuse', 0)} refuse, {ops.get('leak', 0)} leak events; "
           f"{sites} events with a call site; {size} bytes")
    # leaks
    rc, out, err = sh([a.cli, "audit", "--leaks", log])
    show("vramguard audit --leaks LOG", out + err, 60)
    m = re.search(r"Live at exit: (\d+) allocations?, ([^,]+), from (\d+) call sites?", out)
    live = sum(e.get("count", 0) for e in events if e.get("op") == "leak")
    ok = rc == 0 and m is not None
    result("audit_leaks", "PASS" if ok else "FAIL",
           (f"exit {rc}: {m.group(0)}" if m else f"exit {rc}: no 'Live at exit' line")
           + f"; the log's leak events count {live}")
    # top call sites
    rc, out, err = sh([a.cli, "audit", "--top", "5", log])
    show("vramguard audit --top 5 LOG", out + err, 40)
    # the SVG
    svg = a.svg
    rc, out, err = sh([a.cli, "audit", "--svg", svg, log])
    if err.strip():
        show("vramguard audit --svg (stderr)", err, 10)
    try:
        root = ET.parse(svg).getroot()
        text = read(svg)
        has_budget = re.search(r"budget", text, re.I) is not None
        marks = sum(1 for el in root.iter() if "refusal" in el.get("class", "").split())
        refusals = ops.get("refuse", 0)
        ok = rc == 0 and root.tag.endswith("svg") and has_budget and (marks > 0 or not refusals)
        result("audit_svg", "PASS" if ok else "FAIL",
               f"exit {rc}; {os.path.getsize(svg)} bytes of well-formed XML, root <svg>, "
               f"budget {'shown' if has_budget else 'NOT shown'}, {marks} elements of class "
               f"refusal (legend included) for {refusals} refusals ({os.path.basename(svg)})")
    except (ET.ParseError, OSError) as exc:
        result("audit_svg", "FAIL", f"exit {rc}; {svg}: {first_line(exc)}")
    # the CSV
    rc, out, err = sh([a.cli, "audit", "--csv", log])
    lines = out.splitlines()
    show("vramguard audit --csv LOG (head)", "\n".join(lines[:8]), 10)
    header_ok = bool(lines) and lines[0].strip() == "Thread,Time,Action,Pointer,Size,Stream"
    actions = {}
    for ln in lines[1:]:
        parts = ln.split(",")
        if len(parts) == 6:
            actions[parts[2]] = actions.get(parts[2], 0) + 1
    rows = sum(actions.values())
    want = ops.get("alloc", 0) + ops.get("free", 0)
    ok = rc == 0 and header_ok and actions.get("allocate", 0) == ops.get("alloc", 0) and \
        actions.get("free", 0) == ops.get("free", 0) and \
        actions.get("allocate failure", 0) == ops.get("refuse", 0)
    result("audit_csv", "PASS" if ok else "FAIL",
           f"exit {rc}; RMM header {'yes' if header_ok else 'NO'}; {rows} rows {actions} "
           f"(the log: {ops.get('alloc', 0)} alloc + {ops.get('free', 0)} free = {want}, "
           f"{ops.get('refuse', 0)} refuse)")


# ------------------------------------------------------------ bad pointers

def badptr(a):
    w = a.work
    native_out = os.path.join(w, "badptr.native.txt")
    rc, out, err = sh([a.bin], env=native_env())
    with open(native_out, "w") as f:
        f.write(out)
    show(f"badptr_gpu natively (exit {rc})", out + err)
    native = {c: int(r) for c, _p, r in re.findall(r"^CASE\|(\w+)\|([0-9a-f]+)\|(-?\d+)$",
                                                    out, re.M)}
    codes = ", ".join(f"{c} {r}" for c, r in native.items())
    result("native_codes", "info" if rc == 0 and len(native) == 4 else "FAIL",
           f"the driver's own codes: {codes or 'none'} (exit {rc})")
    for policy, extra in (("warn", ["--codes", native_out]), ("reject", ["--expect", "1"])):
        log = os.path.join(w, f"badptr.{policy}.jsonl")
        if os.path.exists(log):
            os.unlink(log)
        env = shim_env(a.preload, VRAMGUARD_AUDIT=log, VRAMGUARD_ON_BAD_POINTER=policy,
                       VRAMGUARD_BACKTRACE=4)
        rc, out, err = sh([a.bin] + extra, env=env)
        show(f"badptr_gpu under the shim, {policy} (exit {rc})", out + err)
        for check, status, detail in rows_of(out):
            result(f"{policy}_{check}", status, detail)
        cases = {c: (int(p, 16), int(r)) for c, p, r in
                 re.findall(r"^CASE\|(\w+)\|([0-9a-f]+)\|(-?\d+)$", out, re.M)}
        try:
            events, bad, _ops = parse_log(log)
        except OSError as exc:
            result(f"{policy}_audit_classes", "FAIL", f"audit log: {first_line(exc)}")
            continue
        evs = [e for e in events if e.get("op") == "bad_ptr"]
        for e in evs:
            say(f"    bad_ptr event: {json.dumps({k: e.get(k) for k in ('api', 'ptr', 'class', 'offset', 'pattern', 'policy', 'rc')})}")
        verdicts, ok = [], bad == 0 and len(cases) == 4
        for name, (ptr, crc) in cases.items():
            match = [e for e in evs if int(str(e.get("ptr", "0")), 16) == ptr]
            if not match:
                verdicts.append(f"{name}: NO EVENT")
                ok = False
                continue
            e = match[0]
            good = (e.get("class") == name and e.get("policy") == policy and e.get("rc") == crc
                    and (name != "interior" or e.get("offset") == 4096))
            ok = ok and good
            extra_txt = (f" +{e.get('offset')}" if name == "interior" else
                         f" '{str(e.get('pattern'))[:24]}...'" if name == "fake" and e.get("pattern")
                         else "")
            verdicts.append(f"{name}->{e.get('class')}{extra_txt} rc {e.get('rc')}"
                            + ("" if good else " (WRONG)"))
        said = len(re.findall(r"bad pointer: cuMemFree", err))
        not_called = len(re.findall(r"the driver not called", err))
        if policy == "reject":
            ok = ok and not_called == 4
        result(f"{policy}_audit_classes", "PASS" if ok else "FAIL",
               "; ".join(verdicts) + f"; {len(evs)} bad_ptr events, {bad} unparsable lines, "
               f"{said} stderr lines" + (f", {not_called} say 'driver not called'"
                                         if policy == "reject" else ""))


# ------------------------------------------------------------ overhead

PAIRED = re.compile(r"paired shim-native ([+-][\d.]+) \(p10\.\.p90 ([+-][\d.]+)\.\.([+-][\d.]+), "
                    r"x([\d.]+)\), budget-native ([+-][\d.]+)")


def overhead(a):
    w = a.work
    log = os.path.join(a.tmp, f"vg456-bench-audit.{os.getpid()}.jsonl")
    runs = {}
    for label, extra in (("plain", {}), ("audit", {"VRAMGUARD_AUDIT": log})):
        env = native_env()
        env.update(extra)
        cmd = [a.bin, "--preload", a.preload, "--rounds", str(a.rounds), "--budget", "70GiB"]
        t0 = time.time()
        rc, out, err = sh(cmd, env=env, timeout=a.timeout)
        say(f"bench_pairs, shim {label}: exit {rc} in {time.time() - t0:.0f} s")
        show(f"bench_pairs ({label})", "\n".join(ln for ln in (out + err).splitlines()
                                                 if not ln.startswith("BENCH|")), 40)
        tag = "" if label == "plain" else "[audit log on] "
        for ln in out.splitlines():
            if ln.startswith("BENCH|"):
                say(f"BENCH|{tag}{ln[6:]}")
        runs[label] = (rc, {c: d for c, _s, d in rows_of(out)}, rows_of(out))
        if rc != 0:
            result(f"bench_{label}", "FAIL", f"bench_pairs exit {rc}: "
                   + (err.strip().splitlines() or ["(no stderr)"])[-1][:150])
    for size in ("4_KiB", "1_MiB", "64_MiB"):
        c = f"bench_pair_{size}"
        got = {}
        for label in ("plain", "audit"):
            m = PAIRED.search(runs.get(label, (0, {}, []))[1].get(c, ""))
            if m:
                got[label] = [float(x) for x in m.groups()]
        if len(got) < 2:
            result(f"audit_pair_{size}", "FAIL", f"no paired figures in {c} rows")
            continue
        p, q = got["plain"], got["audit"]
        target = ""
        if size == "4_KiB":
            target = f" (target <= +300: {'met' if q[0] <= 300 else 'MISSED'})"
        result(f"audit_pair_{size}", "info",
               f"ns per pair over native, paired by round: shim + audit log {q[0]:+.0f}{target}, "
               f"p10..p90 {q[1]:+.0f}..{q[2]:+.0f}, x{q[3]:.3f}; plain shim {p[0]:+.0f} "
               f"({p[1]:+.0f}..{p[2]:+.0f}), from a second bench_pairs run; audit - plain "
               f"~{q[0] - p[0]:+.0f}")
    # the benchmark's own log: two worker processes, up to 16 threads each
    if os.path.exists(log):
        t0 = time.time()
        events, bad, ops = parse_log(log)
        pids = len({e.get("pid") for e in events})
        tids = len({e.get("tid") for e in events})
        live = sum(e.get("live", 0) for e in events if e.get("op") == "exit")
        exits = ops.get("exit", 0)
        ok = (bad == 0 and ops.get("free", 0) > 0 and exits == pids
              and ops.get("alloc", 0) - ops.get("free", 0) == live)
        result("audit_bench_log", "PASS" if ok else "FAIL",
               f"{os.path.getsize(log) >> 20} MiB, {len(events)} lines from {pids} processes and "
               f"{tids} threads appending at once: {bad} unparsable, {ops.get('alloc', 0)} alloc, "
               f"{ops.get('free', 0)} free, {exits} exit events saying {live} live at exit "
               f"(alloc - free must equal it; parsed in {time.time() - t0:.1f} s)")
        os.unlink(log)
    else:
        result("audit_bench_log", "FAIL", f"{log} was not written")


# ------------------------------------------------------------ shared budgets

def status_json(cli, name):
    rc, out, err = sh([cli, "status", name, "--json"], timeout=10)
    if rc != 0:
        return None, f"exit {rc}: {first_line(err) if err else ''}"
    try:
        doc = json.loads(out)
        return doc["regions"][0], ""
    except (ValueError, KeyError, IndexError) as exc:
        return None, f"unparsable: {first_line(exc)}"


def snapshot(cli, name, work, tag):
    """status (text, JSON) and metrics --textfile into the log; returns
    (region JSON, metrics text)."""
    rc, out, err = sh([cli, "status", name], timeout=10)
    show(f"vramguard status {name} [{tag}] (exit {rc})", out + err)
    region, why = status_json(cli, name)
    show(f"vramguard status {name} --json [{tag}]",
         json.dumps(region) if region else why, 5)
    prom = os.path.join(work, "m.prom")
    rc, out, err = sh([cli, "metrics", name, "--textfile", prom], timeout=10)
    text = read(prom)
    show(f"vramguard metrics {name} --textfile {prom} [{tag}] (exit {rc})", text + out + err)
    return region, text


def metric(text, name):
    vals = [float(v) for v in re.findall(rf"^{name}{{[^}}]*}} ([-+\d.eE]+|\+Inf)$", text, re.M)
            if v != "+Inf"]
    return vals


def wait_for(pred, timeout, step=0.05):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def shared_pair(a):
    w, name = a.work, a.name
    budget = 2 * GIB
    env = shim_env(a.preload, VRAMGUARD_SHARED=name, VRAMGUARD_BUDGET="2GiB")
    ready = os.path.join(w, "holder.ready")
    go = os.path.join(w, "go")
    for f in (ready, go):
        if os.path.exists(f):
            os.unlink(f)
    holder_log = os.path.join(w, "holder.out")
    holder = spawn([PY, HOLD, "hold", "1280", "--ready", ready, "--seconds", "300"], env,
                   holder_log)
    if not wait_for(lambda: os.path.exists(ready) or holder.poll() is not None, 90):
        pass
    if not os.path.exists(ready):
        show("holder", read(holder_log))
        result("holder_1.25GiB", "FAIL", f"the holder did not hold 1.25 GiB "
               f"(exit {holder.poll()}): {(read(holder_log).strip().splitlines() or [''])[-1][:150]}")
        return
    say(f"holder pid {holder.pid} holds 1.25 GiB: {read(holder_log).strip().splitlines()[-1]}")
    region, prom = snapshot(a.cli, name, w, "holder running")
    ok, detail = False, "no status"
    if region:
        dev = region["devices"][0] if region.get("devices") else {}
        procs = region.get("processes", [])
        mine = [p for p in procs if p.get("pid") == holder.pid]
        pused = sum(d.get("used", 0) for d in mine[0]["devices"]) if mine else 0
        over = sum(d.get("overhead", 0) for d in mine[0]["devices"]) if mine else 0
        ok = bool(mine) and dev.get("budget") == budget and pused >= 1280 * MIB and \
            dev.get("used", 0) <= budget
        detail = (f"device budget {gib(dev.get('budget') or 0)}, used {gib(dev.get('used', 0))}, "
                  f"peak {gib(dev.get('peak', 0))}; holder pid {holder.pid} "
                  f"{'listed' if mine else 'NOT listed'}, used {gib(pused)} "
                  f"(overhead {gib(over)}), {len(procs)} processes")
    result("status_while_holding", "PASS" if ok else "FAIL", detail)
    used = metric(prom, "vramguard_used_bytes")
    procs_m = metric(prom, "vramguard_processes")
    names = [m for m in ("vramguard_budget_bytes", "vramguard_used_bytes", "vramguard_peak_bytes",
                         "vramguard_refusals_total", "vramguard_pressure_level",
                         "vramguard_processes") if m in prom]
    ok = len(names) == 6 and used and used[0] >= 1280 * MIB and procs_m and procs_m[0] >= 1
    result("metrics_textfile", "PASS" if ok else "FAIL",
           f"{len(names)}/6 metric names; used_bytes {used[:1]}, processes {procs_m[:1]}")
    # (a) the second process asks for 1 GiB while the first holds 1.25 GiB
    rc, out, err = sh([PY, HOLD, "request", "1024", "--expect", "oom", "--check",
                       "second_1GiB_refused"], env=env, timeout=90)
    show(f"second process (exit {rc})", out + err, 20)
    rows = rows_of(out)
    if rows:
        for r in rows:
            result(*r)
    else:
        result("second_1GiB_refused", "FAIL", f"no result (exit {rc}): "
               f"{(err.strip().splitlines() or [''])[-1][:150]}")
    # (b) kill -9 the holder; a process already started (context made,
    # nothing allocated) asks for 1 GiB as soon as the holder is gone
    clog = os.path.join(w, "third.out")
    third = spawn([PY, HOLD, "request", "1024", "--go", go, "--retry-ms", "5000", "--within",
                   "1.0", "--events", "the holder was reaped,kill -9",
                   "--check", "after_kill9_1GiB_granted"], env, clog)
    if not wait_for(lambda: "WAITING" in read(clog) or third.poll() is not None, 90):
        result("after_kill9_1GiB_granted", "FAIL", "the third process never got ready")
        return
    t_kill = time.time()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)  # reaped: no zombie holds the pid
    t_reaped = time.time()
    say(f"holder pid {holder.pid} killed (SIGKILL) and reaped in {t_reaped - t_kill:.3f} s")
    with open(go + ".tmp", "w") as f:
        f.write(f"{t_reaped:.6f} {t_kill:.6f}\n")
    os.rename(go + ".tmp", go)
    try:
        third.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    out = read(clog)
    show(f"third process (exit {third.poll()})", out, 20)
    rows = rows_of(out)
    for r in rows:
        result(*r)
    if not rows:
        result("after_kill9_1GiB_granted", "FAIL", f"no result (exit {third.poll()})")
    region, _prom = snapshot(a.cli, name, w, "after the kill")
    if region:
        dev = region["devices"][0] if region.get("devices") else {}
        left = [p for p in region.get("processes", []) if p.get("alive", True)]
        result("status_after", "PASS" if dev.get("used", 1) == 0 and not left else "FAIL",
               f"device used {gib(dev.get('used', 0))}, peak {gib(dev.get('peak', 0))}, "
               f"refusals {dev.get('refusals')}; {len(region.get('processes', []))} process "
               f"slots left ({len(left)} alive)")


def nvsmi_sum():
    """Sum of used_memory (MiB) over the GPU's compute processes, or None."""
    if not shutil.which("nvidia-smi"):
        return None, 0
    rc, out, _err = sh(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                        "--format=csv,noheader,nounits"], timeout=10)
    if rc != 0:
        return None, 0
    total, n = 0, 0
    for ln in out.splitlines():
        parts = [x.strip() for x in ln.split(",")]
        if len(parts) == 2 and parts[1].isdigit():
            total += int(parts[1])
            n += 1
    return total, n


def shared_many(a):
    w, name, n = a.work, a.name, a.procs
    budget = a.budget_gib * GIB
    env = shim_env(a.preload, VRAMGUARD_SHARED=name, VRAMGUARD_BUDGET=f"{a.budget_gib}GiB")
    barrier = os.path.join(w, "barrier")
    shutil.rmtree(barrier, ignore_errors=True)
    os.makedirs(barrier)
    procs = []
    for i in range(n):
        procs.append(spawn([PY, HOLD, "fill", "--chunk", str(a.chunk), "--hold", str(a.hold),
                            "--barrier", barrier, "--n", str(n), "--check", f"fill{i}"],
                           env, os.path.join(w, f"fill{i}.out")))
    say(f"{n} processes started: pids {[p.pid for p in procs]}; budget {a.budget_gib} GiB shared")
    samples, max_dev, max_peak, max_sum, max_alive = 0, 0, 0, 0, 0
    nv_samples, nv_max, nv_procs = 0, 0, 0
    over_budget = []
    snap = None
    t0 = time.time()
    last_nv = 0
    while time.time() - t0 < a.timeout:
        alive = [p for p in procs if p.poll() is None]
        region, _why = status_json(a.cli, name)
        if region and region.get("devices"):
            samples += 1
            dev = region["devices"][0]
            s = sum(d.get("used", 0) for p in region.get("processes", [])
                    for d in p.get("devices", []))
            max_dev = max(max_dev, dev.get("used", 0))
            max_peak = max(max_peak, dev.get("peak", 0))
            max_sum = max(max_sum, s)
            na = sum(1 for p in region.get("processes", []) if p.get("alive", True))
            max_alive = max(max_alive, na)
            if dev.get("used", 0) > budget or s > budget:
                over_budget.append((round(time.time() - t0, 2), dev.get("used"), s))
        if time.time() - last_nv >= 0.5:
            last_nv = time.time()
            total, k = nvsmi_sum()
            if total is not None and k:
                nv_samples += 1
                nv_max = max(nv_max, total)
                nv_procs = max(nv_procs, k)
        filled = sum(1 for i in range(n) if "FILLED" in read(os.path.join(w, f"fill{i}.out")))
        if snap is None and filled == n and alive:
            snap = snapshot(a.cli, name, w, f"{n} processes holding")
        if not alive:
            break
        time.sleep(0.25)
    kill_children()
    held, stops, bad = [], [], []
    for i, p in enumerate(procs):
        out = read(os.path.join(w, f"fill{i}.out"))
        show(f"process {i} pid {p.pid} (exit {p.returncode})", out, 12)
        r = rows_of(out)
        m = re.search(r"held (\d+) MiB", r[0][2]) if r else None
        if not r or r[0][1] == "FAIL" or p.returncode != 0 or not m:
            bad.append(f"{i}: exit {p.returncode}, "
                       + (r[0][2][:80] if r else (out.strip().splitlines() or [''])[-1][:80]))
        if m:
            held.append(int(m.group(1)))
    backends = sorted({b for i in range(n) for b in
                       re.findall(r"MiB, (torch|driver)\)", read(os.path.join(w, f"fill{i}.out")))})
    result("fill", "PASS" if not bad and len(held) == n else "FAIL",
           f"{n} processes ({'/'.join(backends) or '?'}), {a.chunk} MiB tensors until refused, held MiB each: {held} "
           f"(sum {sum(held)} MiB of a {a.budget_gib} GiB budget)"
           + (f"; FAILED: {'; '.join(bad)}" if bad else ""))
    ok = samples > 0 and not over_budget and max_peak <= budget and max_alive >= 1
    result("sum_within_budget", "PASS" if ok else "FAIL",
           f"{samples} status samples: max device used {gib(max_dev)}, max sum over processes "
           f"{gib(max_sum)}, peak {gib(max_peak)} (budget {gib(budget)}); up to {max_alive} "
           f"processes alive at once"
           + (f"; OVER at {over_budget[:3]}" if over_budget else ""))
    if nv_samples:
        ok = nv_max * MIB <= budget
        result("nvidia_smi_sum", "PASS" if ok else "FAIL",
               f"{nv_samples} samples of nvidia-smi --query-compute-apps: max sum of used_memory "
               f"{nv_max} MiB ({nv_max / 1024:.2f} GiB) over up to {nv_procs} processes "
               f"(budget {gib(budget)})")
    else:
        result("nvidia_smi_sum", "info", "nvidia-smi listed no compute processes (or is absent)")
    if snap:
        region, prom = snap
        np_ = len([p for p in (region or {}).get("processes", []) if p.get("alive", True)])
        pm = metric(prom, "vramguard_processes")
        ok = np_ == n and pm and int(pm[0]) == n
        result("status_metrics_live", "PASS" if ok else "FAIL",
               f"while all {n} held: status lists {np_} live processes, metrics "
               f"vramguard_processes {pm[:1]}, vramguard_used_bytes "
               f"{metric(prom, 'vramguard_used_bytes')[:1]}")
    else:
        result("status_metrics_live", "FAIL", "never saw all processes holding at once")


# ------------------------------------------------------------ main

def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=["audit-check", "badptr", "overhead", "shared-pair",
                                   "shared-many"])
    p.add_argument("--cli")
    p.add_argument("--log")
    p.add_argument("--svg")
    p.add_argument("--copy-log")
    p.add_argument("--bin")
    p.add_argument("--preload")
    p.add_argument("--work", default="/tmp")
    p.add_argument("--tmp", default="/tmp")
    p.add_argument("--rounds", type=int, default=31)
    p.add_argument("--name")
    p.add_argument("--procs", type=int, default=8)
    p.add_argument("--budget-gib", type=int, default=8)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--hold", type=float, default=3)
    p.add_argument("--timeout", type=int, default=120)
    a = p.parse_args()
    fn = {"audit-check": audit_check, "badptr": badptr, "overhead": overhead,
          "shared-pair": shared_pair, "shared-many": shared_many}[a.cmd]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below
    try:
        fn(a)
        code = 0
    except BaseException as exc:  # noqa: BLE001 - a crash must be a row
        traceback.print_exc()
        result(a.cmd, "FAIL", f"{type(exc).__name__}: {first_line(exc)}")
        code = 1
    finally:
        kill_children()
        if a.name:
            for path in (f"/dev/shm/vramguard.{a.name}",):
                if os.path.exists(path):
                    os.unlink(path)
    return code


if __name__ == "__main__":
    sys.exit(main())
