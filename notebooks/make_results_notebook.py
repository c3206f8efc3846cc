"""Writes notebooks/results.ipynb (kept as code so its source stays reviewable): `python notebooks/make_results_notebook.py`.

The notebook reads one experiment at a time, with the code `make reproduce-table` renders with: the table's runs as
the renderer selects them, its long form with the tables' own statistics (`experiments.report.tables.cells`:
paired by seed, Holm), its figures drawn again (`experiments.report.plots.draw_figure`), and a second results
folder lined up cell by cell (`experiments.report.compare.align`, as `make verify` does before its verdicts).
"""
from pathlib import Path

import nbformat as nbf

SETUP = """\
%matplotlib inline
import os, sys
from pathlib import Path
ROOT = Path.cwd().parent if Path.cwd().name == 'notebooks' else Path.cwd()
sys.path.insert(0, str(ROOT))
from IPython.display import Markdown, display
import matplotlib.pyplot as plt
from experiments.drivers.catalog import discover
from experiments.drivers.reproduce import load_for_render
from experiments.report.compare import align
from experiments.report.plots import draw_figure
from experiments.report.tables import cells

RESULTS = Path(os.environ.get('LOSSLAB_RESULTS', ROOT / 'results'))       # the runs you made
REFERENCE = Path(os.environ.get('LOSSLAB_REFERENCE', ROOT / 'results'))   # another results folder to compare with
PROFILE = os.environ.get('LOSSLAB_PROFILE', 'default')                    # the profile whose tables you ran
runs = load_for_render(RESULTS)          # every run at budget 1, one row each: metrics and flattened config
print(len(runs), 'runs in', RESULTS)
runs.groupby(['experiment_name', 'status']).size().unstack(fill_value=0) if len(runs) else runs"""

PICK = """\
EXPERIMENT = os.environ.get('LOSSLAB_EXPERIMENT') or sorted(runs.experiment_name.unique())[0]
(exp,) = discover(PROFILE, [EXPERIMENT], None)     # its sweeps, tables and figures, from conf/experiment/
one = runs[runs.experiment_name == EXPERIMENT]
print(EXPERIMENT, '—', len(one), 'runs; tables:', [t.stem for t in exp.tables], '; figures:', [f.name for f in exp.figures])"""

TABLE_RUNS = """\
spec = exp.tables[0]                               # the main table; exp.tables[i] for the others
done = one[one.status == 'completed']
shown = ['run_id', 'seed', *spec.rows, *spec.columns, *[m for m in spec.metrics if m.startswith(('test/', 'val/'))]]
done[[c for c in dict.fromkeys(shown) if c in done]].sort_values([c for c in spec.rows if c in done] + ['seed'])"""

STATS = """\
long, counts = cells(one, spec)                    # what results/tables/<table>.csv holds: one row per cell and metric
print(spec.title); print('runs:', counts['runs'], ' failed:', counts['failed'], ' refused:', counts['refused'])
keys = [*spec.rows, *spec.columns]
columns = [*keys, 'metric', 'mean', 'std', 'n', 'test', 'n_pairs', 'diff', 'ci_low', 'ci_high', 'p_holm', 'significant', 'mde']
long[[c for c in columns if c in long]]"""

RENDERED = """\
table_md = RESULTS / 'tables' / f'{spec.stem}.md'
display(Markdown(table_md.read_text()) if table_md.exists() else Markdown(f'*{table_md} not rendered yet: make tables*'))"""

FIGURES = """\
for figure in exp.figures:                         # the same figures as results/figures/<experiment>_<name>.png
    fig = draw_figure(one, figure)
    if fig is not None:
        display(fig)
        plt.close(fig)"""

