"""DIR/frontier.md and DIR/frontier.png: every finished trial, speed against accuracy, the
Pareto front marked (no other met trial is both at least as accurate and at least as fast)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from optimize.bench.report import markdown_table
from optimize.tune.space import Candidate, Decision, best_record, met, score


def pareto(records: Sequence[Mapping[str, Any]], objective: str) -> list[Mapping[str, Any]]:
    """The met trials no other met trial dominates on (accuracy, objective score)."""
    points = [r for r in records if met(r) and r["figures"].get("accuracy") is not None]

    def dominated(r: Mapping[str, Any]) -> bool:
        acc, s = float(r["figures"]["accuracy"]), score(r, objective)
        return any(
            float(o["figures"]["accuracy"]) >= acc and score(o, objective) >= s
            and (float(o["figures"]["accuracy"]) > acc or score(o, objective) > s)
            for o in points
        )

    return [r for r in points if not dominated(r)]


def _fmt(value: Any, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


_COLUMNS = ("trial", "status", "cosine mean", "cosine min", "agreement", "unseen cosine", "acc. drop", "vs PyTorch", "p50 ms", "MB", "s", "node", "Pareto")


def _row(r: Mapping[str, Any], on_front: bool) -> list[str]:
    f = r.get("figures") or {}
    return [
        Candidate.from_dict(r["candidate"]).label, r["status"],
        _fmt(f.get("cosine_mean"), ".5f"), _fmt(f.get("cosine_min"), ".4f"), _fmt(f.get("agreement"), ".3f"),
        _fmt(f.get("unseen_cosine_mean"), ".5f"), _fmt(f.get("accuracy_drop"), "+.2f"),
        _fmt(r.get("speedup"), ".2f") + ("x" if r.get("speedup") else ""), _fmt(r.get("p50_ms"), ".2f"),
        _fmt(r["size_bytes"] / 1e6 if r.get("size_bytes") else None, ".1f"), _fmt(r.get("seconds"), ".0f"),
        str(r.get("node", ""))[:8], "yes" if on_front else "",
    ]


def markdown(records: Sequence[Mapping[str, Any]], objective: str, goal: str, skipped: Sequence[Decision], header: Sequence[str]) -> str:
    front = {r["key"] for r in pareto(records, objective)}
    best = best_record(records, objective)
    lines = [f"# Tuning frontier", "", *header, f"- goal: {goal}; objective: {objective}", ""]
    if best is not None:
        lines.append(
            f"**best**: {Candidate.from_dict(best['candidate']).label}: {best['speedup']:.2f}x PyTorch eager "
            f"({best['p50_ms']:.2f} ms), {best['size_bytes'] / 1e6:.1f} MB, accuracy figure {best['figures']['accuracy']:.4f} (DIR/best)"
        )
    else:
        lines.append("**best**: none: no trial met the goal")
    lines.append("")
    lines += markdown_table(_COLUMNS, [_row(r, r["key"] in front) for r in records])
    misses = [r for r in records if r["status"] != "met" and r.get("error")]
    if misses:
        lines += ["", "Why trials missed:", ""]
        lines += [f"- {Candidate.from_dict(r['candidate']).label}: {r['error']}" for r in misses]
    if skipped:
        lines += ["", "Not tried:", ""]
        lines += [f"- {d.describe()}" for d in skipped]
    return "\n".join(lines) + "\n"


def plot(records: Sequence[Mapping[str, Any]], objective: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in records if met(r) and r["figures"].get("accuracy") is not None]
    front = sorted(pareto(records, objective), key=lambda r: float(r["figures"]["accuracy"]))
    ylabel = "model MB" if objective == "size" else f"{objective}: times faster than PyTorch eager"
    value = (lambda r: r["size_bytes"] / 1e6) if objective == "size" else (lambda r: float(r["speedup"]))  # noqa: E731
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r["figures"]["accuracy"] for r in points], [value(r) for r in points], color="tab:blue", label="trial (met the goal)")
    for r in points:
        ax.annotate(Candidate.from_dict(r["candidate"]).label, (r["figures"]["accuracy"], value(r)), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if front:
        ax.plot([r["figures"]["accuracy"] for r in front], [value(r) for r in front], color="tab:red", marker="o", label="Pareto front")
    ax.set_xlabel("accuracy figure (lowest mean cosine of the parity sets, or minus accuracy points lost)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"optimize tune: {len(records)} trials, {len(points)} met the goal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(folder: Path, records: Sequence[Mapping[str, Any]], objective: str, goal: str, skipped: Sequence[Decision], header: Sequence[str]) -> tuple[Path, Path]:
    """Both files, each replaced atomically (written beside, then renamed)."""
    md, png = folder / "frontier.md", folder / "frontier.png"
    tmp_md, tmp_png = folder / ".frontier.md.tmp", folder / ".frontier.tmp.png"
    tmp_md.write_text(markdown(records, objective, goal, skipped, header), encoding="utf-8")
    plot(records, objective, tmp_png)
    tmp_md.replace(md)
    tmp_png.replace(png)
    return md, png
