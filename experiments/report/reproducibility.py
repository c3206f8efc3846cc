"""The reproducibility report, written with the tables: `results/report/<paper>.md`, one self-contained
`results/report/index.html` (figures embedded as base64, opens offline), `results/report/claims.csv` (a verdict per
claim, setting and metric: experiments.report.claims) and the claims summary between the README's markers.

Each paper's report: *Scope* (its claims, quoted, with their source), *Methodology* (profile, datasets and what
each stands in for, model, protocol, budget, seeds, selection, how hyper-parameters were chosen, deviations),
*Results* (the verdicts, each linked to its table), *Checklist* (infrastructure, runtime per method, parameters
per model, validation beside test score, number of runs, statistics used). Every fact comes from the runs, the
configs or the claims files. `write_reports` is the one entry point the render step calls; it re-renders nothing
when its inputs (claims files, tables, convergence summary, figures, this code) did not change.
"""
from __future__ import annotations

import base64
import hashlib
import html
import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import yaml

from experiments.engine.config import CONF_DIR
from experiments.engine.checkpoint import atomic_write
from experiments.report import claims as claimlib
from experiments.report import converge, tables

ROOT = CONF_DIR.parent
Experiment = Any   # experiments.drivers.catalog.Experiment (a driver: the report floor sits below it)
CLAIMS_DIR = CONF_DIR / "claims"
README = ROOT / "README.md"
BEGIN, END = "<!-- claims:begin -->", "<!-- claims:end -->"
DIGEST = ".inputs.sha256"
Block = tuple  # ("h", level, text) | ("p", text) | ("ul", [items]) | ("table", header, rows) | ("img", path, title)


# ------------------------------------------------------------------ the claims and the specs they name
def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in over.items()}}
    return over


def _experiment_node(name: str) -> dict:
    """An experiment file merged over the experiment files it extends (`defaults: [<experiment>, _self_]`): its
    `tables` node as Hydra composes it, read in milliseconds (composing costs ~0.5 s per profile)."""
    own = yaml.safe_load((CONF_DIR / "experiment" / f"{name}.yaml").read_text()) or {}
    merged: dict = {}
    for parent in (d for d in own.get("defaults", []) if isinstance(d, str) and d != "_self_"):
        merged = _merge(merged, _experiment_node(parent))
    return _merge(merged, own)


def table_specs(stems: set[str], exps: list[Experiment]) -> dict[str, tables.TableSpec]:
    """The specs of `stems`: this profile's experiments' first, else read from the experiment file defining it."""
    specs = {s.stem: s for e in exps for s in e.tables}
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        if not stems - set(specs):
            break
        if not any(stem == path.stem or stem.startswith(path.stem + "_") for stem in stems - set(specs)):
            continue
        node = _experiment_node(path.stem)
        name = node.get("experiment_name", path.stem)
        for tname, table in (node.get("tables") or {}).items():
            spec = tables.TableSpec.from_config(name, tname, table) if isinstance(table, dict) else None
            if spec is not None and spec.stem in stems:
                specs.setdefault(spec.stem, spec)
    return specs


def load_claims(exps: list[Experiment], results_dir: Path,
                claims_dir: Path = CLAIMS_DIR) -> tuple[list[claimlib.Paper], dict[str, tables.TableSpec]]:
    """Every claims file, checked (UserError naming file and claim) before anything renders, and the specs of
    the tables they name."""
    stems = set()
    for path in sorted(Path(claims_dir).glob("*.yaml")):
        node = _yaml(path)
        listed = node.get("claims") if isinstance(node, dict) else None
        stems |= {str(c["table"]) for c in listed or [] if isinstance(c, dict) and c.get("table")}
    specs = table_specs(stems, exps)
    return claimlib.read_all(claims_dir, specs, CONF_DIR), specs


def _yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}


# ------------------------------------------------------------------ numbers as text
def _num(value: float, scale: float, signed: bool = True) -> str:
    if value is None or not math.isfinite(float(value)):
        return "–"
    digits = 2 if scale != 1.0 or abs(value) >= 0.01 else 4
    return f"{value * scale:{'+' if signed else ''}.{digits}f}"


