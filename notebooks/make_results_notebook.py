"""Writes notebooks/results.ipynb (kept as code so its source stays reviewable): `python notebooks/make_results_notebook.py`."""
from pathlib import Path

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell(
        "# losslab results\n\nEvery run is one JSON under `results/runs/<experiment>/`; `load_runs` turns them into a "
        "DataFrame (one row per run: metrics and the flattened config as columns). This notebook rebuilds a table "
        "and two figures from those files alone. Set `LOSSLAB_RESULTS` to read another results folder."),
    nbf.v4.new_code_cell(
        "import os, sys\nfrom pathlib import Path\nROOT = Path.cwd().parent if Path.cwd().name == 'notebooks' else Path.cwd()\n"
        "sys.path.insert(0, str(ROOT))\nRESULTS = Path(os.environ.get('LOSSLAB_RESULTS', ROOT / 'results'))\n"
        "from experiments.store.frame import load_runs\nruns = load_runs(RESULTS)\n"
        "print(len(runs), 'runs;', runs.status.value_counts().to_dict())\nruns.head()"),
    nbf.v4.new_markdown_cell(
        "## Slicing runs\n\nColumns: `experiment_name`, `dataset`/`model`/`loss` (config-group choices), `seed`, `status`, "
        "metrics such as `test/accuracy`, and config paths such as `loss.r` or `dataset.imbalance.ratio`."),
    nbf.v4.new_code_cell(
        "done = runs[runs.status == 'completed']\n"
        "metric_cols = [c for c in done.columns if c.startswith('test/')][:6]\n"
        "done.groupby(['experiment_name', 'loss'])[metric_cols].agg(['mean', 'std', 'count']).round(4)"),
    nbf.v4.new_markdown_cell("## One table, rebuilt\n\nThe same renderer as `make reproduce-table`: mean ± std (n), "
                             "best in bold, Welch t-test against the baseline."),
    nbf.v4.new_code_cell(
        "from experiments.report.tables import TableSpec, summarize\n"
        "exp = done.experiment_name.iloc[0]\n"
        "spec = TableSpec(experiment=exp, rows=['loss'], metrics=['test/accuracy', 'test/balanced_accuracy'],\n"
        "                 baseline={'loss': done[done.experiment_name == exp]['loss'].iloc[0]})\n"
        "table = summarize(done[done.experiment_name == exp], spec)\ntable"),
    nbf.v4.new_markdown_cell("## Two figures"),
    nbf.v4.new_code_cell(
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))\n"
        "pivot = done.groupby('loss')['test/accuracy'].agg(['mean', 'std'])\n"
        "axes[0].bar(pivot.index, pivot['mean'] * 100, yerr=pivot['std'] * 100, capsize=3)\n"
        "axes[0].set_ylabel('test accuracy (%)'); axes[0].set_title('accuracy per loss (mean ± std over seeds)')\n"
        "import json\nfor path in done.path[:4]:\n"
        "    hist = json.loads(Path(path).read_text())['history']\n"
        "    axes[1].plot([h['epoch'] for h in hist], [h['train/loss'] for h in hist], label=Path(path).stem[:8])\n"
        "axes[1].set_xlabel('epoch'); axes[1].set_ylabel('training loss'); axes[1].legend(fontsize=7)\n"
        "fig.tight_layout()"),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                               "language": "python"}})
nbf.write(nb, Path(__file__).with_name("results.ipynb"))
