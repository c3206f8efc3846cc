"""`make verify` / `python -m experiments.verify`: did it reproduce? A verdict for every table cell of a results
set against a reference.

    python -m experiments.verify [--results results] [--reference tables|paper|DIR] [--profile default]
                                 [--exp simloss_age,...] [--out <results>/verify] [--alpha 0.05] [--keep-stale]
                                 [--budget 1]

References: `tables` = the committed long forms `results/tables/<table>.csv` (their git HEAD versions, since
`make reproduce-table` re-renders the working-tree copies from this machine's runs); `paper` = the user-filled
`results/paper_reference/<table>.csv`; DIR = another results directory (with `runs/`: its run JSONs are
summarised by the same table code) or a directory of table .csv files (e.g. another checkout's `results/tables`).
Cells, keys and metrics are the tables' own (`experiments.report.tables.cells`); statistics and verdicts are
`experiments.report.verify`. Writes `<out>/<table>.md|csv` atomically after every table was judged, prints one
summary line per table; exit 1 if any cell differs, 2 on bad input, else 0.
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from experiments.drivers.catalog import PROFILES, ROOT, discover, results_folder
from experiments.engine.budget import at_budget, factor
from experiments.engine.checkpoint import atomic_write
from experiments.engine.errors import UserError
from experiments.engine.metrics import Measure
from experiments.report import verify
from experiments.report.compare import REFERENCE_ONLY
from experiments.report.tables import TableSpec, cells, measure
from experiments.store.frame import load_runs

COMMITTED_PROFILE = "default"   # the profile whose tables are committed in results/tables (README)
NAMED = {"tables": ("tables", ROOT / "results" / "tables", None, True),
         "paper": ("paper", ROOT / "results" / "paper_reference")}


def committed_text(path: Path) -> str | None:
    """`path` as committed (git HEAD): `make reproduce-table` re-renders results/tables in place, so after it the
    working-tree copy holds this machine's numbers, not the reference. None outside a git checkout or when the
    file is not committed (then the working-tree copy is the reference)."""
    try:
        shown = subprocess.run(["git", "-C", str(ROOT), "show", f"HEAD:{path.relative_to(ROOT).as_posix()}"],
                               capture_output=True, text=True, timeout=60)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return shown.stdout if shown.returncode == 0 else None


@dataclass
class Reference:
    """Where the reference cells come from: `kind` tables | paper | runs, its directory, and for `tables` whether
    the committed (git HEAD) versions of its files are meant."""

    kind: str
    path: Path
    runs: pd.DataFrame | None = None
    committed: bool = False

    def read(self, path: Path) -> tuple[str | None, str]:
        """(the file's text or None when it does not exist, its name in messages)."""
        text = committed_text(path) if self.committed else None
        if text is not None:
            return text, f"{path} (as committed)"
        return (path.read_text(errors="replace") if path.exists() else None), str(path)

    @classmethod
    def open(cls, name: str, keep_stale: bool = False, budget: float = 1.0) -> "Reference":
        if name in NAMED:
            return cls(*NAMED[name])
        path = Path(name).expanduser()
        if (path / "runs").is_dir():
            return cls("runs", path, _runs(path, keep_stale, budget))
        if path.is_dir() and any(path.glob("*.csv")):
            return cls("tables", path)
        raise UserError(f"--reference {name}: not `tables`, `paper`, a results directory with runs/ nor a directory "
                        f"of table .csv files; give one of those")


def _runs(results: Path, keep_stale: bool, budget: float = 1.0) -> pd.DataFrame:
    """The runs of a results directory trained at `budget`, as the tables take them; with `keep_stale`, tables
    keep runs of code changed since (marked)."""
    df = at_budget(load_runs(results), budget)
    df.attrs["keep_stale"] = keep_stale
    return df


@dataclass
class Verdicts:
    """One table's outcome: judged cells (empty when skipped, `skipped` says why), unmatched counts, sources."""

    spec: TableSpec
    judged: pd.DataFrame = field(default_factory=pd.DataFrame)
    skipped: str = ""
    ours_only: int = 0
    reference_only: int = 0
    source: str = ""
    environments: tuple[list[str], list[str]] = ((), ())
    measures: dict[str, Measure] = field(default_factory=dict)


def reference_cells(ref: Reference, spec: TableSpec, scales: dict[str, float]) -> tuple[pd.DataFrame | None, str, list]:
    """(the reference's long form for `spec` or None when it has none, its source name, its environments)."""
    keys = list(spec.rows) + list(spec.columns)
    if ref.kind == "runs":
        long, counts = cells(ref.runs, spec)
        measured = long[long["n"] > 0] if len(long) else None
        return measured, str(ref.path / "runs"), list(counts.get("environments", {}))
    text, source = ref.read(ref.path / f"{spec.stem}.csv")
    if text is None or not text.strip():   # `make tables` writes an empty .csv for a table without runs
        return None, source, []
    frame = verify.read_reference(io.StringIO(text), source)
    if ref.kind == "paper":
        return verify.paper_reference(frame, keys, scales, source), source, ["the paper's"]
    md, _ = ref.read(ref.path / f"{spec.stem}.md")
    envs = verify.environments_of_table(md) if md is not None else []
    return verify.long_reference(frame, keys, source), source, envs or ["unrecorded"]


def verify_table(spec: TableSpec, df: pd.DataFrame, ref: Reference, alpha: float) -> Verdicts:
    """Judge one table's cells against the reference; a reference that overlaps none of its cells is an error."""
    out = Verdicts(spec)
    long, counts = cells(df, spec)
    ours = long[long["n"] > 0] if len(long) else long
    if ours.empty:
        out.skipped = "no completed runs of the current code in the results"
        return out
    out.measures = {m: measure(counts["measures"], m) for m in ours["metric"].unique()}
    scales = {m: (meaning.scale if spec.percent else 1.0) for m, meaning in out.measures.items()}
    reference, out.source, theirs = reference_cells(ref, spec, scales)
    if reference is None or reference.empty:
        hint = "; paper values belong to the paper-profile tables (PROFILE=paper)" if ref.kind == "paper" else ""
        out.skipped = f"no reference cells ({out.source}{hint})"
        return out
    keys = list(spec.rows) + list(spec.columns)
    overrides = verify.check_overrides(spec.verify.get("margins"), spec.metrics, spec.stem)
    out.judged, other = verify.compare_table(ours, reference, keys, out.measures, overrides, out.source, alpha)
    lonely = other[other["match"] == REFERENCE_ONLY]
    typos = verify.unknown_keys(lonely, ours, keys, spec.metrics) if ref.kind == "paper" else []
    if typos:
        line, what = typos[0]
        raise UserError(f"{out.source} line {int(line)}: {what} matches no cell of table {spec.stem}; fix the key "
                        f"(its cells are in results/tables/{spec.stem}.csv)")
    if out.judged.empty:
        raise UserError(f"{out.source}: none of its {len(reference)} cells matches a cell of table {spec.stem} in the "
                        f"results ({len(ours)} cells); check that both come from the same table and profile")
    out.reference_only, out.ours_only = len(lonely), int((other["match"] != REFERENCE_ONLY).sum())
    out.environments = (list(counts.get("environments", {})), theirs)
    return out


def summary_line(v: Verdicts, alpha: float) -> str:
    if v.skipped:
        return f"{v.spec.stem}: skipped — {v.skipped}"
    c = verify.counts(v.judged)
    tests = " / ".join(sorted(set(v.judged["test"])))
    margins = "; ".join(verify.margin_text(m, v.measures[m], v.spec.verify.get("margins") or {})
                        for m in v.judged["metric"].unique())
    extra = [f"{v.reference_only} reference cells not in the results"] if v.reference_only else []
    extra += [f"{v.ours_only} cells without a reference"] if v.ours_only else []
    ours, theirs = v.environments
    if set(ours) != set(theirs):
        extra.append(f"numerics environments differ: {'; '.join(ours)} vs {'; '.join(theirs)}")
    return (f"{v.spec.stem}: reproduced {c['reproduced']} / differs {c['differs']} / inconclusive "
            f"{c['inconclusive']} of {len(v.judged)} cells, δ = {margins}, α = {alpha}, {tests}"
            + (f" ({'; '.join(extra)})" if extra else ""))


def _display(v: Verdicts, r: pd.Series) -> str:
    meaning = v.measures[r["metric"]]
    scale, d = (meaning.scale if v.spec.percent else 1.0), v.spec.digits

    def num(x: float, sign: str = "") -> str:
        return f"{round(float(x) * scale, d) + 0.0:{sign}.{d}f}"   # + 0.0: no "-0.00" for a rounding residue

    text = f"{verify.MARKS[r['verdict']]} {num(r['mean_ours'])} vs {num(r['mean_ref'])}"
    if pd.isna(r["diff"]):
        return text + " (fewer than 2 runs)"
    text += f" Δ {num(r['diff'], '+')} [{num(r['low'], '+')}, {num(r['high'], '+')}]"
    return text + (f" (±{num(r['delta_min'])} needed)" if r["verdict"] == verify.INCONCLUSIVE else "")


def markdown(v: Verdicts, results: Path, alpha: float) -> str:
    """The table's layout with a verdict per cell, the margins, the tests and the environments."""
    spec, judged = v.spec, v.judged.copy()
    judged["row"] = [" · ".join(str(r[k]) for k in spec.rows) or "all" for _, r in judged.iterrows()]
    judged["col"] = [" · ".join([str(r[c]) for c in spec.columns] + [r["metric"]]) for _, r in judged.iterrows()]
    judged["cell"] = [_display(v, r) for _, r in judged.iterrows()]
    grid = judged.pivot(index="row", columns="col", values="cell").reindex(
        index=list(dict.fromkeys(judged["row"])), columns=list(dict.fromkeys(judged["col"]))).fillna("–")
    ours, theirs = v.environments
    lines = [f"# Did it reproduce? {spec.title or spec.stem}", "",
             f"Results: {results} ({'; '.join(ours) or 'unrecorded'}). Reference: {v.source} "
             f"({'; '.join(theirs) or 'unrecorded'}).", ""]
    if set(ours) != set(theirs):
        lines += ["Results and reference come from different numerics environments: expected (another CPU, GPU or "
                  "thread count rounds differently); the question is agreement within noise, not bit-identity.", ""]
    lines += ["| " + (" · ".join(spec.rows) or "runs") + " | " + " | ".join(grid.columns) + " |",
              "|" + "---|" * (len(grid.columns) + 1)]
    lines += [f"| {idx} | " + " | ".join(row.tolist()) + " |" for idx, row in grid.iterrows()]
    return "\n".join(lines + ["", summary_line(v, alpha), "", legend(alpha)]) + "\n"


def legend(alpha: float) -> str:
    level = round(100 * (1 - 2 * alpha))
    return (f"Cells: verdict, our mean vs the reference's, Δ = ours − reference with its {level} % interval "
            f"(1 − 2α) in the table's unit (percentage points for rates). ✓ reproduced: equivalence within ±δ "
            f"shown by two one-sided t-tests (TOST) at α = {alpha} — the {level} % interval lies inside ±δ. "
            f"✗ differs: the two-sided t-test of Δ = 0 is significant after Holm–Bonferroni over this table's "
            f"compared cells and |Δ| > δ. ? inconclusive: neither (too few seeds or too much spread); "
            f"'±x needed' is the smallest margin the data would have shown equivalence for. Welch TOST: the "
            f"reference has a std and n ≥ 2 (Welch–Satterthwaite df); one-sample TOST: a bare reference number "
            f"against our runs (df = n − 1). A ✓ says the two agree within δ, not that either is right; a ? says "
            f"nothing either way. The .csv has every number (raw units): δ, Δ, interval, p-values, δ needed.")


CSV_COLUMNS = ["metric", "mean_ours", "std_ours", "n_ours", "mean_ref", "std_ref", "n_ref", *verify.VERDICT_COLUMNS]


def outputs(v: Verdicts, out_dir: Path, results: Path, alpha: float) -> dict[Path, bytes]:
    """The .csv and .md of one judged table, as bytes (written only once every table rendered)."""
    keys = list(v.spec.rows) + list(v.spec.columns)
    table = v.judged[keys + CSV_COLUMNS].assign(alpha=alpha)
    return {out_dir / f"{v.spec.stem}.csv": table.to_csv(index=False).encode(),
            out_dir / f"{v.spec.stem}.md": markdown(v, results, alpha).encode()}


def run(args: argparse.Namespace) -> int:
    results = results_folder(args.results, "--results")
    only = [e for e in args.exp.split(",") if e]
    exps = discover(args.profile, only, None, results / "work" / "discover")
    budget = factor(args.budget)
    ref = Reference.open(args.reference, args.keep_stale, budget)
    if ref.committed and args.profile != COMMITTED_PROFILE:
        raise UserError(f"--reference tables: the committed tables are the {COMMITTED_PROFILE} profile's, so "
                        f"PROFILE={args.profile} runs (other epochs, seeds, grids) would differ by design; use "
                        f"PROFILE={COMMITTED_PROFILE}, or REFERENCE=<dir> with tables or runs of the same profile")
    df = _runs(results, args.keep_stale, budget)
    found = [verify_table(spec, df, ref, args.alpha) for exp in exps for spec in exp.tables if not spec.renderer]
    judged = [v for v in found if not v.skipped]
    if not judged:
        why = "; ".join(f"{v.spec.stem}: {v.skipped}" for v in found) or "no tables"
        raise UserError(f"no table of PROFILE={args.profile}{' EXP=' + args.exp if only else ''} has cells in both "
                        f"{results} and the reference ({args.reference}) — {why}; run `make reproduce-table` first, "
                        f"or fill the paper values")
    out_dir = Path(args.out).absolute() if args.out else results / "verify"
    files = {path: data for v in judged for path, data in outputs(v, out_dir, results, args.alpha).items()}
    for path, data in files.items():
        atomic_write(path, data)
    for v in found:
        print(summary_line(v, args.alpha))
    differs = sum(verify.counts(v.judged)["differs"] for v in judged)
    print(f"verify: {len(judged)} tables written to {out_dir}; {differs} cells differ")
    return 1 if differs else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(ROOT / "results"), help="results directory whose runs are checked")
    ap.add_argument("--reference", default="tables", help="tables (committed) | paper | DIR (runs/ or table .csv)")
    ap.add_argument("--profile", default="default", choices=PROFILES)
    ap.add_argument("--exp", default="", help="comma-separated experiment names (default: all of the profile)")
    ap.add_argument("--out", default=None, help="output directory (default: <results>/verify)")
    ap.add_argument("--budget", default="1", help="compare the runs trained at this budget (config key `budget`), "
                    "as `make tables BUDGET=…` shows them (default 1)")
    ap.add_argument("--keep-stale", action="store_true", help="keep runs of code changed since they ran, as "
                    "`make tables KEEP_STALE=1` does (default: only runs of the current code)")
    ap.add_argument("--alpha", type=float, default=verify.ALPHA, help="level of every test (default 0.05)")
    args = ap.parse_args(argv)
    try:
        if not 0 < args.alpha < 0.5:
            raise UserError(f"--alpha {args.alpha}: a test level in (0, 0.5), e.g. 0.05")
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