def deciding(row: Mapping[str, Any]) -> str:
    """`Δ +1.23 pp [+0.40, +2.06]` (or `slope … per level`), with the MDE when inconclusive."""
    if row["verdict"] == claimlib.NOT_RUN or not math.isfinite(float(row.get("diff", math.nan))):
        return ""
    scale, unit = float(row["scale"]), row["unit"]
    name = "Δ" if row["kind"] == "improves" else "slope"
    per = "" if row["kind"] == "improves" else "/level"
    text = f"{name} {_num(row['diff'], scale)} {unit}{per}"
    if math.isfinite(float(row["low"])):
        text += f" [{_num(row['low'], scale)}, {_num(row['high'], scale)}]"
    if row["verdict"] == claimlib.INCONCLUSIVE:
        text += f", MDE {_num(row['mde'], scale, False)}"
    return text + f" (n={int(row['n'])})"


def qualifiers(row: Mapping[str, Any]) -> str:
    if row["verdict"] == claimlib.NOT_RUN:
        return "not run in this profile"
    return "" if row["converge"] == claimlib.CONVERGED else str(row["converge"])


def claim_line(row: Mapping[str, Any]) -> str:
    """One claims-summary line: `paper/claim [setting] metric: verdict — Δ … (qualifiers)`."""
    extra = " — ".join(p for p in (deciding(row), qualifiers(row)) if p)
    return f"{row['paper']}/{row['claim']} [{row['setting']}] {row['metric']}: {row['verdict']}" + (
        f" — {extra}" if extra else "")


def readme_block(rows: pd.DataFrame) -> str:
    """The README's claims summary: one bullet per claim, setting and metric that ran, and one per claim for the
    settings this profile does not run (what `make tables` writes)."""
    if rows.empty:
        return "No claims evaluated yet: `make tables` writes this summary."
    lines = []
    for (paper, claim), group in rows.groupby(["paper", "claim"], sort=False):
        ran = group[group["verdict"] != claimlib.NOT_RUN]
        lines += [f"- {claim_line(r)}" for _, r in ran.iterrows()]
        absent = list(dict.fromkeys(group.loc[group["verdict"] == claimlib.NOT_RUN, "setting"]))
        if absent:
            lines.append(f"- {paper}/{claim}: not run in this profile for {'; '.join(f'[{a}]' for a in absent)}")
    return ("Verdicts per claim and setting — supported / contradicted (significant after Holm over the paper's "
            "claims, in / against the claimed direction), no effect (equivalent within the metric's margin), "
            "inconclusive (with the MDE) — from `results/report/claims.csv` (rendered by "
            "experiments/report/reproducibility.py; report: [results/report/index.html](results/report/index.html); "
            "how they are decided: [docs/statistics.md](docs/statistics.md), \"Claims\"):\n\n" + "\n".join(lines))


def update_readme(rows: pd.DataFrame, readme: Path = README) -> bool:
    """Replace what stands between the README's markers with `readme_block(rows)`; False when the markers are
    absent or the block is already up to date."""
    text = readme.read_text() if readme.exists() else ""
    if BEGIN not in text or END not in text:
        return False
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{readme_block(rows)}\n{END}{tail}"
    if new == text:
        return False
    atomic_write(readme, new.encode())
    return True


def readme_between_markers(readme: Path = README) -> str | None:
    text = readme.read_text() if readme.exists() else ""
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


# ------------------------------------------------------------------ facts for the report
def _header_comment(path: Path) -> str:
    """The leading comment block of a config file (where its choices are explained), as one paragraph."""
    lines = []
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("# @package"):
            continue
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return " ".join(lines)


def _values(runs: pd.DataFrame, column: str) -> str:
    if column not in runs:
        return "–"
    found = sorted({claimlib.canonical(v) for v in runs[column].dropna()}, key=lambda v: (len(v), v))
    return ", ".join(found) or "–"


def _group_key(runs: pd.DataFrame, spec: tables.TableSpec) -> str:
    return next((k for k in list(spec.columns) + ["loss"] if k in runs), "loss")


