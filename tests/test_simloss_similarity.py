"""Similarity matrices and the word-vector reader, against formulas written out here."""
import math

import numpy as np
import pytest
import torch

from experiments.engine.data import Meta
from experiments.engine.errors import UserError
from image_classification.cifar import OFFICIAL_QUERY_WORDS, SIMLOSS_DROPPED
from image_classification.similarity import (
    ConfiguredSimLoss,
    embedding_cosine,
    lower_bound_rescale,
    ordinal_similarity,
    superclass_similarity,
)
from image_classification.wordvectors import detect_format, read_vectors
from tests.helpers.formats import (
    CIFAR100_FINE,
    write_glove,
    write_word2vec_binary,
    write_word2vec_text,
)

VECTORS = {
    "apples": [1.0, 0.0, 0.0, 0.5],
    "pears": [0.9, 0.1, 0.0, 0.4],
    "rocket": [-0.2, 1.0, 0.3, 0.0],
    "tank": [0.0, 0.8, -0.6, 0.1],
    "unused": [5.0, 5.0, 5.0, 5.0],
}


def cosine_by_hand(words):
    out = np.zeros((len(words), len(words)))
    for i, a in enumerate(words):
        for j, b in enumerate(words):
            va, vb = VECTORS[a], VECTORS[b]
            dot = sum(x * y for x, y in zip(va, vb))
            out[i, j] = dot / (math.sqrt(sum(x * x for x in va)) * math.sqrt(sum(y * y for y in vb)))
    return out


@pytest.mark.parametrize("r", [0.0, 0.1, 0.5, 0.9])
def test_ordinal_matches_formula(r):
    s = ordinal_similarity(7, r)
    for i in range(7):
        for j in range(7):
            assert s[i, j].item() == pytest.approx(r ** abs(i - j) if i != j else 1.0, abs=1e-15)
    if r == 0.0:
        assert torch.equal(s, torch.eye(7, dtype=torch.float64))


def test_ordinal_rejects_r_outside_unit_interval():
    for r in (-0.1, 1.0):
        with pytest.raises(ValueError, match="r="):
            ordinal_similarity(3, r)


@pytest.mark.parametrize("l", [0.0, 0.3, 0.9, 0.99])
def test_lower_bound_matches_formula(l):
    s = torch.tensor([[1.0, 0.95, -0.2], [0.95, 1.0, 0.35], [-0.2, 0.35, 1.0]], dtype=torch.float64)
    got = lower_bound_rescale(s, l)
    for i in range(3):
        for j in range(3):
            assert got[i, j].item() == pytest.approx(max(0.0, (s[i, j].item() - l) / (1 - l)), abs=1e-12)
    assert torch.equal(got.diagonal(), torch.ones(3, dtype=torch.float64))


