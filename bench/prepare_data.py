"""Time `fedmrg prepare-data` and print figures (wall time, throughput, memory, size on disk).

    python bench/prepare_data.py                      # the full IU X-ray benchmark, 3 sites, style
    python bench/prepare_data.py --source synthetic --studies 500 --workers 1

The first line should take under 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from fedmrg.config import load_config
from fedmrg.data.benchmark import build_benchmark, format_summary


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="iu-xray", choices=["iu-xray", "synthetic"])
    parser.add_argument("--studies", type=int, default=None)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--partition", default="style", choices=["style", "label", "iid"])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="0 = one per core")
    args = parser.parse_args()
    cfg = load_config(
        "demo",
        {
            "benchmark.source": args.source,
            "benchmark.studies": args.studies,
            "benchmark.sites": args.sites,
            "benchmark.partition": args.partition,
            "benchmark.image_size": args.image_size,
            "benchmark.workers": args.workers,
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench"
        started = time.perf_counter()
        summary = build_benchmark(cfg.benchmark, out, progress=False)
        seconds = time.perf_counter() - started
        views = sum(c.get("views", 0) for c in summary["counts"].values())
        figures = {
            "source": args.source,
            "studies": summary["source"]["usable_studies"],
            "views": views,
            "image_size": args.image_size,
            "workers": args.workers,
            "wall_seconds": round(seconds, 1),
            "views_per_second": round(views / seconds, 1),
            "peak_rss_mib_main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_rss_mib_worker": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
            "disk_mib": round(_folder_size(out) / 2**20, 1),
        }
    print(format_summary(summary))
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
