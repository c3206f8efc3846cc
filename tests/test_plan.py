"""`make reproduce-table PROFILE=paper PLAN=1`: grids, run counts, image-passes, files and GPU-hours, no training."""
import time

import pytest

from experiments.drivers import plan, reproduce
from experiments.drivers.catalog import discover

DATASETS = ["UTKFace", "AFAD-Full", "cifar/cifar-10-batches-py", "cifar/cifar-100-python", "road_marking",
            "plantnet300k", "word2vec/GoogleNews-vectors-negative300.bin"]


@pytest.fixture(scope="module")
def paper_plan(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    (data / "UTKFace").mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch")))
    lines: list[str] = []
    t0 = time.time()
    rc = plan.main("paper", None, str(data), 2000.0, out=lines.append)
    elapsed = time.time() - t0
    mp.undo()
    return data, rc, lines, elapsed


def test_plan_names_every_missing_file_and_runs_in_seconds(paper_plan):
    data, rc, lines, elapsed = paper_plan
    assert rc == 0 and elapsed < 60
    text = "\n".join(lines)
    assert f"present: {data / 'UTKFace'}" in text
    for rel in DATASETS[1:]:
        assert f"MISSING {data / rel} (" in text
    assert "MISSING " in text and "resnet18-f37072fd.pth (model.weights=imagenet" in text


def test_plan_counts_runs_and_image_passes(paper_plan):
    _, _, lines, _ = paper_plan
    text = "\n".join(lines)
    # UTKFace: int(0.6·23,708) = 14,224 train, 4,742 val, 4,742 test; 10 r × 10 seeds; ≤ 200 epochs.
    passes = 100 * ((14_224 + 4_742) * 200 + 4_742)
    assert f"utkface: 100 runs × ≤ 200 epochs, train/val/test 14,224 / 4,742 / 4,742 → {passes / 1e6:.2f} M" in text
    assert "= 200 runs" in text and "loss.r ∈ {0.0, 0.1" in text
    assert "schedule.milestones=[151,226]" in text
    totals = [ln for ln in lines if ln.startswith("  total: ")]
    n_paper = len(discover("paper", None, None))
    assert len(totals) == n_paper and all(ln.endswith(" GPU-hours") for ln in totals)
    assert any(ln.startswith("ALL: ") and ln.endswith("GPU-hours") for ln in lines)


def test_plan_prices_each_model_at_its_own_rate(paper_plan):
    """LeNet at 32 px and ResNet-18 at 224 px are priced apart, each GPU-hours = image-passes / its own rate."""
    _, _, lines, _ = paper_plan
    priced = {}
    for above, ln in zip(lines, lines[1:]):
        if ln.startswith("      ") and "GFLOPs/img" in ln:
            passes = float(above.split("→ ")[1].split(" ")[0]) * {"k": 1e3, "M": 1e6, "G": 1e9}[
                above.split("→ ")[1].split(" ")[1]]
            rate = float(ln.split("→ ")[1].split(" img/s")[0].replace(",", ""))
            hours = float(ln.split("GPU: ")[1].split(" GPU-hours")[0].replace(",", ""))
            assert hours == pytest.approx(passes / rate / 3600, rel=0.01, abs=0.06), ln
            priced[ln.split(":")[0].strip()] = rate
    assert priced["resnet18@224px"] < priced["resnet34_cifar@default"] < priced["lenet@default"]
    assert any("per GPU: memory ≥" in ln for ln in lines)


def test_sweep_values_keep_lists_whole():
    assert plan.sweep_values("1,[151,226],'a,b'") == ["1", "[151,226]", "'a,b'"]
    assert plan.sweep_values("ce") == ["ce"]


def test_reproduce_plan_flag_trains_nothing(tmp_path, capsys):
    rc = reproduce.main(["--profile", "paper", "--plan", "--exp", "simloss_age_paper", "--img-per-s", "500",
                         "--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results")])
    out = capsys.readouterr().out
    assert rc == 0 and "PLAN PROFILE=paper" in out and "GPU-hours" in out
    assert not (tmp_path / "results").exists()
    assert reproduce.main(["--profile", "paper", "--plan", "--img-per-s", "0"]) == 2
    assert "IMG_PER_S=0.0" in capsys.readouterr().err


def _ds(**node):
    from omegaconf import OmegaConf

    return OmegaConf.create(node)


def test_split_sizes_read_each_declaration_shape():
    fixed = _ds(sizes={"train": 11, "val": 4, "test": 3, "source": "s"}, scale=0.5)
    assert plan.split_sizes("x", fixed) == ((6, 2, 2), "s")               # ⌈5.5⌉, 2, ⌈1.5⌉
    total = _ds(sizes={"total": 1000, "source": "t"}, fractions=[0.5, 0.3, 0.2])
    assert plan.split_sizes("x", total) == ((500, 300, 200), "t")
    pool = _ds(sizes={"pool": 1000, "test": 200, "classes": 10}, classes=5, val_per_class=10)
    assert plan.split_sizes("p", pool)[0] == (450, 50, 100)                # half the classes: 500 pool, 50 held out
    assert plan.split_sizes("x", _ds(scale=1.0)) == (None, "x: size unknown to the plan (its config declares no `sizes`)")


def test_plantnet_sizes_are_the_ones_its_version_check_uses():
    from average_k.plantnet import VERSIONS

    sizes, source = plan.split_sizes("plantnet300k", _ds(sizes={"_target_": "average_k.plantnet.declared_sizes"}))
    assert sizes == (243_916, 31_118, 31_112) == tuple(VERSIONS["v1.1"][1].values()) and "v1.1" in source


def test_every_dataset_of_the_paper_profile_declares_its_sizes(paper_plan):
    _, _, lines, _ = paper_plan
    assert [ln for ln in lines if "size unknown" in ln] == []


def test_a_loss_with_per_example_parameters_is_priced_as_its_own_group(paper_plan):
    """ROLE declares its label table (`trained_state`): avgk_paper's two-head/EPR/ROLE sweep is priced as ROLE
    apart from the rest, its memory and traffic on the line; the others share one group as before."""
    _, _, lines, _ = paper_plan
    assert plan.declares_state("role") and not plan.declares_state("ce") and not plan.declares_state("glob(*)")
    role = [i for i, ln in enumerate(lines) if ln.strip().startswith("loss=role: 25 runs")]
    assert role and "the loss's per-example parameters: 263,673,196 floats" in lines[role[0] + 1]
    rest = lines[role[0] + 2]
    assert rest.strip().startswith("plantnet300k: 50 runs") and "per-example" not in lines[role[0] + 3]
