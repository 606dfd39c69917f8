"""Summarise a soft-label cache folder; --verify re-checks every shard's checksum.

    python tools/inspect_cache.py cache/<fingerprint> [--verify]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distill.store import softlabels  # noqa: E402
from distill.errors import UserError  # noqa: E402


def summarise(labels: softlabels.SoftLabels) -> dict:
    """Teacher accuracy, mean entropy and mean top-k mass (at the cache's T) over every cached view."""
    m, t, c, k = labels.manifest, labels.temperature, labels.num_classes, labels.topk
    feature_bytes = 2 * labels.feature_dim if labels.feature_dim else 0
    correct = entropy = mass = 0.0
    count = 0
    for shard in labels.shards:
        for lo in range(0, len(shard), 65536):  # bounded memory whatever the cache size
            rec = shard[lo:lo + 65536]
            log_q = rec["logits"].astype(np.float64) / t - rec["lse"][..., None]
            q = np.exp(log_q)
            r = np.clip(1.0 - q.sum(-1), 0.0, 1.0)
            h = -(q * log_q).sum(-1)
            if k < c:
                h -= np.where(r > 0, r * np.log(np.maximum(r, 1e-300) / (c - k)), 0.0)
            correct += rec["correct"].sum()
            entropy += h.sum()
            mass += (1.0 - r).sum()
            count += h.size
    return {"images": len(labels), "views": labels.views, "top-k": f"{k}{' (all logits)' if labels.dense else ''}",
            "temperature": t, "classes": c, "size on disk": f"{labels.nbytes() / 2**20:.2f} MiB",
            "bytes per view": f"{m.record_bytes / labels.views + feature_bytes:.1f}",
            "features": (f"pooled teacher features of width {labels.feature_dim} (fp16, {feature_bytes} B per view)"
                         if labels.feature_dim else "none (cache.features=false)"),
            "teacher top-1 on cached views": f"{100.0 * correct / max(count, 1):.2f}%",
            "mean entropy": f"{entropy / max(count, 1):.4f} nats", "mean top-k mass": f"{mass / max(count, 1):.4f}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="a cache folder (holding manifest.json)")
    parser.add_argument("--verify", action="store_true", help="re-check every shard's sha256")
    args = parser.parse_args()
    try:
        labels = softlabels.SoftLabels(args.path, verify=args.verify)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    rows = summarise(labels)
    if args.verify:
        rows["checksums"] = f"all {len(labels.shards)} shards ok"
    width = max(map(len, rows))
    for key, value in rows.items():
        print(f"{key.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