CURVES = """\
import json
metric = next(m for m in spec.metrics if m.startswith('test/')).replace('test/', 'val/')
knob = spec.rows[-1] if spec.rows else 'loss'
fig, ax = plt.subplots(figsize=(6, 3.2))
for value, group in done.groupby(knob):
    for i, path in enumerate(group['path']):       # the run JSON: its `history` holds one dict per epoch
        history = json.loads(Path(path).read_text())['history']
        epochs = [h['epoch'] for h in history]
        ax.plot(epochs, [h.get(metric) for h in history], color=f'C{list(done[knob].unique()).index(value) % 10}',
                alpha=0.6, label=f'{knob} = {value}' if i == 0 else None)
ax.set_xlabel('epoch'); ax.set_ylabel(metric); ax.set_title(f'{EXPERIMENT}: {metric} per epoch, one line per seed')
ax.legend(fontsize=7)
display(fig); plt.close(fig)                       # display: draw_figure leaves pyplot on a file backend"""

COMPARE = """\
ref_runs = load_for_render(REFERENCE) if (REFERENCE / 'runs').is_dir() else None
if ref_runs is not None and len(ref_runs):
    reference = cells(ref_runs, spec)[0]
else:                                              # a folder of rendered tables: its long form
    import pandas as pd
    reference = pd.read_csv(REFERENCE / 'tables' / f'{spec.stem}.csv')
side_by_side = align(long, reference, keys=keys)
side_by_side['shift'] = side_by_side['mean_ours'] - side_by_side['mean_ref']
side_by_side[[*keys, 'metric', 'mean_ours', 'n_ours', 'mean_ref', 'n_ref', 'shift', 'match']]"""

def section(markdown: str, *code: str) -> list:
    """A markdown cell followed by its code cells."""
    return [nbf.v4.new_markdown_cell(markdown), *map(nbf.v4.new_code_cell, code)]


CELLS = [
    *section(
        "# losslab results, one experiment at a time\n\n"
        "Every run is one JSON under `results/runs/<experiment>/`. This notebook reads them with the code that "
        "renders the tables: pick an experiment, list the runs of its table, rebuild the table with its own "
        "statistics (paired by seed, Holm-corrected), draw its figures again, and line it up with another results "
        "folder. Environment variables: `LOSSLAB_RESULTS` (default `results/`), `LOSSLAB_EXPERIMENT` (default: the "
        "first with runs), `LOSSLAB_PROFILE` (default `default`), `LOSSLAB_REFERENCE` (a folder with `runs/` or "
        "with rendered `tables/`).", SETUP),
    *section("## Pick one experiment\n\nA table pools only its own experiment's runs: never average "
             "runs of two experiments by loss name.", PICK),
    *section("## The runs of its main table\n\nOne row per run: its seed, the table's row and "
             "column keys and its metrics; `path` is its JSON, whose `history` holds each epoch.", TABLE_RUNS),
    *section(
        "## The table with its own statistics\n\n`cells` is what `make tables` writes to "
        "`results/tables/<table>.csv`: per cell the mean, std and n over seeds and, against the baseline, the paired "
        "difference with its 95 % interval, the Holm-adjusted p-value and the minimum detectable effect "
        "(docs/statistics.md). Below it, the rendered table if `make tables` wrote one.", STATS, RENDERED),
    *section("## Its figures, drawn again\n\nThe figures the experiment declares under `figures:` "
             "in `conf/experiment/<name>.yaml`, drawn from these runs.", FIGURES),
    *section("## A plot of your own: validation curves per seed\n\nEach run's `history`, one line "
             "per seed, coloured by the table's last row key.", CURVES),
    *section(
        "## Compare two results folders\n\nThe same table from `REFERENCE`, cell by cell (`match` says which side "
        "has the cell). For a verdict per cell (reproduced / differs / inconclusive) run "
        "`make verify RESULTS=<yours> REFERENCE=<other>`.", COMPARE),
]

if __name__ == "__main__":
    nb = nbf.v4.new_notebook(cells=CELLS, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                   "language": "python"}})
    nbf.write(nb, Path(__file__).with_name("results.ipynb"))
