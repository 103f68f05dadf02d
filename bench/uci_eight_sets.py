"""The eight UCI sets of docs/uci.md end to end, timed: ``blr bench uci --data DIR/<set> --json``
per set, in parallel lanes (default 2, one per core), each set a separate process with one
torch thread.

Prints one line per set (wall and CPU seconds of its process) and the totals: the wall time
from the first start to the last end, and the CPU time summed over the sets. The reports are
written as ``OUT/<set>.json``; ``python bench/uci_eight_sets.py --table OUT`` prints the
Markdown table of docs/uci.md from them (:func:`blr.apps.uci_protocol.summary_table`) and
writes the plot.

Example::

    python bench/uci_eight_sets.py --data ../shared/data/uci --out /tmp/uci8     # ~30 min
    python bench/uci_eight_sets.py --table /tmp/uci8 --plot docs/img/uci.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

SETS = (
    "bostonHousing",
    "concrete",
    "energy",
    "kin8nm",
    "naval-propulsion-plant",
    "power-plant",
    "wine-quality-red",
    "yacht",
)
# lanes balanced by the sets' CPU time (naval is a third of the total)
LANES = {
    1: [list(SETS)],
    2: [
        ["naval-propulsion-plant", "bostonHousing", "concrete", "yacht"],
        ["power-plant", "kin8nm", "wine-quality-red", "energy"],
    ],
}


def _lane(sets: list[str], data: Path, out: Path, log: list[str]) -> None:
    for name in sets:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "blr.apps.uci", "--data", str(data / name), "--json"]
        with open(out / f"{name}.json", "w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.DEVNULL).returncode
        wall = time.perf_counter() - t0
        try:
            cpu = json.loads((out / f"{name}.json").read_text())["cpu_s"]
        except (ValueError, KeyError):
            cpu = float("nan")
        log.append(f"{name}: exit {rc}, wall {wall:.0f} s, CPU {cpu:.0f} s")
        print(log[-1], flush=True)


def run(data: Path, out: Path, lanes: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    t0 = time.perf_counter()
    threads = [threading.Thread(target=_lane, args=(sets, data, out, log)) for sets in LANES[lanes]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu = sum(json.loads((out / f"{s}.json").read_text()).get("cpu_s", 0.0) for s in SETS)
    print(f"eight sets in {lanes} lane(s): wall {wall / 60:.1f} min, CPU {cpu / 60:.1f} min")


def table(out: Path, plot: Path | None) -> None:
    from blr.apps import uci_protocol

    reports = [json.loads((out / f"{s}.json").read_text()) for s in SETS]
    print(uci_protocol.summary_table(reports))
    if plot is not None:
        uci_protocol.plot(reports, plot)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="the folder holding the eight set folders")
    parser.add_argument("--out", type=Path, help="where the JSON reports go")
    parser.add_argument("--lanes", type=int, choices=sorted(LANES), default=2)
    parser.add_argument("--table", type=Path, metavar="OUT", help="print the table of OUT")
    parser.add_argument("--plot", type=Path, help="with --table: write the plot here")
    args = parser.parse_args()
    if args.table is not None:
        table(args.table, args.plot)
        return 0
    if args.data is None or args.out is None:
        parser.error("--data and --out are required (or --table OUT)")
    run(args.data, args.out, args.lanes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
