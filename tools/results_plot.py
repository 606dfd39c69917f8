"""Draw the comparison plots of docs/results.md from the tables on that page (never from numbers of its own).

    python tools/results_plot.py            # writes docs/img/results-{methods,ensemble,feature-token,beat-teachers}.png

Each plot takes the first table under its section heading: a bar per student row (its mean over the seeds, a dot
per seed) and a dashed line per reference row (teachers, the ensemble), on the test column where there is one.
"""
from __future__ import annotations

import argparse
import itertools
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PLOTS = {  # output name -> (section heading, value column, title)
    "results-methods": ("Logit methods from one cache", ("seed 0", "seed 1"),
                        "CIFAR-10, one cache: top-1 on 5,000 held-out images"),
    "results-ensemble": ("An ensemble of cached teachers", ("test top-1 (seeds 0, 1)",),
                         "CIFAR-10, 10,000 images: test top-1"),
    "results-feature-token": ("Feature, hard-label and token distillation", ("test top-1 (seeds 0, 1)",),
                              "CIFAR-10, 10,000 images: test top-1"),
    "results-beat-teachers": ("A student against each of its teachers", ("test top-1 (each)",),
                              "CIFAR-10, 20,000 images, three seeds: test top-1"),
}
REFERENCE = ("teacher", "their ensemble")


def table(markdown: str, heading: str) -> list[dict[str, str]]:
    """The first table under `## heading`, as one dict (column -> cell) per row."""
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[c.strip().replace("*", "") for c in line.strip("|").split("|")] for line in lines]
    head = cells[0]
    return [dict(zip(head, row)) for row in cells[2:]]


def numbers(cells: list[str]) -> list[float]:
    """Every number in the given cells ('61.06, 61.18', '67.58 / 68.98 / 67.44', '78.30')."""
    return [float(x) for cell in cells for x in re.findall(r"\d+\.\d+", cell)]


def plot(rows: list[dict[str, str]], columns: tuple[str, ...], title: str, out: Path) -> None:
    label = next(iter(rows[0]))
    bars = [(r[label], numbers([r[c] for c in columns])) for r in rows if not r[label].startswith(REFERENCE)]
    lines = [(r[label], numbers([r[c] for c in columns])) for r in rows if r[label].startswith(REFERENCE)]
    bars = [(name, values) for name, values in bars if values]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(bars) + 1.6 + 0.25 * len(lines)))
    for i, (name, values) in enumerate(reversed(bars)):
        ax.barh(i, sum(values) / len(values), color="tab:blue", alpha=0.6)
        ax.plot(values, [i] * len(values), "o", color="tab:blue", ms=4)
        ax.text(max(values) + 0.25, i, f"{sum(values) / len(values):.2f}", va="center", fontsize=8)
    everything = [v for _, values in bars + lines for v in values]
    teachers = itertools.cycle(("tab:red", "tab:orange", "tab:brown"))  # a line per teacher row; the ensemble's green
    for name, values in lines:
        color = "tab:green" if name.startswith("their ensemble") else next(teachers)
        for j, v in enumerate(values):
            ax.axvline(v, ls="--", color=color, lw=1, label=name if j == 0 else None)
    ax.set_yticks(range(len(bars)), [name for name, _ in reversed(bars)], fontsize=8)
    ax.set_xlim(min(everything) - 3, max(everything) + 2.5)
    ax.set_xlabel("top-1 (%): bar = mean, dots = seeds")
    ax.set_title(title, fontsize=10)
    if lines:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=len(lines), frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--page", type=Path, default=ROOT / "docs" / "results.md")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = p.parse_args(argv)
    markdown = args.page.read_text()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (heading, columns, title) in PLOTS.items():
        plot(table(markdown, heading), columns, title, args.out / f"{name}.png")
        print(args.out / f"{name}.png")


if __name__ == "__main__":
    main()
