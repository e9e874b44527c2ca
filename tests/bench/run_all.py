"""`make bench`: run every benchmark in this folder, one process each, and print their figures.

Figures are ratios against a reference measured in the same run, so they mean the same on any machine.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def main() -> int:
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"== {script.name}", flush=True)
        start = time.perf_counter()
        # As a module of the tests package, from the project folder: `tests.support` imports by name.
        result = subprocess.run([sys.executable, "-m", f"tests.bench.{script.stem}", *sys.argv[1:]], cwd=ROOT)
        print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)
        if result.returncode != 0:
            failed.append(script.name)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
