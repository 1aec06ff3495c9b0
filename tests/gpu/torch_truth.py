"""tests/gpu/run_truth.sh's `torch` scenario: is the budget truthful for PyTorch, judged from outside?

    python3 torch_truth.py --cap N

Allocates 64 MiB tensors until torch.OutOfMemoryError (at most N of them: run_truth.sh gives 40 = 2.5 GiB
natively, so the 141 GB card is not filled, and 64 = 4 GiB under the shim, far past a 2 GiB budget), then
prints, at the peak (the tensors still held):
    refused_call=torch.empty(64MiB)#K rc=OOM torch.OutOfMemoryError     (none rc=0 when no OOM came)
    oom_in_use=X GiB   oom_in_use_gib=X   oom_capacity=Y GiB            (from the exception's message)
    outside_mib=N pid_match=0|1 smi_lines=N smi_rc=N                   nvidia-smi's figure for os.getpid()
    tensors_held=K held_mib=M
    truth_done scenario=torch
nvidia-smi runs with LD_PRELOAD and every VRAMGUARD_* variable removed from its environment.
"""
import argparse
import os
import re
import subprocess
import sys

MIB = 1 << 20
UNITS = {"bytes": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def clean_env():
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("VRAMGUARD_")}
    return env


def smi_listing():
    """[(pid, used_mib)], lines, rc - nvidia-smi's compute apps, outside any preload."""
    try:
        p = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                           env=clean_env(), capture_output=True, text=True, timeout=20, errors="replace")
        out, rc = p.stdout + p.stderr, p.returncode
    except FileNotFoundError:
        return [], 0, 127, "nvidia-smi: not found"
    except subprocess.TimeoutExpired:
        return [], 0, 124, "nvidia-smi: timed out"
    rows = []
    lines = out.strip().splitlines()
    for ln in lines:
        parts = [x.strip() for x in ln.split(",")]
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            rows.append((int(parts[0]), int(parts[1])))
    return rows, len(lines), rc, out.strip()


def outside(key="outside_mib", pid=None):
    """Prints nvidia-smi's used_memory for pid (os.getpid()); returns (value, pid_match). The value is -1 when
    nothing is listed, the sum of all listed when others are but not pid (pid_match 0)."""
    pid = os.getpid() if pid is None else pid
    rows, nlines, rc, text = smi_listing()
    for ln in text.splitlines():
        print(f'smi_line="{ln}"', flush=True)
    mine = [u for p, u in rows if p == pid]
    if mine:
        val, match = mine[0], 1
    elif rows:
        val, match = sum(u for _, u in rows), 0  # a PID namespace hides our pid: the sum of all listed
    else:
        val, match = -1, 0
    print(f"{key}={val} pid_match={match} smi_lines={nlines} smi_rc={rc} pid={pid}", flush=True)
    return val, match


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cap", type=int, default=40, help="most 64 MiB tensors to allocate")
    a = ap.parse_args()
    print(f"info scenario=torch LD_PRELOAD={os.environ.get('LD_PRELOAD', '(unset)')} "
          f"VRAMGUARD_BUDGET={os.environ.get('VRAMGUARD_BUDGET', '(unset)')} cap={a.cap}", flush=True)
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        print(f"refused_call=import_torch rc=ERR {type(exc).__name__}: {exc}", flush=True)
        return 1
    print(f"info torch={torch.__version__} cuda={torch.version.cuda} available={torch.cuda.is_available()}",
          flush=True)
    held = []
    refused = "none rc=0 none"
    msg = ""
    for i in range(a.cap):
        try:
            held.append(torch.empty(64 * MIB, dtype=torch.uint8, device="cuda"))
        except torch.OutOfMemoryError as exc:
            refused = f"torch.empty(64MiB)#{i + 1} rc=OOM torch.OutOfMemoryError"
            msg = " ".join(str(exc).split())
            break
        except Exception as exc:  # noqa: BLE001 - any other failure is reported, not hidden
            refused = f"torch.empty(64MiB)#{i + 1} rc=ERR {type(exc).__name__}"
            msg = " ".join(str(exc).split())
            break
    torch.cuda.synchronize()
    if msg:
        print(f"oom_message={msg[:600]}", flush=True)
    m = re.search(r"this process has ([\d.]+) (bytes|B|KiB|MiB|GiB|TiB) memory in use", msg)
    if m:
        gib = float(m.group(1)) * UNITS[m.group(2)] / (1 << 30)
        print(f"oom_in_use={m.group(1)} {m.group(2)} oom_in_use_gib={gib:.4f}", flush=True)
    else:
        print("oom_in_use=? oom_in_use_gib=-1", flush=True)
    c = re.search(r"total capacity of ([\d.]+ ?(?:bytes|B|KiB|MiB|GiB|TiB))", msg)
    print(f"oom_capacity={c.group(1) if c else '?'}", flush=True)
    outside()
    print(f"tensors_held={len(held)} held_mib={len(held) * 64}", flush=True)
    print(f"refused_call={refused}", flush=True)
    del held
    torch.cuda.empty_cache()
    print("truth_done scenario=torch", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
