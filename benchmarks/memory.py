"""Peak resident memory of ``edgeseg run`` as a user runs it, measured from outside.

Runs the command as a child process and reads the child's peak RSS from the kernel
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``), so the figure includes everything the process
mapped: Python, numpy, OpenCV, ONNX Runtime and the model.

    python benchmarks/memory.py -- run --model M --source DIR --sink jsonl:/tmp/r.jsonl

The leak check is ``edgeseg bench --frames 2000 --no-sequential``, which prints the resident
set at frame 200 and at the end of a looped source.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the edgeseg command, after --")
    ns = parser.parse_args()
    args = [a for a in ns.args if a != "--"] or ["--help"]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgeseg", *args])
    elapsed = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"memory: edgeseg {' '.join(args[:1])} exited {proc.returncode} after {elapsed:.1f} s; "
          f"peak RSS {peak_mb:.0f} MB")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
