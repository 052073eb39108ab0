"""How a spool's mount options change the cost of its file churn (root only: loop-mounted ext4).

A busy spool creates and deletes files all the time (every payload, every event log). On ext4
mounted with `discard`, each deletion sends the freed blocks to the device at once, and file
creation right after a large deletion slows down for minutes. This creates the same ext4 image
twice, mounted with and without `discard`, and on each: times creating 2,000 small files (the
baseline), deletes 200,000 files, then times creating 2,000 files again, right away and after an
`fstrim` (what the periodic timer does instead).

Usage: sudo python benchmarks/bench_mount.py [--churn 200000] [--files 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def mounted(image: Path, options: str) -> Iterator[Path]:
    """`image` formatted as ext4 and loop-mounted with `options`."""
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    point = Path(tempfile.mkdtemp(prefix="fnspool-mount-"))
    subprocess.run(["mount", "-o", f"loop,{options}", str(image), str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False)
        point.rmdir()


def create(directory: Path, count: int) -> float:
    """Microseconds per small file created (write, fsync of none: as a client drops payloads)."""
    directory.mkdir(exist_ok=True)
    started = time.perf_counter()
    for i in range(count):
        with open(directory / f"f{i:07d}", "wb") as f:
            f.write(b'{"n": 1}')
    return (time.perf_counter() - started) / count * 1e6


def churn(directory: Path, count: int) -> None:
    """Create and delete `count` files (synced, so the deletions reach the file system)."""
    create(directory, count)
    os.sync()
    shutil.rmtree(directory)
    os.sync()


def measure(image: Path, options: str, args: argparse.Namespace) -> dict[str, float]:
    with mounted(image, options) as root:
        figures = {"before": create(root / "a", args.files)}
        churn(root / "churn", args.churn)
        figures["after churn"] = create(root / "b", args.files)
        subprocess.run(["fstrim", str(root)], check=False, capture_output=True)
        figures["after fstrim"] = create(root / "c", args.files)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--churn", type=int, default=200_000)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not shutil.which("losetup"):
        print("needs root, mkfs.ext4 and losetup", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="fnspool-bench-mount-", dir="/var/tmp"))
    image = work / "spool.img"
    try:
        with open(image, "wb") as f:
            f.truncate(4 << 30)  # sparse
        results: dict[str, list[dict[str, float]]] = {"discard": [], "nodiscard": []}
        for _ in range(args.rounds):
            for options in results:
                results[options].append(measure(image, f"{options},noatime", args))
        print(f"microseconds per small file created ({args.files} files; {args.churn} churned)")
        for options, rounds in results.items():
            cells = [f"{key} {statistics.median(r[key] for r in rounds):7.1f}" for key in rounds[0]]
            print(f"  {options:10} " + "   ".join(cells))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
