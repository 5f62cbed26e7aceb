"""The plot of bench/fleet.py's results: time to answer and memory per VMM, per kind.

One report: bars per VMM kind. Several reports (different ``--count``): lines against N,
how each figure grows as the host holds more microVMs. matplotlib is imported here
only, so the bench itself runs without it (install the ``bench`` extra to plot).

    python3 bench/fleetplot.py OUT.png REPORT.json [REPORT.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firelet.errors import UsageError

#: (figure key in each kind's results, axis label)
_PANELS = (("answer_s", "launch -> answer, s\n(per-VM median, bar to max; dot: all answered)"),
           ("uss_mib", "per VMM, MiB (median)"))


def _median(result: dict[str, Any], key: str) -> float:
    s = result.get(key)
    return float(s["median"]) if isinstance(s, dict) else float("nan")


def plot(reports: list[Path], out: Path) -> None:
    """Draw the reports into ``out`` (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'firelet[bench]' (or matplotlib)") from None
    loaded = sorted((json.loads(p.read_text()) for p in reports), key=lambda r: r["count"])
    kinds = [k for k, r in loaded[0]["results"].items() if "unavailable" not in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    if len(loaded) == 1:
        results = loaded[0]["results"]
        xs = range(len(kinds))
        for ax, (key, label) in zip(axes, _PANELS, strict=True):
            medians = [_median(results[k], key) for k in kinds]
            if key == "answer_s":
                tops = [results[k][key]["max"] if results[k].get(key) else float("nan") for k in kinds]
                ax.bar(xs, medians, color="tab:blue", yerr=[[0] * len(kinds),
                                                            [t - m for t, m in zip(tops, medians, strict=True)]],
                       capsize=4)
                ax.plot(xs, [results[k].get("all_answered_s") or float("nan") for k in kinds], "ko")
            else:
                guest = [_median(results[k], "guest_private_mib") for k in kinds]
                own = [m - g for m, g in zip(medians, guest, strict=True)]
                ax.bar(xs, own, color="tab:orange", label="USS: the VMM's own")
                ax.bar(xs, guest, bottom=own, color="tab:orange", alpha=0.45, hatch="//",
                       label="USS: guest RAM touched")
                rss = [_median(results[k], "rss_mib") for k in kinds]
                ax.plot(xs, rss, "k_", markersize=30, label="RSS")
                ax.set_ylim(top=1.4 * max(rss))
                ax.legend(fontsize=8, loc="upper center", ncol=3)
            ax.set_xticks(list(xs), kinds)
            ax.set_ylabel(label, fontsize=9)
        title = f"{loaded[0]['count']} microVMs at once, {loaded[0]['mem_mib']} MiB each"
    else:
        counts = [r["count"] for r in loaded]
        for ax, (key, label) in zip(axes, _PANELS, strict=True):
            for kind in kinds:
                ax.plot(counts, [_median(r["results"].get(kind, {}), key) for r in loaded], marker="o", label=kind)
            ax.set_xlabel("microVMs launched at once (N)")
            ax.set_ylabel(label, fontsize=9)
            ax.legend(fontsize=8)
        title = f"N microVMs at once, {loaded[0]['mem_mib']} MiB each"
    where = "in the nested rig (TCG outside, kvm-amd inside)" if loaded[0]["rig"].startswith("nested") else "on KVM"
    fig.suptitle(f"{title}, {where}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    plot([Path(p) for p in sys.argv[2:]], Path(sys.argv[1]))
