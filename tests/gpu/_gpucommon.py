"""What the GPU check scripts share: the one RESULT line run.sh collects.

Every script prints exactly one line
    RESULT|<check>|<PASS|FAIL|info>|<detail>
and exits 0 on PASS/info, 1 on FAIL. Any exception escaping a check becomes
a FAIL row (with the traceback on stderr, for the log), never a hang.
"""
import argparse
import subprocess
import sys
import traceback

MIB = 1 << 20
GIB = 1 << 30
CHUNK = 256 * MIB


def say(*a):
    print(*a, flush=True)


def show(title, text, limit=60):
    """Copies a child's output into the log, indented (not collected)."""
    lines = text.rstrip("\n").splitlines()
    say(f"--- {title} ({len(lines)} lines)")
    for ln in lines[:limit]:
        say("    " + ln)
    if len(lines) > limit:
        say(f"    ... {len(lines) - limit} more lines")


def sh(cmd, env=None, timeout=60):
    """Runs cmd; returns (rc, stdout, stderr); a timeout is rc 124."""
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                           errors="replace")
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        return 124, out or "", (err or "") + f"\n(timed out after {timeout} s)"


def gib(n):
    return f"{n / GIB:.2f} GiB"


def result(check, status, detail):
    detail = " ".join(str(detail).replace("|", "/").split())[:300]
    print(f"RESULT|{check}|{status}|{detail}", flush=True)
    return 0 if status != "FAIL" else 1


def first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def parse(modes, default_mode, doc):
    """MODE [--budget BYTES] [--cap BYTES]: budget 0 = native (no shim)."""
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("mode", nargs="?", default=default_mode, choices=modes)
    p.add_argument("--budget", type=int, default=0,
                   help="the VRAMGUARD_BUDGET in force, bytes; 0 = native run")
    p.add_argument("--cap", type=int, default=3 * GIB,
                   help="stop allocating (without error) after this many bytes")
    return p.parse_args()


def run(check, fn):
    """Runs fn() -> (status, detail); anything it raises is a FAIL row."""
    try:
        status, detail = fn()
    except BaseException as exc:  # noqa: BLE001 - a crash must be a row
        traceback.print_exc()
        status, detail = "FAIL", f"{type(exc).__name__}: {first_line(exc)}"
    sys.exit(result(check, status, detail))


def verdict(budget, allocated, refused, cap, extra_ok=True):
    """PASS/FAIL for an allocate-until-refused loop.

    Native (budget 0): the cap must be reached without a refusal.
    Under a budget: a refusal must come, with no more than the budget held,
    and not before half of it (a budget that refuses everything is broken).
    """
    if budget == 0:
        ok = refused is None and allocated + CHUNK > cap
    else:
        ok = refused is not None and budget // 2 <= allocated <= budget
    return "PASS" if ok and extra_ok else "FAIL"