def parameters(runs: pd.DataFrame, results_dir: Path) -> dict[str, int]:
    """Trainable-weight count per (model, loss, dataset), read from one kept checkpoint (`work/<exp>/<run>/best.pt`)
    of each; BatchNorm statistics are not counted."""
    import torch

    out = {}
    for (model, loss, dataset), group in runs.groupby(["model", "loss", "dataset"], dropna=False):
        for _, r in group.iterrows():
            path = Path(results_dir) / "work" / str(r["experiment_name"]) / str(r["run_id"]) / "best.pt"
            if path.exists():
                state = torch.load(path, map_location="cpu", weights_only=False).get("model", {})
                out[f"{model} · {loss} · {dataset}"] = int(sum(
                    t.numel() for k, t in state.items() if t.is_floating_point()
                    and not k.endswith(("running_mean", "running_var"))))
                break
    return out


def _runtime(runs: pd.DataFrame, key: str) -> list[list[str]]:
    if "duration_s" not in runs or runs.empty:
        return []
    d = pd.to_numeric(runs["duration_s"], errors="coerce")
    g = runs.assign(_d=d).groupby(runs[key].map(claimlib.canonical))["_d"]
    return [[str(k), str(int(n)), f"{m:.1f}", f"{s:.0f}"] for k, n, m, s in
            zip(g.count().index, g.count(), g.median(), g.sum())]


def _val_beside_test(runs: pd.DataFrame, spec: tables.TableSpec, key: str) -> list[list[str]]:
    select = _values(runs, "trainer.select_metric")
    tests = [m for m in spec.metrics if m in runs][:2]
    if select in ("–", "last") or "," in select or select not in runs:
        return []
    rows = []
    for value, g in runs.groupby(runs[key].map(claimlib.canonical)):
        cells = [f"{pd.to_numeric(g[c], errors='coerce').mean():.4f}" for c in [select] + tests]
        rows.append([str(value), *cells])
    return [[key, select, *tests]] + rows


STATISTICS = (
    "Improves: Δ = method − baseline, the table's own comparison (paired by seed, 95 % paired-t interval; Welch "
    "where the table says so). Trend and trade-off: per seed the least-squares slope of Δ over the level ranks, "
    "one-sample t-test of the mean slope (seeds are the unit). Holm–Bonferroni over every test of the paper; "
    "supported / contradicted = significant after Holm (α = 0.05) in / against the claimed direction; no effect = "
    "TOST within the metric's margin δ (as `make verify`; δ/(L−1) per level for a slope); else inconclusive, with "
    "the MDE (80 % power). Qualifiers: the table's `make converge-check` verdict, and not run where the cells "
    "are absent. docs/statistics.md, sections \"Claims\" and \"The verdict procedure\".")


def paper_blocks(paper: claimlib.Paper, rows: pd.DataFrame, runs_of: Mapping[str, pd.DataFrame],
                 specs: Mapping[str, tables.TableSpec], profile: str, results_dir: Path) -> list[Block]:
    """The report of one paper as blocks (rendered to markdown and to HTML)."""
    mine = rows[rows["paper"] == paper.paper]
    stems = list(dict.fromkeys(c.table for c in paper.claims))
    blocks: list[Block] = [("h", 1, f"Reproducibility report: {paper.title or paper.paper}"),
                           ("p", f"Profile `{profile}`; claims from `{Path(paper.file).relative_to(ROOT) if Path(paper.file).is_relative_to(ROOT) else paper.file}`."),
                           ("h", 2, "Scope"),
                           ("ul", [f"**{c.id}** ({c.kind}): “{c.quote}” — {c.source}. Tested as: {c.claim}"
                                   for c in paper.claims]),
                           ("h", 2, "Methodology")]
    for stem in stems:
        blocks += _methodology(specs[stem], runs_of.get(stem, pd.DataFrame()))
    blocks.append(("p", f"Deviations from the official code: [{paper.deviations}](../../{paper.deviations}). "
                        f"Hyper-parameter searches (bounds and validation objective): conf/hparams_search/."))
    blocks += [("h", 2, "Results"),
               ("table", ["claim", "setting", "metric", "verdict", "deciding evidence", "p (Holm)", "δ", "qualifiers",
                          "table"],
                [[r["claim"], r["setting"], r["metric"], f"**{r['verdict']}**", deciding(r),
                  f"{r['p_holm']:.3g}" if math.isfinite(float(r["p_holm"])) else "–",
                  _num(r["delta"], float(r["scale"]) if math.isfinite(float(r["scale"])) else 1.0, False),
                  qualifiers(r), f"[{r['table']}](../tables/{r['table']}.md)"] for _, r in mine.iterrows()]),
               ("h", 2, "Checklist")]
    for stem in stems:
        blocks += _checklist(specs[stem], runs_of.get(stem, pd.DataFrame()), results_dir)
    blocks.append(("p", f"Statistics used: {STATISTICS}"))
    return blocks