def test_superclass_matrix():
    s = superclass_similarity([0, 1, 0, 2], 0.4)
    expected = [[1, 0, 0.4, 0], [0, 1, 0, 0], [0.4, 0, 1, 0], [0, 0, 0, 1]]
    assert torch.allclose(s, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("writer, fmt", [
    (write_word2vec_text, "word2vec_text"),
    (write_word2vec_binary, "word2vec_bin"),
    (lambda p, v: write_word2vec_binary(p, v, newline=False), "word2vec_bin"),
    (write_glove, "glove"),
])
def test_word_vector_formats_give_expected_cosine(tmp_path, writer, fmt):
    path = writer(tmp_path / "vectors.x", VECTORS)
    assert detect_format(path) == fmt
    vecs = read_vectors(path, ["pears", "tank", "missing"])
    assert sorted(vecs) == ["pears", "tank"]
    assert np.allclose(vecs["tank"], VECTORS["tank"], atol=1e-6)
    words = ["apples", "pears", "rocket", "tank"]
    cos, source = embedding_cosine(path, words)
    assert np.allclose(cos.numpy(), cosine_by_hand(words), atol=1e-6)
    assert source["keys"] == words and source["file"].endswith("vectors.x")


def test_embedding_matrix_is_cached_with_its_source(tmp_path):
    path = write_word2vec_text(tmp_path / "v.txt", VECTORS)
    words = ["apples", "rocket"]
    cos, source = embedding_cosine(path, words)
    cache = list(tmp_path.glob("v.txt.simloss_cosine_*.pt"))
    assert len(cache) == 1 and source["cache"] == str(cache[0])
    stored = torch.load(cache[0], weights_only=False)
    assert torch.equal(stored["cosine"], cos) and stored["source"]["file"] == str(path.resolve())
    stored["cosine"] = stored["cosine"] * 0 + 1
    torch.save(stored, cache[0])
    again, _ = embedding_cosine(path, words)
    assert torch.equal(again, torch.ones(2, 2, dtype=torch.float64))
    write_word2vec_text(path, {**VECTORS, "extra": [1.0, 2.0, 3.0, 4.0]})
    fresh, _ = embedding_cosine(path, words)
    assert np.allclose(fresh.numpy(), cosine_by_hand(words), atol=1e-6)


def test_missing_class_words_name_the_culprit(tmp_path):
    path = write_word2vec_text(tmp_path / "v.txt", VECTORS)
    with pytest.raises(UserError, match="aquarium_fish"):
        embedding_cosine(path, ["apples", "aquarium fish"], ["apple", "aquarium_fish"])
    with pytest.raises(UserError, match="does not exist"):
        embedding_cosine(tmp_path / "nope.bin", ["apples"])


def test_multiword_class_falls_back_to_mean_of_words(tmp_path):
    path = write_word2vec_text(tmp_path / "v.txt", VECTORS)
    cos, source = embedding_cosine(path, ["apples pears", "tank"])
    mean = (np.array(VECTORS["apples"]) + np.array(VECTORS["pears"])) / 2
    t = np.array(VECTORS["tank"])
    assert cos[0, 1].item() == pytest.approx(mean @ t / np.linalg.norm(mean) / np.linalg.norm(t), abs=1e-6)
    assert source["keys"][0] == "apples+pears"


def test_configured_embedding_with_lower_bound(tmp_path):
    path = write_glove(tmp_path / "glove.txt", VECTORS)
    words = ["apples", "pears", "rocket", "tank"]
    m = Meta(num_classes=4, class_names=["apple", "pear", "rocket", "tank"], class_counts=torch.ones(4),
             extras={"query_words": words})
    loss = ConfiguredSimLoss(similarity="embedding", embeddings=str(path), lower_bound=0.5)
    loss.bind(m)
    expected = np.maximum(0.0, (cosine_by_hand(words) - 0.5) / 0.5)
    np.fill_diagonal(expected, 1.0)
    assert np.allclose(loss.similarity.numpy(), expected, atol=1e-6)
    assert loss.source["lower_bound"] == 0.5


def test_official_spellings_keep_torchvision_order_for_96_classes():
    kept = [n for n in CIFAR100_FINE if n not in SIMLOSS_DROPPED]
    assert len(kept) == 96
    queries = [OFFICIAL_QUERY_WORDS.get(n, n) for n in kept]
    assert queries == sorted(queries)
    assert {"apples", "maple", "lawnmower", "poppies", "sunflowers"} <= set(queries)


def test_similarity_from_npy_and_csv_files(tmp_path):
    import numpy as np

    from experiments.engine.data import Meta
    from experiments.engine.errors import UserError
    from image_classification.similarity import ConfiguredSimLoss

    meta = Meta(num_classes=3, class_names=list("abc"), class_counts=torch.ones(3))
    s = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.25], [0.0, 0.25, 1.0]])
    np.save(tmp_path / "s.npy", s)
    np.savetxt(tmp_path / "s.csv", s, delimiter=",")
    for name in ("s.npy", "s.csv"):
        loss = ConfiguredSimLoss(similarity=str(tmp_path / name))
        loss.bind(meta)
        assert torch.allclose(loss.similarity, torch.from_numpy(s))
    np.save(tmp_path / "wrong_shape.npy", np.eye(4))
    np.save(tmp_path / "out_of_range.npy", s * 2)
    for name, words in (("wrong_shape.npy", "4×4"), ("out_of_range.npy", "[0, 1]")):
        with pytest.raises(UserError, match=words):
            ConfiguredSimLoss(similarity=str(tmp_path / name)).bind(meta)
    with pytest.raises(UserError, match="does not exist"):
        ConfiguredSimLoss(similarity=str(tmp_path / "missing.npy")).bind(meta)


def test_missing_class_word_names_it_and_the_official_spelling(tmp_path):
    from experiments.engine.errors import UserError
    from image_classification.similarity import class_vectors

    path = tmp_path / "vectors.txt"
    path.write_text("2 3\napple 1 0 0\nbanana 0 1 0\n")
    with pytest.raises(UserError) as err:
        class_vectors(path, ["apple", "aquarium_fish"], ["apple", "aquarium_fish"], "word2vec_text")
    msg = str(err.value)
    assert "aquarium_fish" in msg and "\n" not in msg and "official SimLoss code queries" in msg
