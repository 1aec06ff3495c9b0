#!/usr/bin/env python3
"""tests/gpu/pool_alternations.py — pools the tables of several
run_alternate.sh calls: one call's median moves by about half a point on an
H100, so a goal near a ratio is judged on all runs of the same preloads.

    tests/gpu/pool_alternations.py [--base NAME] [--goal1 X] [--goal16 X] FILE...

FILE: the output of tests/gpu/run_alternate.sh (its table rows
"| name | runs... | median | runs... | median |"; anything else is skipped).
For each preload and thread count: the runs pooled, their median, quartiles
and a bootstrap 95% interval of the median (fixed seed: the same input gives
the same figures). With --base, each other preload against it run by run
(the same alternation round of the same call): how often it read higher and
the median difference. With --goal1/--goal16: how many runs reached it.
Figures only: nothing passes or fails.
"""
import argparse
import random
import statistics
import sys


def read_tables(paths):
    """{name: ([1-thread runs], [16-thread runs])}, each call's runs in order,
    calls in the order given; and the run count of each call."""
    runs = {}
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                if len(cells) != 5 or cells[0] in ("preload", "") or cells[0].startswith("---"):
                    continue
                try:
                    one = [float(x) for x in cells[1].split(",") if x.strip()]
                    sixteen = [float(x) for x in cells[3].split(",") if x.strip()]
                except ValueError:
                    continue
                have = runs.setdefault(cells[0], ([], []))
                have[0].extend(one)
                have[1].extend(sixteen)
    return runs


def interval(values, rounds=4000):
    """Bootstrap 95% interval of the median."""
    rng = random.Random(1)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return meds[int(rounds * 0.025)], meds[int(rounds * 0.975) - 1]


def describe(values, goal):
    if len(values) < 2:
        return "%d run(s): too few" % len(values)
    q1, _, q3 = statistics.quantiles(values, n=4)
    lo, hi = interval(values)
    text = "x%.3f over %d (quartiles %.3f..%.3f; median's 95%% interval %.3f..%.3f)" % (
        statistics.median(values), len(values), q1, q3, lo, hi)
    if goal is not None:
        text += "; %d of %d runs >= %.3f" % (sum(v >= goal for v in values), len(values), goal)
    return text


def main():
    ap = argparse.ArgumentParser(
        description="Pools the tables of several tests/gpu/run_alternate.sh calls.")
    ap.add_argument("--base", help="the preload the others are compared with, run by run")
    ap.add_argument("--goal1", type=float, help="one-thread goal (runs at or above it are counted)")
    ap.add_argument("--goal16", type=float, help="sixteen-thread goal")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    try:
        runs = read_tables(args.files)
    except OSError as e:
        sys.exit("pool_alternations: %s: %s" % (e.filename, e.strerror))
    if not runs:
        sys.exit("pool_alternations: no run_alternate.sh table in %s" % ", ".join(args.files))
    if args.base and args.base not in runs:
        sys.exit("pool_alternations: --base %s: no such preload (have: %s)" %
                 (args.base, ", ".join(runs)))
    for name, (one, sixteen) in runs.items():
        print("%s\n  1 thread:   %s\n  16 threads: %s" % (
            name, describe(one, args.goal1), describe(sixteen, args.goal16)))
    if not args.base:
        return
    print()
    for name, pair in runs.items():
        if name == args.base:
            continue
        for i, label in ((0, "1 thread"), (1, "16 threads")):
            base = runs[args.base][i]
            if len(pair[i]) != len(base):
                print("%s against %s, %s: %d runs against %d, not paired" % (
                    name, args.base, label, len(pair[i]), len(base)))
                continue
            diffs = [a - b for a, b in zip(pair[i], base)]
            print("%s against %s, %s: higher in %d of %d runs, median difference %+.4f" % (
                name, args.base, label, sum(d > 0 for d in diffs), len(diffs),
                statistics.median(diffs)))


if __name__ == "__main__":
    main()