def _methodology(spec: tables.TableSpec, runs: pd.DataFrame) -> list[Block]:
    if runs.empty:
        return [("h", 3, f"Table {spec.stem}"), ("p", "Not run in this profile.")]
    datasets = [f"`{d}`: {_header_comment(CONF_DIR / 'dataset' / f'{d}.yaml') or 'no description'}"
                for d in sorted(runs["dataset"].dropna().unique())] if "dataset" in runs else []
    facts = [f"model: {_values(runs, 'model')} ({', '.join(c + ' ' + _values(runs, c) for c in runs if c.startswith('model.') and c != 'model._target_')})",
             f"optimiser: {_values(runs, 'optim._target_')}, lr {_values(runs, 'optim.lr')}, batch "
             f"{_values(runs, 'trainer.batch_size')}; schedule {_values(runs, 'schedule._target_')}",
             f"training length: budget {_values(runs, 'budget')}, epochs {_values(runs, 'trainer.epochs')}, "
             f"min steps {_values(runs, 'trainer.min_steps')}",
             f"selection: {_values(runs, 'trainer.select_metric')} on validation; test metrics at the selected epoch",
             f"seeds: {_values(runs, 'seed')}"]
    why = _header_comment(CONF_DIR / "experiment" / f"{spec.experiment}.yaml")
    return [("h", 3, f"Table {spec.stem} ([{spec.stem}.md](../tables/{spec.stem}.md))"),
            ("ul", [f"dataset {d}" for d in datasets] + facts),
            ("p", f"How the protocol and hyper-parameters were chosen (conf/experiment/{spec.experiment}.yaml): {why}")]


def _checklist(spec: tables.TableSpec, runs: pd.DataFrame, results_dir: Path) -> list[Block]:
    if runs.empty:
        return [("h", 3, f"Table {spec.stem}"), ("p", "No runs in this profile.")]
    key = _group_key(runs, spec)
    env = runs["environment"].fillna("unrecorded").value_counts() if "environment" in runs else pd.Series(dtype=int)
    blocks: list[Block] = [("h", 3, f"Table {spec.stem}: {len(runs)} runs"),
                           ("ul", [f"infrastructure: {e} ({n} runs)" for e, n in env.items()]
                            + [f"device {_values(runs, 'device')}; git commits {_values(runs, 'git_commit')}"]),
                           ("table", [key, "runs", "median s per run", "total s"], _runtime(runs, key))]
    params = parameters(runs, results_dir)
    if params:
        blocks.append(("table", ["model · loss · dataset", "parameters"], [[k, f"{v:,}"] for k, v in params.items()]))
    beside = _val_beside_test(runs, spec, key)
    if beside:
        blocks.append(("table", beside[0], beside[1:]))
    return blocks


# ------------------------------------------------------------------ blocks → markdown / HTML
def _md_cell(text: Any) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out += ["#" * block[1] + " " + block[2], ""]
        elif kind == "p":
            out += [block[1], ""]
        elif kind == "ul":
            out += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table" and block[2]:
            out += ["| " + " | ".join(map(_md_cell, block[1])) + " |", "|" + "---|" * len(block[1])]
            out += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in block[2]] + [""]
        elif kind == "img":
            out += [f"![{block[2]}](../figures/{Path(block[1]).name})", ""]
    return "\n".join(out)


def _inline(text: str) -> str:
    text = html.escape(str(text))
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\[([^\]]+)\]\(([^)]+)\)", lambda m: f'<a href="{m.group(2).removeprefix("../")}">{m.group(1)}</a>',
                  text)


