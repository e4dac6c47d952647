"""A/B a command on two git revisions of ember's CPU build, alternating processes.

This VM's speed drifts for tens of seconds at a time (see the core check the benchmarks print),
so two builds measured one after the other are not comparable. This builds each revision once
(a git worktree under build/ab/<rev>, CPU module only, the same flags as scripts/devbuild.sh),
then runs the command ``--rounds`` times under each, alternating A, B, A, B..., and prints each
run's wall time, the medians and the median of the per-round ratios B / A (paired: a slow spell
slows both sides of one round's ratio).

    python bench/ab_builds.py HEAD~3 HEAD -- python /tmp/my_benchmark.py
    python bench/ab_builds.py --rounds 8 main WORKTREE -- python bench/bench_sklearn.py --repeats 1

``WORKTREE`` means the working tree as it is (built with scripts/devbuild.sh).
The command runs with PYTHONPATH pointing at that build's python/ directory. The worktrees
stay for the next comparison; ``git worktree remove build/ab/<rev>`` (or ``git worktree prune``
after deleting build/) cleans up.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(rev: str) -> Path:
    """The python/ directory of an ember built at ``rev``."""
    if rev == "WORKTREE":
        subprocess.run(["bash", str(ROOT / "scripts/devbuild.sh")], check=True)
        return ROOT / "python"
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True,
                         capture_output=True, text=True).stdout.strip()
    tree = ROOT / "build" / "ab" / sha
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), sha],
                       check=True, capture_output=True)
    env = dict(os.environ, EMBER_CMAKE_ARGS="-DEMBER_CUDA=OFF")
    subprocess.run(["bash", str(tree / "scripts/devbuild.sh")], check=True, env=env)
    return tree / "python"


def main() -> int:
    argv = sys.argv[1:]
    if "--" not in argv:
        print(__doc__)
        return 2
    cut = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args(argv[:cut])
    cmd = argv[cut + 1:]
    paths = {"A": build(args.a), "B": build(args.b)}
    times: dict[str, list[float]] = {"A": [], "B": []}
    for r in range(args.rounds):
        for side in ("A", "B"):
            env = dict(os.environ, PYTHONPATH=str(paths[side]))
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            times[side].append(time.perf_counter() - t0)
            print(f"round {r + 1} {side} ({args.a if side == 'A' else args.b}): "
                  f"{times[side][-1]:.3f} s", flush=True)
    ma, mb = statistics.median(times["A"]), statistics.median(times["B"])
    paired = statistics.median(b / a for a, b in zip(times["A"], times["B"]))
    print(f"median A {ma:.3f} s, B {mb:.3f} s; B / A {mb / ma:.3f} (paired {paired:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
