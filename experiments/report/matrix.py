"""The cross-paper matrix (`experiment=matrix`): per-dataset tables are ordinary table specs filtered by `only`;
the summary ranks every loss on every dataset by that dataset's headline metric (direction as the metric
declares it) and averages the ranks. Pairs that could not run (status `refused`) show as a numbered `n/a¹` mark,
each distinct reason once under the table (`experiments.report.tables.RefusalNotes`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.engine.checkpoint import atomic_write
from experiments.report.tables import (
    REFUSED,
    RefusalNotes,
    code_versions_of,
    current_runs,
    measure,
    refusal_reason,
    tex_marks,
    version_lines,
)
from experiments.store.frame import measures_of


def only(runs: pd.DataFrame, spec) -> pd.DataFrame:
    """Table transform: the runs whose columns equal `options.where` (e.g. one dataset)."""
    keep = pd.Series(True, index=runs.index)
    for key, value in (spec.options.get("where") or {}).items():
        keep &= runs[key].astype(str) == str(value) if key in runs else False
    return runs[keep]


def rank_frame(df: pd.DataFrame, headline: dict[str, str], experiment: str) -> pd.DataFrame:
    """Rows = losses, columns = datasets: the rank (1 = best, ties averaged) of the loss's mean headline metric
    over completed seeds, or `n/a — <refusal reason>`; plus `mean rank` over the datasets where the loss ran."""
    runs, _, _ = current_runs(df[df["experiment_name"] == experiment])
    ranks: dict[str, pd.Series] = {}
    for dataset, metric in headline.items():
        here = runs[runs["dataset"] == dataset]
        done = here[here["status"] == "completed"]
        if done.empty or metric not in done:
            continue
        means = pd.to_numeric(done[metric], errors="coerce").groupby(done["loss"]).mean().dropna()
        higher = measure(measures_of(done), metric).higher_is_better
        col = means.rank(ascending=not higher, method="average").astype(object)
        for loss, reason in refusals(here).items():
            col.loc[loss] = REFUSED + reason
        ranks[dataset] = col
    table = pd.DataFrame(ranks)
    numeric = table.apply(lambda c: pd.to_numeric(c, errors="coerce"))
    table["mean rank"] = numeric.mean(axis=1)
    table["datasets"] = numeric.notna().sum(axis=1)
    # a loss that runs on fewer datasets (ordinal, hierarchy) is ranked among fewer rivals: list it after the others
    return table.sort_values(["datasets", "mean rank"], ascending=[False, True], na_position="last")


def refusals(runs: pd.DataFrame) -> dict[str, str]:
    refused = runs[(runs["status"] == "refused")] if "status" in runs else runs.iloc[:0]
    done = set(runs.loc[runs["status"] == "completed", "loss"]) if len(runs) else set()
    return {loss: refusal_reason(g["error"].iloc[0]) for loss, g in refused.groupby("loss") if loss not in done}


def _cell(value: Any, notes: RefusalNotes) -> str:
    if isinstance(value, str):
        return notes.mark(value.removeprefix(REFUSED)) if value.startswith(REFUSED) else value
    if isinstance(value, (int, np.integer)):
        return str(value)
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.1f}"


def render_ranks(df: pd.DataFrame, spec, out_dir: Path, paper_dir: Path | None = None) -> dict[str, Any]:
    """Table renderer: the rank summary as md/tex/csv (the csv keeps each refusal reason in its cell)."""
    headline = spec.options["headline"]
    table = rank_frame(df, headline, spec.experiment)
    out_dir = Path(out_dir)
    atomic_write(out_dir / f"{spec.stem}.csv", table.to_csv(index_label="loss").encode())
    notes = RefusalNotes()
    current, _, kept = current_runs(df[df["experiment_name"] == spec.experiment])
    versions = version_lines(code_versions_of(current[current["status"] == "completed"]), kept)
    md = _markdown(table, spec, notes, versions)  # numbers the refusal reasons in reading order; the tex reuses them
    atomic_write(out_dir / f"{spec.stem}.md", md.encode())
    atomic_write(out_dir / f"{spec.stem}.tex", _latex(table, notes).encode())
    runs = df[df["experiment_name"] == spec.experiment] if "experiment_name" in df else df
    return {"table": str(out_dir / f"{spec.stem}.md"), "runs": int((runs["status"] == "completed").sum()),
            "failed": int((runs["status"] == "failed").sum())}


def _markdown(table: pd.DataFrame, spec, notes: RefusalNotes, versions: list[str] = ()) -> str:
    lines = [f"# {spec.title or spec.stem}", ""]
    if table.empty:
        lines.append("No completed runs yet.")
    else:
        lines.append("| loss | " + " | ".join(table.columns) + " |")
        lines.append("|" + "---|" * (len(table.columns) + 1))
        lines += [f"| {loss} | " + " | ".join(_cell(v, notes) for v in row) + " |" for loss, row in table.iterrows()]
        lines += [""] + [f"- {note}" for note in notes.lines()] if notes.numbers else []
    headline = spec.options["headline"]
    lines += ["", "Rank 1 = best mean over seeds of: " + ", ".join(f"{d}: {m}" for d, m in headline.items())
              + " (direction as each metric declares it; ties share the average rank). Mean rank over the datasets"
              " where the loss ran; losses that run on fewer datasets are listed after the others.", *versions]
    return "\n".join(lines) + "\n"


def _latex(table: pd.DataFrame, notes: RefusalNotes) -> str:
    if table.empty:
        return "% no completed runs\n"
    tex = tex_marks(table.map(lambda v: _cell(v, notes)).to_latex(escape=True))
    return tex + "".join(tex_marks(note.replace("_", r"\_").replace("%", r"\%")) + "\\\\\n"
                         for note in notes.lines())


def rank_heatmap(ax, df: pd.DataFrame, spec, headline: dict[str, str]) -> None:
    """Figure: the rank of each loss (rows, in the rank table's order) per dataset (columns), best dark, each cell
    labelled with its rank (ties keep their .5); pairs without a rank are grey "n/a". The figure's size is set
    from the number of rows and columns (experiments.report.plots.SIZES)."""
    import matplotlib

    table = rank_frame(df, headline, spec.experiment).drop(columns=["mean rank", "datasets"])
    values = table.apply(lambda c: pd.to_numeric(c, errors="coerce")).to_numpy(dtype=float)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.88")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(table.columns)), table.columns, fontsize=9)  # horizontal: columns are sized to them
    ax.set_yticks(range(len(table.index)), table.index, fontsize=9)
    ax.tick_params(length=0)
    ax.grid(False)
    middle = (np.nanmin(values) + np.nanmax(values)) / 2 if np.isfinite(values).any() else 0.0
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "n/a" if np.isnan(v) else f"{v:g}", ha="center", va="center", fontsize=8,
                color="white" if not np.isnan(v) and v < middle else "black")
    ax.figure.colorbar(image, ax=ax, label="rank (1 = best)", fraction=0.08, aspect=30)
