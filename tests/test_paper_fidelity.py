"""Paper profiles field by field (issue 10): each paper-vs-code difference is an option whose sides are checked
against an independent computation or a known answer."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from age_estimation.datasets import AFAD, UTKFace
from average_k.conformal import aps_scores
from average_k.losses import batch_pseudo_labels
from average_k.plantnet import PlantNet300K
from experiments.drivers.train import compose_config
from experiments.engine import models
from experiments.engine.config import validate
from experiments.engine.errors import UserError
from image_classification.similarity import main as similarity_cli
from image_classification.similarity import similarity_stats, stand_in_similarity
from tests.helpers.formats import make_plantnet, write_afad, write_utkface


def official_partition(n, seed=42):
    """TrainValTestDataset: np.random.seed(42), shuffle arange(n), int() cuts at 60 % and 80 %."""
    np.random.seed(seed)
    index = np.arange(n)
    np.random.shuffle(index)
    return index[:int(0.6 * n)], index[int(0.6 * n):int(0.8 * n)], index[int(0.8 * n):]


def imagefolder_samples(root):
    """(relative path, target) in torchvision ImageFolder order: the official code's labels and sample order."""
    from torchvision.datasets import ImageFolder

    return [(str(Path(p).relative_to(root)), t) for p, t in ImageFolder(str(root)).samples]


def pooled(data):
    return {n: y for split in (data.train, data.val, data.test) for n, y in zip(split.names, split.y.tolist())}


# --------------------------------------------------------------------------- item 1: pretrained weights
def test_imagenet_weights_load_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url, path = models.imagenet_checkpoint("resnet18")
    assert path == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth" and url.endswith(path.name)
    shapes = {k: v.shape for k, v in __import__("torchvision").models.resnet18().state_dict().items()}
    tiny = {k: torch.full((1,), 0.25).expand(s) if s else torch.tensor(0) for k, s in shapes.items()}
    path.parent.mkdir(parents=True)
    torch.save(tiny, path)
    assert path.stat().st_size < 200_000
    net = models.resnet18(weights="imagenet")
    assert (net.conv1.weight == 0.25).all() and isinstance(net.fc, torch.nn.Identity)
    local = tmp_path / "mine.pth"
    shutil.copy(path, local)
    assert (models.resnet18(weights_path=str(local)).layer4[0].conv1.weight == 0.25).all()
    assert not (models.resnet18().conv1.weight == 0.25).all()


def test_imagenet_weights_offline_error_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError, match=r"resnet50-0676ba61\.pth.*place https://\S+ at .*hub/checkpoints/"):
        models.resnet50(weights="imagenet")
    with pytest.raises(UserError, match="set only one"):
        models.resnet18(weights="imagenet", weights_path=str(tmp_path / "x.pth"))
    with pytest.raises(UserError, match="model.weights='imagenet1k'"):
        models.resnet18(weights="imagenet1k")


def test_avgk_paper_is_pretrained_with_imagenet_statistics_and_cifar_sweeps_drop_plantnet_keys():
    cfg, _ = compose_config(["experiment=avgk_paper", "profile=paper"])
    validate(cfg)
    assert cfg.model.weights == "imagenet" and cfg.model.weights_path is None
    assert cfg.dataset.pretrained_stats is True and cfg.dataset.expect_version == "v1.1"
    cfg, choices = compose_config(["experiment=avgk_paper", "profile=paper", "dataset=cifar100_noisy",
                                   "model=resnet34_cifar", "~model.weights=imagenet", "~dataset.expect_version=v1.1"])
    validate(cfg)
    assert "weights" not in cfg.model and "expect_version" not in cfg.dataset


# --------------------------------------------------------------------------- item 2 and 6: labels, file list, split
@pytest.fixture()
def afad_root(tmp_path):
    root = tmp_path / "AFAD-Full"
    write_afad(root, {(9, "111"): 2, (15, "111"): 3, (15, "112"): 2, (30, "111"): 4, (72, "112"): 3},
               stray=["30/111/z.png", "15/999/x.jpg"])
    (root / "AFAD-Full.txt").write_text("readme")
    return root


def test_afad_official_rank_and_listing_equal_imagefolder(afad_root, tmp_path):
    data = AFAD(str(afad_root), cache_dir=str(tmp_path / "c"), labels="official_rank", listing="official")()
    samples = imagefolder_samples(afad_root)
    assert sorted({t for _, t in samples}) == [0, 1, 2, 3] and dict(samples)["9/111/100000-0.jpg"] == 3
    tr, va, te = official_partition(len(samples))
    for split, idx in ((data.train, tr), (data.val, va), (data.test, te)):
        assert list(zip(split.names, split.y.tolist())) == [samples[i] for i in idx]
    assert data.meta.num_classes == 90 and data.meta.class_names[:4] == ["15", "30", "72", "9"]