def to_html(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append(f"<h{block[1]}>{_inline(block[2])}</h{block[1]}>")
        elif kind == "p":
            out.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table" and block[2]:
            head = "".join(f"<th>{_inline(c)}</th>" for c in block[1])
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in block[2])
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        elif kind == "img":
            data = base64.b64encode(Path(block[1]).read_bytes()).decode()
            out.append(f'<figure><img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{_inline(block[2])}</figcaption></figure>")
    return "\n".join(out)


STYLE = ("body{font-family:sans-serif;max-width:80em;margin:auto;padding:1em}table{border-collapse:collapse;"
         "margin:.5em 0}td,th{border:1px solid #bbb;padding:.2em .4em;font-size:90%}img{max-width:100%}")


def figures_of(paper: claimlib.Paper, specs: Mapping[str, tables.TableSpec], exps: list[Experiment],
               figure_dir: Path) -> list[Block]:
    wanted = {specs[c.table].experiment for c in paper.claims}
    return [("img", str(figure_dir / f"{f.experiment}_{f.name}.png"), f.title or f.name)
            for e in exps for f in e.figures
            if f.experiment in wanted and (figure_dir / f"{f.experiment}_{f.name}.png").exists()]


# ------------------------------------------------------------------ the entry point
def _digest(papers: list[claimlib.Paper], specs: Mapping[str, tables.TableSpec], results_dir: Path, profile: str,
            figures: list[Path]) -> str:
    h = hashlib.sha256(profile.encode())
    files = [Path(p.file) for p in papers] + [Path(__file__), Path(claimlib.__file__),
                                              results_dir / "converge" / converge.SUMMARY]
    files += [results_dir / "tables" / f"{c.table}{ext}" for p in papers for c in p.claims
              for ext in (".csv", ".versions.json")]
    for path in files + figures:   # contents, not times: a re-rendered identical figure changes nothing
        h.update(_portable(path, results_dir).encode() + (path.read_bytes() if path.exists() else b"-"))
    return h.hexdigest()


def _portable(path: Path, results_dir: Path) -> str:
    """`path` relative to the results folder or the checkout, so that a clone elsewhere computes the same digest."""
    for base in (results_dir, ROOT):
        if path.resolve().is_relative_to(base.resolve()):
            return str(path.resolve().relative_to(base.resolve()))
    return str(path)


def write_reports(results_dir: Path, profile: str, exps: list[Experiment],
                  runs: pd.DataFrame | Callable[[], pd.DataFrame],
                  loaded: tuple[list[claimlib.Paper], dict[str, tables.TableSpec]] | None = None) -> list[str]:
    """Evaluate every claim on the runs (a frame, or a function giving it: called only when something changed),
    write claims.csv, one <paper>.md per paper and index.html under `<results_dir>/report/`, refresh the README
    block when `results_dir` is the committed `results/`; returns the summary lines (one per claim, setting and
    metric, then the report's path)."""
    results_dir = Path(results_dir)
    out_dir = results_dir / "report"
    papers, specs = loaded if loaded is not None else load_claims(exps, results_dir)
    figure_blocks = {p.paper: figures_of(p, specs, exps, results_dir / "figures") for p in papers}
    digest = _digest(papers, specs, results_dir, profile, [Path(b[1]) for bs in figure_blocks.values() for b in bs])
    csv = out_dir / "claims.csv"
    known = (out_dir / DIGEST).read_text().strip() if (out_dir / DIGEST).exists() else ""
    if known == digest and csv.exists() and (out_dir / "index.html").exists():
        rows = pd.read_csv(csv, keep_default_na=False, na_values=[""])
    else:
        df = runs() if callable(runs) else runs
        rows = claimlib.evaluate(papers, df, specs, converge.read_summary(results_dir / "converge" / converge.SUMMARY))
        runs_of = {s: tables._select(df, specs[s])[0] if not df.empty else pd.DataFrame()
                   for s in {c.table for p in papers for c in p.claims}}
        pages = {p.paper: paper_blocks(p, rows, runs_of, specs, profile, results_dir) for p in papers}
        for paper, blocks in pages.items():
            atomic_write(out_dir / f"{paper}.md", (to_markdown(blocks + figure_blocks[paper])).encode())
        body = "\n".join(to_html(blocks + figure_blocks[paper]) for paper, blocks in pages.items())
        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>losslab reproducibility report</title>"
                f"<style>{STYLE}</style></head><body>{body}</body></html>\n")
        atomic_write(out_dir / "index.html", page.encode())
        atomic_write(csv, rows.to_csv(index=False).encode())
        atomic_write(out_dir / DIGEST, (digest + "\n").encode())
    if results_dir.resolve() == (ROOT / "results").resolve():
        update_readme(rows)
    return [claim_line(r) for _, r in rows.iterrows()] + [f"report: {out_dir / 'index.html'}"]
