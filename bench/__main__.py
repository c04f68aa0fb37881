"""Run the benchmarks in this folder, one process each, against the running local platform.

    python -m bench                  # every bench_*.py but the soak, with its defaults
    python -m bench soak --seed 1    # the seeded chaos soak (bench_soak.py), only when named
    python -m bench files --quick    # one of them (bench_files.py), with its own options

Each runs as ``python -m bench.<name>`` from the repository's root, so a bench can import
the shared helpers of this folder (``bench.nginx``, ...).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FOLDER = Path(__file__).parent


# Run only when named: the chaos soak takes up to 20 minutes and crashes the platform's daemons.
OPT_IN = frozenset({"soak"})


def benches() -> dict[str, Path]:
    """``files`` → bench_files.py, ..."""
    return {script.stem.removeprefix("bench_"): script for script in sorted(FOLDER.glob("bench_*.py"))}


def run(script: Path, args: list[str]) -> int:
    print(f"== {script.stem}", flush=True)
    command = [sys.executable, "-m", f"{FOLDER.name}.{script.stem}", *args]
    return subprocess.run(command, cwd=FOLDER.parent, check=False).returncode


def main(argv: list[str]) -> int:
    known = benches()
    if argv and not argv[0].startswith("-"):
        name, *args = argv
        if name not in known:
            print(f"no bench {name!r}; there are: {', '.join(known)}", file=sys.stderr)
            return 2
        return run(known[name], args)
    if argv:
        print("usage: python -m bench [<name> [its options]]; names: " + ", ".join(known), file=sys.stderr)
        return 2
    failed = sum(run(script, []) != 0 for name, script in known.items() if name not in OPT_IN)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