def test_afad_age_labels_and_strict_listing(afad_root, tmp_path):
    data = AFAD(str(afad_root), cache_dir=str(tmp_path / "c"))()
    labels = pooled(data)
    assert len(labels) == 14 and all(y == int(n.split("/")[0]) - 1 for n, y in labels.items())
    with pytest.raises(UserError, match="dataset.labels='rank'"):
        AFAD(str(afad_root), labels="rank")


def test_utkface_official_listing_keeps_the_raceless_files_like_the_readme_layout(tmp_path):
    root = tmp_path / "UTKFace"
    good = write_utkface(root, [1, 5, 5, 23, 61, 90], bad_names=["61_1_20170109142408075.jpg.chip.jpg",
                                                                 "95_0_0_20170110000000001.jpg", "notes.txt"])
    organised = tmp_path / "organised"
    for name in good + ["61_1_20170109142408075.jpg.chip.jpg"]:
        (organised / f"{int(name.split('_')[0]):03d}").mkdir(parents=True, exist_ok=True)
        shutil.copy(root / name, organised / f"{int(name.split('_')[0]):03d}" / name)
    samples = [(p.split("/")[1], t) for p, t in imagefolder_samples(organised)]
    data = UTKFace(str(root), cache_dir=str(tmp_path / "c"), labels="official_rank", listing="official")()
    tr, va, te = official_partition(len(samples))
    for split, idx in ((data.train, tr), (data.val, va), (data.test, te)):
        assert list(zip(split.names, split.y.tolist())) == [samples[i] for i in idx]
    strict = UTKFace(str(root), cache_dir=str(tmp_path / "c"))()
    assert "61_1_20170109142408075.jpg.chip.jpg" not in pooled(strict) and len(pooled(strict)) == 6
    assert strict.meta.extras["files"]["unparsed"] == 2


def test_simloss_paper_profiles_use_official_labels_and_ten_seeds():
    from experiments.drivers.catalog import discover

    exps = {e.name: e for e in discover("paper", ["simloss_age_paper", "simloss_cifar_paper"], None)}
    for exp in exps.values():
        assert all(s["seed"] == "0,1,2,3,4,5,6,7,8,9" for s in exp.sweeps)
    cfg, _ = compose_config(["experiment=simloss_age_paper", "profile=paper", "dataset=afad"])
    validate(cfg)
    assert cfg.dataset.labels == "official_rank" and cfg.dataset.listing == "official"


# --------------------------------------------------------------------------- item 3: non-randomised RAPS
def official_gcq_sets(p, tau, kreg, lam):
    """aangelopoulos/conformal_classification `gcq(randomized=False)`: cumsum of the sorted scores plus
    cumsum(msk), msk[kreg:] = λ; set = the first (#(cumsum ≤ τ) + 1) classes."""
    order = np.argsort(-p, axis=1)
    ordered = np.take_along_axis(p, order, axis=1)
    msk = np.zeros((1, p.shape[1]))
    msk[:, kreg:] += lam
    cumsum = np.cumsum(ordered, axis=1) + np.cumsum(msk, axis=1)
    sizes = (cumsum <= tau).sum(axis=1) + 1
    return [set(order[i, :sizes[i]].tolist()) for i in range(len(p))]


def our_sets(p, tau, kreg, lam, rule):
    s = aps_scores(torch.from_numpy(p), lam, kreg, u=0.0, rule=rule).numpy()
    return [set(np.nonzero(row <= tau)[0].tolist()) for row in s]


def test_raps_known_answer():
    p = np.array([[0.5, 0.3, 0.2]])
    assert official_gcq_sets(p, 0.65, 0, 0.1) == [{0, 1}]
    assert our_sets(p, 0.65, 0, 0.1, "official") == [{0, 1}]
    assert our_sets(p, 0.65, 0, 0.1, "own_rank") == [{0}]


@pytest.mark.parametrize("kreg,lam", [(0, 0.1), (1, 0.05), (2, 0.3)])
def test_raps_official_rule_equals_gcq(kreg, lam):
    rng = np.random.RandomState(kreg)
    p = rng.dirichlet(np.ones(7) * 0.5, size=40)
    for tau in (0.3, 0.62, 0.9, 1.4):
        assert our_sets(p, tau, kreg, lam, "official") == official_gcq_sets(p, tau, kreg, lam)
    s1 = aps_scores(torch.from_numpy(p), lam, kreg, u=1.0, rule="official")
    assert torch.allclose(s1, aps_scores(torch.from_numpy(p), lam, kreg, u=1.0, rule="own_rank"))
    with pytest.raises(UserError):
        aps_scores(torch.from_numpy(p), lam, kreg, rule="previous")


# --------------------------------------------------------------------------- item 4: Pl@ntNet-300K version
def test_plantnet_version_check(tmp_path, monkeypatch):
    root = make_plantnet(tmp_path / "pn")
    with pytest.raises(UserError, match=r"of no known version \(3 species, train/val/test 12 / 3 / 3\), not v1\.1 "
                                        r"\(1,081 species, 243,916 / 31,118 / 31,112\)"):
        PlantNet300K(str(root), resize=24, crop=16, expect_version="v1.1")()
    assert PlantNet300K(str(root), resize=24, crop=16)().meta.num_classes == 3
    monkeypatch.setitem(__import__("average_k.plantnet").plantnet.VERSIONS, "v1.1",
                        (3, {"train": 12, "val": 3, "test": 3}))
    assert len(PlantNet300K(str(root), resize=24, crop=16, scale=0.5, expect_version="v1.1")().train) == 6
    with pytest.raises(UserError, match="dataset.expect_version='v3'"):
        PlantNet300K(str(root), expect_version="v3")


