"""``fedmrg show-data``: a picture of how the sites of a benchmark differ.

One row per group (site-1..N, test-global), a few studies per row, each shown as its frontal and
lateral views side by side with the first words of its report underneath.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np

from fedmrg.data.annotation import SPLITS, read_annotation
from fedmrg.data.benchmark import PUBLIC, load_benchmark
from fedmrg.data.images import load_image


def _study_strip(image_root: Path, paths: list[str], height: int = 160) -> np.ndarray:
    """The first two views of a study at a common height, side by side."""
    from PIL import Image

    views = []
    for rel in paths[:2]:
        view = load_image(image_root / rel)
        width = max(1, round(view.shape[1] * height / view.shape[0]))
        views.append(np.asarray(Image.fromarray(view).resize((width, height), Image.BILINEAR)))
    if len(views) == 1:  # keep the grid even: a blank where a lateral would be
        views.append(np.ones_like(views[0]))
    gap = np.ones((height, 4), dtype=np.float32)
    return np.concatenate([views[0], gap, views[1]], axis=1)


def show_data(bench_dir: str | os.PathLike, out: str | os.PathLike, per_site: int = 3, seed: int = 0) -> Path:
    """Write a PNG grid of ``per_site`` random studies from each group of the benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bench_dir, out = Path(bench_dir), Path(out)
    summary = load_benchmark(bench_dir)
    groups = [g for g in summary["counts"] if g != PUBLIC]
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(groups), per_site, figsize=(4.2 * per_site, 3.6 * len(groups)), squeeze=False)
    for r, group in enumerate(groups):
        annotation = read_annotation(bench_dir / group / "annotation.json")
        rows = [row for split in SPLITS for row in annotation.rows(split)]
        chosen = rng.choice(len(rows), size=min(per_site, len(rows)), replace=False)
        profile = summary["acquisition"].get(group, {})
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c >= len(chosen):
                continue
            row = rows[chosen[c]]
            ax.imshow(_study_strip(annotation.image_root, row["image_path"]), cmap="gray", vmin=0, vmax=1)
            snippet = textwrap.shorten(row["report"], width=150, placeholder=" ...")
            ax.set_title(f"{group} | {row['id']}", fontsize=9, loc="left")
            ax.text(0, -0.04, textwrap.fill(snippet, 58), transform=ax.transAxes, va="top", fontsize=7)
        label = f"{group}\n{profile.get('storage', 'mixed acquisition')}"
        axes[r][0].text(
            -0.08,
            0.5,
            label,
            transform=axes[r][0].transAxes,
            rotation=90,
            va="center",
            ha="right",
            fontsize=10,
            fontweight="bold",
        )
    fig.suptitle(f"{bench_dir.name}: {summary['request']['partition']} partition, {len(groups) - 1} sites", fontsize=12)
    fig.tight_layout(h_pad=3.5)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
