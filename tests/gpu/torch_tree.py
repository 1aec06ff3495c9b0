"""tests/gpu/run_truth.sh's `tree` scenario: does one budget hold for a process TREE, judged from outside?

    vramguard run --budget 2GiB -- python3 torch_tree.py        (and natively: python3 torch_tree.py)

The parent (which never touches CUDA) starts two children (this script again, `child I DIR`, through
subprocess). Each child allocates one 768 MiB tensor with torch, says it has tried (a file in DIR), waits until
both have tried, reads nvidia-smi for its own pid while both still hold, says so, and waits for the parent's
`go` before it exits. Between the children's readings and `go` the parent takes one reading of its own. Lines:
    child=I pid=P result=ok|oom|error outside_mib=N pid_match=0|1 [msg=...]     one per child
    parent_outside_mib=N                  the parent's own figure (0: not listed, as it has no context)
    tree_all_listed_mib=N                 the sum of every process nvidia-smi listed at the parent's reading
    tree_sum_mib=S source=children+parent|all_listed oom_children=K ok_children=K
    truth_done scenario=tree
S is the children's own readings plus the parent's when both children found their pid, else (a PID namespace)
the sum of all listed processes at the parent's reading. Every wait has a deadline: nothing hangs.
"""
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_truth import outside, smi_listing  # noqa: E402

MIB = 1 << 20
WAIT_S = 40


def wait_files(paths, limit=WAIT_S, stop=None, procs=()):
    """True once every path exists; False at the deadline, when `stop` exists or when one of procs has ended."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if all(os.path.exists(p) for p in paths):
            return True
        if (stop and os.path.exists(stop)) or any(p.poll() is not None for p in procs):
            return False
        time.sleep(0.05)
    return False


def touch(path):
    with open(path, "w"):
        pass


def child(i, d):
    result, msg, t = "error", "", None
    try:
        import torch
        try:
            t = torch.empty(768 * MIB, dtype=torch.uint8, device="cuda")
            torch.cuda.synchronize()
            result = "ok"
        except torch.OutOfMemoryError as exc:
            result, msg = "oom", " ".join(str(exc).split())[:300]
    except Exception as exc:  # noqa: BLE001 - reported, never hidden
        result, msg = "error", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    touch(os.path.join(d, f"tried.{i}"))
    both = wait_files([os.path.join(d, "tried.0"), os.path.join(d, "tried.1")], stop=os.path.join(d, "go"))
    val, match = outside(key=f"child{i}_outside_mib")
    print(f"child={i} pid={os.getpid()} result={result} outside_mib={val} pid_match={match} "
          f"both_tried={int(both)}" + (f" msg={msg}" if msg else ""), flush=True)
    touch(os.path.join(d, f"read.{i}"))
    wait_files([os.path.join(d, "go")])
    del t
    return 0


def parent():
    print(f"info scenario=tree LD_PRELOAD={os.environ.get('LD_PRELOAD', '(unset)')} "
          f"VRAMGUARD_BUDGET={os.environ.get('VRAMGUARD_BUDGET', '(unset)')}", flush=True)
    d = tempfile.mkdtemp(prefix="vgtree.")
    outs, procs = [], []
    for i in range(2):
        f = open(os.path.join(d, f"out.{i}"), "w+")
        outs.append(f)
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "child", str(i), d],
                                      stdout=f, stderr=subprocess.STDOUT))
    got = wait_files([os.path.join(d, "read.0"), os.path.join(d, "read.1")], WAIT_S + 5, procs=procs)
    if not got:
        print("info the children did not both report (deadline, or one ended early)", flush=True)
    own, _ = outside(key="parent_self_mib")
    rows, _, _, _ = smi_listing()
    pids = {os.getpid()} | {p.pid for p in procs}
    parent_listed = [u for p, u in rows if p == os.getpid()]
    print(f"parent_outside_mib={parent_listed[0] if parent_listed else 0} (own reading {own})", flush=True)
    all_listed = sum(u for _, u in rows)
    tree_listed = sum(u for p, u in rows if p in pids)
    print(f"tree_all_listed_mib={all_listed} tree_listed_by_pid_mib={tree_listed}", flush=True)
    touch(os.path.join(d, "go"))
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    results = {}
    for i, f in enumerate(outs):
        f.seek(0)
        text = f.read()
        f.close()
        for ln in text.splitlines():
            print(f"  [child {i}] {ln}", flush=True)
            if ln.startswith(f"child={i} "):
                kv = dict(x.split("=", 1) for x in ln.split(" msg=")[0].split() if "=" in x)
                results[i] = kv
        print(f"info child {i} exit={procs[i].returncode}", flush=True)
    for i in range(2):
        kv = results.get(i, {})
        print(f"child={i} result={kv.get('result', 'missing')} outside_mib={kv.get('outside_mib', '-1')} "
              f"pid_match={kv.get('pid_match', '0')}", flush=True)
    oom = sum(1 for kv in results.values() if kv.get("result") == "oom")
    ok = sum(1 for kv in results.values() if kv.get("result") == "ok")
    if len(results) == 2 and all(kv.get("pid_match") == "1" for kv in results.values()):
        s = sum(max(0, int(kv.get("outside_mib", "0"))) for kv in results.values())
        s += parent_listed[0] if parent_listed else 0
        src = "children+parent"
    else:
        s, src = (all_listed, "all_listed") if rows else (-1, "nothing_listed")
    print(f"tree_sum_mib={s} source={src} oom_children={oom} ok_children={ok}", flush=True)
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)
    print("truth_done scenario=tree", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "child":
        sys.exit(child(int(sys.argv[2]), sys.argv[3]))
    sys.exit(parent())
