"""Charts for the docs, drawn from the benchmarks' JSON (bench/record.py's format) as SVG.

    python bench/run.py --suite lru --suite memcached --suite redis --json bench/results/run-one.json
    python bench/run.py --placement split ... --json bench/results/run-split.json
    python bench/async_run.py --json bench/results/async.json
    python bench/near_zipf.py --json bench/results/near.json
    python bench/charts.py                      # bench/results/*.json -> docs/bench/*.svg

Per run file, one chart per suite: each operation's median time per call for ours and each peer
(log scale: a 0.3 us LRU get and a 2 ms set_many share an axis), and the 8-thread throughput.
The async file gives the scaling curve (operations per second against concurrent tasks), the
near-cache file the near cache's read time against a plain read. Every chart states the
machine, the placement and the date it was measured on. The SVGs are deterministic for the same
input (no timestamps, fixed ids), so they change in git only when the numbers do.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
OURS_COLOUR = "#e64a19"
PEER_COLOURS = ["#546e7a", "#90a4ae", "#1e88e5", "#8e24aa", "#43a047", "#fdd835", "#6d4c41", "#00acc1"]
THROUGHPUT = "8 threads 80/20 (ops/s)"

plt.rcParams.update({"svg.hashsalt": "django-rustcache", "font.size": 9, "svg.fonttype": "none"})


def footer(meta: dict[str, Any]) -> str:
    return (
        f"{meta['vcpus']} vCPU VM ({meta['cpu']}), Linux {meta['kernel']}; {meta['placement']}; "
        f"Python {meta['python']}, Django {meta['django']}; measured {meta['date']}"
    )


def save(fig: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    print(f"wrote {out.relative_to(ROOT)}")


def colours(labels: list[str], ours: str) -> dict[str, str]:
    peers = iter(PEER_COLOURS)
    return {label: OURS_COLOUR if label == ours else next(peers, "#bdbdbd") for label in labels}


def run_chart(suite: str, entry: dict[str, Any], meta: dict[str, Any], out: Path) -> None:
    samples: dict[str, dict[str, list[float]]] = entry["samples"]
    labels = [b for b in entry["backends"] if any(b in per_op for per_op in samples.values())]
    colour = colours(labels, entry["ours"])
    ops = [op for op in samples if op != THROUGHPUT]
    has_throughput = THROUGHPUT in samples
    fig, axes = plt.subplots(
        1, 2 if has_throughput else 1, figsize=(10, 0.55 * len(ops) * len(labels) ** 0.5 + 2.2),
        gridspec_kw={"width_ratios": [3, 1]} if has_throughput else None, squeeze=False,
    )  # fmt: skip
    ax = axes[0][0]
    height = 0.8 / len(labels)
    for i, label in enumerate(labels):
        ys, xs = [], []
        for j, op in enumerate(ops):
            if label in samples[op]:
                ys.append(j + i * height)
                xs.append(statistics.median(samples[op][label]))
        ax.barh(ys, xs, height=height, color=colour[label], label=label)
        for y, x in zip(ys, xs, strict=True):
            ax.text(x, y, f" {x:,.1f}" if x < 100 else f" {x:,.0f}", va="center", fontsize=7)
    ax.set_xscale("log")
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(ops))], ops)
    ax.invert_yaxis()
    ax.set_xlabel("median time per call, us (log scale; lower is better)")
    ax.grid(axis="x", which="both", alpha=0.25)
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="upper left", bbox_to_anchor=(0.01, 0.955), ncol=min(4, len(names)), fontsize=7,
               frameon=False)  # fmt: skip
    if has_throughput:
        tx = axes[0][1]
        shown = [b for b in labels if b in samples[THROUGHPUT]]
        values = [statistics.median(samples[THROUGHPUT][b]) for b in shown]
        tx.barh(range(len(shown)), values, color=[colour[b] for b in shown])
        tx.set_yticks(range(len(shown)), [""] * len(shown))
        tx.invert_yaxis()
        tx.set_xlabel("8 threads, 80 % get / 20 % set:\noperations per second (higher is better)")
        for y, v in enumerate(values):
            tx.text(v, y, f" {v:,.0f}", va="center", fontsize=7)
        tx.margins(x=0.35)
    fig.suptitle(f"{suite}: ours against the peers, through Django's cache API", x=0.01, y=1.0, ha="left")
    fig.text(0.01, -0.02, footer(meta), fontsize=7, color="#555555")
    save(fig, out)


def async_chart(data: dict[str, Any], meta: dict[str, Any], out: Path) -> None:
    fig, axes = plt.subplots(1, len(data), figsize=(10, 3.6), squeeze=False)
    for ax, (family, entry) in zip(axes[0], data.items(), strict=True):
        colour = colours(entry["backends"], entry["ours"])
        for label in entry["backends"]:
            points = sorted((int(n), v) for n, v in entry["ops_per_second"][label].items())
            ax.plot(
                [n for n, _ in points], [v for _, v in points], marker="o", label=label, color=colour[label],
                linewidth=2.5 if label == entry["ours"] else 1.2,
            )  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([int(n) for n in entry["ops_per_second"][entry["ours"]]])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("concurrent asyncio tasks")
        ax.set_ylabel("operations per second (log)")
        ax.set_title(f"{family}: 80 % aget / 20 % aset", fontsize=9)
        ax.grid(which="both", alpha=0.25)
        ax.legend(fontsize=7)
    fig.suptitle("Async scaling: native a* methods against the peers' sync_to_async", x=0.01, ha="left")
    fig.text(0.01, -0.04, footer(meta), fontsize=7, color="#555555")
    save(fig, out)


def near_chart(data: dict[str, Any], meta: dict[str, Any], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 2.2))
    labels = ["get, near cache on", "get, near cache off"]
    values = [data["near_us"], data["plain_us"]]
    ax.barh(labels, values, color=[OURS_COLOUR, PEER_COLOURS[0]])
    ax.invert_yaxis()
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.2f} us", va="center", fontsize=8)
    ax.margins(x=0.15)
    ax.set_xlabel("mean time per read, us (lower is better)")
    ax.set_title(
        "The near cache (redis, RedisCache with NEAR_CACHE)\n"
        f"Zipf reads over {data['keys']:,} keys while another process writes {data['writes']:,} times: "
        f"{data['local_hit_ratio']:.0%} answered locally, {data['stale_reads']} stale reads",
        fontsize=9, loc="left",
    )  # fmt: skip
    fig.text(0.01, -0.12, footer(meta), fontsize=7, color="#555555")
    save(fig, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench"))
    args = parser.parse_args()
    files = sorted(Path(args.results).glob("*.json"))
    if not files:
        print(f"no results in {args.results}: run the benchmarks with --json first", file=sys.stderr)
        return 1
    out = Path(args.out)
    for path in files:
        doc = json.loads(path.read_text())
        kind, meta, data = doc["kind"], doc["meta"], doc["data"]
        if kind == "run":
            for suite, entry in data.items():
                run_chart(suite, entry, meta, out / f"{path.stem}-{suite}.svg")
        elif kind == "async":
            async_chart(data, meta, out / f"{path.stem}.svg")
        elif kind == "near":
            near_chart(data, meta, out / f"{path.stem}.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
