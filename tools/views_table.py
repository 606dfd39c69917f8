"""The views experiment's table and plot (tools/views_experiment.sh): student top-1 against cached views V and
uses per view (epochs / V), beside online KD and the CE baseline, mean over seeds; and the rule it gives, the most
uses per view at which cached KD stays within TOLERANCE points of online KD.

    python tools/views_table.py runs/views --views 2 8 32 --seeds 0 1 --epochs 40

Reads each run's summary.json (`v<V>-s<seed>/`, `online-s<seed>/` with the baseline); writes <runs>/views.md and
<runs>/views.png and prints the table.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

TOLERANCE = 0.3  # points of top-1 below online KD that still count as keeping up


def models(run: Path) -> dict:
    path = run / "summary.json"
    if not path.exists():
        raise SystemExit(f"error: {path} is missing: that run has not finished; rerun tools/views_experiment.sh")
    return json.loads(path.read_text())["models"]


def rule(points: list[tuple[float, float]], reference: float) -> float | None:
    """The most uses per view at which cached KD's mean top-1 is within TOLERANCE of `reference` (online KD's
    mean), or None when no point is. points: (uses per view, mean top-1)."""
    return max((uses for uses, top1 in points if top1 >= reference - TOLERANCE), default=None)


def epochs_v(epochs: int, uses: float) -> str:
    return f"V = {round(epochs / uses)}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, help="the experiment's run root (RUNS of views_experiment.sh)")
    p.add_argument("--views", type=int, nargs="+", required=True)
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--epochs", type=int, required=True, help="student epochs")
    args = p.parse_args()
    seeds, e = args.seeds, args.epochs
    online = {s: models(args.runs / f"online-s{s}") for s in seeds}
    teacher_name = f"teacher ({online[seeds[0]]['teacher']['model']})"
    rows = [(teacher_name, "-", "-", "-", [online[s]["teacher"]["top1"] for s in seeds]),
            ("CE baseline", "-", "-", "0", [online[s]["baseline"]["top1"] for s in seeds]),
            ("online KD", "-", "1 (a fresh view each epoch)", f"{e} per student",
             [online[s]["student"]["top1"] for s in seeds])]
    on = statistics.mean(rows[2][4])
    points = []
    for v in sorted(args.views):
        top1 = [models(args.runs / f"v{v}-s{s}")["student"]["top1"] for s in seeds]
        points.append((e / v, statistics.mean(top1), top1))
        rows.append((f"cached KD, V = {v}", str(v), f"{e / v:g}", f"{v}, once", top1))
    head = ("| model | V | uses per view | teacher forwards per image | "
            + " | ".join(f"seed {s}" for s in seeds) + " | mean | mean - online KD |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for name, v, uses, forwards, top1 in rows:
        m = statistics.mean(top1)
        diff = f"{m - on:+.2f}" if name != teacher_name else ""
        lines.append(f"| {name} | {v} | {uses} | {forwards} | " + " | ".join(f"{t:.2f}" for t in top1)
                     + f" | {m:.2f} | {diff} |")
    teacher, baseline = statistics.mean(rows[0][4]), statistics.mean(rows[1][4])
    u = rule([(x, m) for x, m, _ in points], on)
    notes = [f"{len(seeds)} student seeds, {e} epochs; teacher forwards: V per image once for a cache (shared by "
             f"every student), epochs per image for each online-KD student."]
    if teacher <= baseline:
        notes.append(f"WARNING: the teacher ({teacher:.2f}%) does not beat the CE baseline ({baseline:.2f}%): this "
                     "measures the teacher, not the views.")
    notes.append("rule: " + (f"the most uses per view at which cached KD is within {TOLERANCE} points of online KD: "
                             f"{u:g} ({epochs_v(e, u)})" if u is not None else
                             f"no measured V keeps cached KD within {TOLERANCE} points of online KD"))
    best_uses, best = max(((x, m) for x, m, _ in points), key=lambda p: p[1])
    within = rule([(x, m) for x, m, _ in points], best)
    notes.append(f"cached KD at its best measured V ({epochs_v(e, best_uses)}, {best:.2f}%) is {best - on:+.2f} points "
                 f"from online KD; the most uses per view within {TOLERANCE} points of that best: {within:g}")
    text = "\n".join(lines + [""] + notes)
    (args.runs / "views.md").write_text(text + "\n")
    print(text)
    plot(points, rows, on, args.runs / "views.png", e)


def plot(points, rows, online: float, path: Path, epochs: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    band = rows[2][4]
    ax.axhspan(min(band), max(band), color="tab:green", alpha=0.2, label="online KD (seed range)")
    ax.axhline(online, color="tab:green", lw=1)
    ax.axhspan(online - TOLERANCE, online + TOLERANCE, color="tab:green", alpha=0.07,
               label=f"online KD mean +- {TOLERANCE}")
    base = statistics.mean(rows[1][4])
    ax.axhline(base, color="tab:gray", ls="--", lw=1, label=f"CE baseline ({base:.2f})")
    xs = [x for x, _, _ in points]
    ax.plot(xs, [m for _, m, _ in points], "o-", color="tab:blue", label="cached KD (mean)")
    for x, _, top1 in points:
        ax.scatter([x] * len(top1), top1, color="tab:blue", s=12, alpha=0.5)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(xs, [f"{x:g}\n(V={round(epochs / x)})" for x in xs])
    ax.set_xlabel(f"uses per cached view (epochs / V, {epochs} epochs)")
    ax.set_ylabel("student top-1 (%)")
    ax.set_title("Cached KD against online KD, by how often each view is replayed")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