def test_plantnet_v2_is_named(tmp_path):
    for split in ("train", "val", "test"):
        for c in range(1000):
            d = tmp_path / split / f"{c:04d}"
            d.mkdir(parents=True)
            (d / "a.jpg").touch()
    with pytest.raises(UserError, match=r"holds Pl@ntNet-300K v2\.0 \(1,000 species.*not v1\.1.*Zenodo"):
        PlantNet300K(str(tmp_path), expect_version="v1.1")()


# --------------------------------------------------------------------------- item 5: CCE paper profile
def test_cce_paper_sweeps_both_signs_focal_alpha_and_road_marking():
    from experiments.drivers.catalog import discover

    exp = discover("paper", ["cce_imbalanced_paper"], None)[0]
    by_loss = {}
    for s in exp.sweeps:
        for loss in s["loss"].split(","):
            by_loss.setdefault(loss, []).append(s)
    assert {s.get("loss.variant") for s in by_loss["cce"]} == {"paper,official"}
    assert [s["loss.alpha"] for s in by_loss["focal"]] == ["0.25"]
    for loss in ("ce", "cot", "cce"):
        assert any(s["dataset"] == "road_marking" and s["dataset.flip"] == "false" for s in by_loss[loss])
    spec = exp.tables[0]
    assert any(item.startswith("road_marking ") for item in spec.requires_data)
    assert "loss.variant" in spec.columns and "Training pool" in spec.notes and "11,165" in spec.notes
    cfg, _ = compose_config(["experiment=cce_imbalanced_paper", "profile=paper", "dataset=road_marking",
                             "dataset.flip=false", "loss=cce", "loss.variant=official"])
    validate(cfg)


# --------------------------------------------------------------------------- item 8: within-budget pseudo-labels
def test_within_budget_is_its_own_avgk_paper_method_and_averages_k():
    from experiments.drivers.catalog import discover

    exp = discover("paper", ["avgk_paper"], None)[0]
    within = [s for s in exp.sweeps if s.get("loss.pl_budget") == "within"]
    assert {s.get("dataset", "plantnet300k") for s in within} == {"plantnet300k", "cifar100_noisy"}
    probs = torch.softmax(torch.randn(8, 10, generator=torch.Generator().manual_seed(0)), 1)
    targets = probs.argmin(1)
    extra = batch_pseudo_labels(probs, 2, targets, budget_rule="extra")
    inside = batch_pseudo_labels(probs, 2, targets, budget_rule="within")
    assert extra.sum(1).mean() == 3.0 and inside.sum(1).mean() == 2.0


# --------------------------------------------------------------------------- item 11: stand-in similarity
def test_similarity_stats_match_a_hand_computation():
    s = torch.tensor([[1.0, 0.6, 0.2, -0.1], [0.6, 1.0, 0.0, 0.3], [0.2, 0.0, 1.0, 0.5], [-0.1, 0.3, 0.5, 1.0]])
    st = similarity_stats(s, [0, 0, 1, 1], lower_bounds=(0.0, 0.4))
    assert st["within_mean"] == pytest.approx(0.55) and st["within_sd"] == pytest.approx(np.std([.6, .6, .5, .5],
                                                                                                ddof=1))
    assert st["between_mean"] == pytest.approx((0.2 + 0.0 - 0.1 + 0.3) / 4) and st["between_negative"] == 0.25
    assert st["offdiag_mean"] == pytest.approx((2 * 0.6 + 2 * 0.5 + 2 * 0.4) / 12)
    assert st["row_mass@0"] == pytest.approx((0.8 + 0.9 + 0.7 + 0.8) / 4)
    assert st["row_mass@0.4"] == pytest.approx((1 / 3 + 1 / 3 + 1 / 6 + 1 / 6) / 4)


def test_stand_in_similarity_has_the_documented_word2vec_like_profile(capsys):
    st = similarity_stats(*stand_in_similarity("word2vec_like", 0))
    assert 0.35 <= st["within_mean"] <= 0.45 and 0.10 <= st["within_sd"] <= 0.20
    assert 0.10 <= st["between_mean"] <= 0.15 and 0.07 <= st["between_sd"] <= 0.13
    assert 0.03 <= st["between_negative"] <= 0.20
    assert st["row_mass@0.6"] < 0.1 < st["row_mass@0.4"]
    old = similarity_stats(*stand_in_similarity("prototypes", 0))
    assert old["within_mean"] > 0.8 and abs(old["between_mean"]) < 0.02
    assert similarity_cli(["stats"]) == 0
    assert "within superclass 0.3" in capsys.readouterr().out
