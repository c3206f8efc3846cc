"""Class-similarity matrices for SimLoss: ordinal, word-embedding cosine (with lower bound), superclass, identity.

All builders return float64 C×C tensors with values in [0, 1] and ones on the diagonal.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from experiments.engine.checkpoint import atomic_write
from experiments.engine.data import Meta, cache_key, cached
from experiments.engine.errors import UserError, WriteError
from experiments.losses.simloss import SimLoss
from image_classification.wordvectors import (FORMATS, NAMED_SOURCES, is_named_source, named_data_dir,
                                              named_signature, named_version, read_vectors)

log = logging.getLogger(__name__)

KINDS = ("ordinal", "embedding", "superclass", "identity")
MATRIX_FILES = (".npy", ".csv")   # loss.similarity=<path>: a ready-made C×C matrix


def identity_similarity(num_classes: int) -> torch.Tensor:
    return torch.eye(num_classes, dtype=torch.float64)


def ordinal_similarity(num_classes: int, r: float) -> torch.Tensor:
    """S[i,j] = r^|i−j| (r = 0 gives the identity: 0^0 = 1)."""
    if not 0.0 <= r < 1.0:
        raise ValueError(f"r={r}: must satisfy 0 ≤ r < 1")
    idx = torch.arange(num_classes, dtype=torch.float64)
    return torch.pow(torch.tensor(float(r), dtype=torch.float64), (idx[:, None] - idx[None, :]).abs())


def lower_bound_rescale(similarity: torch.Tensor, lower_bound: float) -> torch.Tensor:
    """S' = max(0, (S − l)/(1 − l)), the official CIFAR rescaling; the diagonal stays 1."""
    if not 0.0 <= lower_bound < 1.0:
        raise ValueError(f"lower_bound={lower_bound}: must satisfy 0 ≤ l < 1")
    s = ((similarity.double() - lower_bound) / (1.0 - lower_bound)).clamp(0.0, 1.0)
    s.fill_diagonal_(1.0)
    return s


def cosine_similarity_matrix(vectors: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the rows (may be negative); diagonal exactly 1."""
    v = torch.as_tensor(np.asarray(vectors), dtype=torch.float64)
    norms = v.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        raise ValueError("a class vector is all zeros; its cosine similarity is undefined")
    u = v / norms
    s = (u @ u.T).clamp(-1.0, 1.0)
    s.fill_diagonal_(1.0)
    return s


def superclass_similarity(superclass: torch.Tensor | Sequence[int], s: float) -> torch.Tensor:
    """1 on the diagonal, `s` for two classes of the same superclass, 0 otherwise."""
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"superclass_sim={s}: must lie in [0, 1]")
    sup = torch.as_tensor(superclass).long()
    m = (sup[:, None] == sup[None, :]).double() * s
    m.fill_diagonal_(1.0)
    return m


# --------------------------------------------------------------------------- word-embedding similarity
def _candidates(query: str, class_name: str) -> list[str]:
    out = [query, class_name, query.replace(" ", "_"), class_name.replace(" ", "_")]
    return list(dict.fromkeys(out))


def _official_hint(class_name: str, query: str) -> str:
    """The query word the official SimLoss code used for a CIFAR-100 class, when it differs from `query`."""
    from image_classification.cifar import OFFICIAL_QUERY_WORDS

    official = OFFICIAL_QUERY_WORDS.get(class_name, class_name)
    return f"; the official SimLoss code queries {official!r}" if official != query else ""


def _parts(name: str) -> list[str]:
    return [p for p in name.replace("_", " ").split(" ") if p]


def _what(source: str | Path) -> str:
    return f"word vectors {source}" if is_named_source(source) else f"word-vector file {source}"


SHOWN = 3   # classes a missing-vector error names on its line; the rest go to a file beside the vectors


def _shown(missing: list[str], source: str | Path) -> str:
    """The first SHOWN missing classes; with more, the full list (one class and its spellings per line) written
    beside the word-vector file (or in the temp folder where that is not writable) and the line naming it."""
    if len(missing) <= SHOWN:
        return ", ".join(missing)
    names = ", ".join(m.split(" (tried", 1)[0] for m in missing[:SHOWN])
    folder = Path(source).parent if not is_named_source(source) and os.access(Path(source).parent, os.W_OK) \
        else Path(tempfile.gettempdir())
    listing = folder / f"{Path(str(source)).name}.missing-classes.txt"
    try:
        atomic_write(listing, ("\n".join(missing) + "\n").encode())
    except WriteError:
        return f"{names} and {len(missing) - SHOWN} more (the full list could not be written to {listing})"
    return f"{names} and {len(missing) - SHOWN} more; every class with the spellings tried: {listing}"


def class_vectors(path: str | Path, queries: Sequence[str], class_names: Sequence[str],
                  fmt: str = "auto") -> tuple[np.ndarray, list[str]]:
    """One vector per class: the first of (query, class name, query with underscores for spaces) found; else the
    mean of the vectors of the query's words (a multi-word name such as "pickup truck" in a vocabulary without
    phrases). `path` is a word-vector file or a named source (`NAMED_SOURCES`).

    Returns (vectors, keys used). Raises UserError naming the classes with no vector.
    """
    wanted = set()
    for q, n in zip(queries, class_names):
        wanted.update(_candidates(q, n))
        wanted.update(_parts(q))
    found = read_vectors(path, wanted, fmt)
    vecs, keys, missing = [], [], []
    for q, n in zip(queries, class_names):
        hit = next((c for c in _candidates(q, n) if c in found), None)
        if hit is not None:
            vecs.append(found[hit])
            keys.append(hit)
            continue
        parts = _parts(q)
        if len(parts) > 1 and all(p in found for p in parts):
            vecs.append(np.mean([found[p] for p in parts], axis=0))
            keys.append("+".join(parts))
            continue
        missing.append(f"{n} (tried {' / '.join(repr(c) for c in _candidates(q, n))}{_official_hint(n, q)})")
    if missing:
        raise UserError(f"{_what(path)} has no vector for {len(missing)} of {len(class_names)} class(es): "
                        f"{_shown(missing, path)}; use a file that covers them (CIFAR-100 with word2vec: "
                        f"dataset.classes=96)")
    dims = {len(v) for v in vecs}
    if len(dims) != 1:
        raise UserError(f"{_what(path)} mixes vector lengths {sorted(dims)}; the file is corrupt")
    return np.stack(vecs), keys


def embedding_cosine(path: str | Path, queries: Sequence[str], class_names: Sequence[str] | None = None,
                     fmt: str = "auto", cache: bool = True) -> tuple[torch.Tensor, dict[str, Any]]:
    """Cosine matrix of the class vectors from `path` and a record of its source. A file's matrix is cached in a
    file next to it; a named source (an installed package, read in place in well under a second) is kept in
    memory for the process instead, since its package folder need not be writable."""
    class_names = list(class_names) if class_names is not None else list(queries)
    if is_named_source(path):
        if fmt != "auto":
            raise UserError(f"loss.embedding_format={fmt}: the named source {path} has its own format; leave "
                            f"loss.embedding_format=auto")
        # the memo key names the installation too: another one in the same process is not mistaken for it
        cosine, source = _named_cosine(str(path), tuple(queries), tuple(class_names), named_signature(str(path)))
        return cosine.clone(), dict(source)
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"loss.embeddings={path} does not exist; put a word2vec/GloVe file there "
                        f"(e.g. GoogleNews-vectors-negative300.bin) or name an installed source "
                        f"({', '.join(NAMED_SOURCES)})")
    st = path.stat()
    key = cache_key(queries=list(queries), names=class_names, size=st.st_size, mtime=st.st_mtime_ns, fmt=fmt)
    cache_path = path.with_name(f"{path.name}.simloss_cosine_{key}.pt")

    def compute() -> dict[str, Any]:
        vectors, keys = class_vectors(path, queries, class_names, fmt)
        source = {"kind": "embedding", "file": str(path.resolve()), "file_size": st.st_size,
                  "file_mtime_ns": st.st_mtime_ns, "format": fmt, "class_names": class_names,
                  "queries": list(queries), "keys": keys, "cache": str(cache_path) if cache else None}
        return {"cosine": cosine_similarity_matrix(vectors), "source": source}

    if not cache:
        stored = compute()
    else:
        try:
            stored = cached(cache_path, compute)   # an unreadable cache is set aside with a warning and rebuilt
        except OSError as e:
            log.warning("could not cache the similarity matrix at %s (%s); it will be recomputed", cache_path, e)
            stored = compute()
    return stored["cosine"], stored["source"]


@functools.lru_cache(maxsize=8)
def _named_cosine(name: str, queries: tuple[str, ...], class_names: tuple[str, ...],
                  installed: tuple) -> tuple[torch.Tensor, dict]:
    vectors, keys = class_vectors(name, queries, class_names)
    src = NAMED_SOURCES[name]
    source = {"kind": "embedding", "source": name, "package": src.package, "package_version": named_version(name),
              "file": str(named_data_dir(name) / src.matrix), "class_names": list(class_names),
              "queries": list(queries), "keys": keys}
    return cosine_similarity_matrix(vectors), source


# --------------------------------------------------------------------------- statistics of S
STATS_LOWER_BOUNDS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)   # covers the SimLoss CIFAR grids


def similarity_stats(similarity: torch.Tensor, superclass: torch.Tensor | Sequence[int],
                     lower_bounds: Sequence[float] = STATS_LOWER_BOUNDS) -> dict[str, float]:
    """Off-diagonal statistics of a cosine matrix S: mean, within/between-superclass mean and sd, share of
    negative between pairs, and the mean row mass Σ_{c≠y} S'[y,c] of S' = lower_bound_rescale(S, l) per l."""
    s = torch.as_tensor(similarity, dtype=torch.float64)
    sup = torch.as_tensor(superclass).long()
    k = len(s)
    off = ~torch.eye(k, dtype=torch.bool)
    within, between = s[(sup[:, None] == sup[None, :]) & off], s[sup[:, None] != sup[None, :]]
    out = {"classes": float(k), "offdiag_mean": s[off].mean().item(),
           "within_mean": within.mean().item(), "within_sd": within.std().item(),
           "between_mean": between.mean().item(), "between_sd": between.std().item(),
           "between_negative": (between < 0).double().mean().item()}
    for lb in lower_bounds:
        out[f"row_mass@{lb:g}"] = lower_bound_rescale(s, lb)[off].view(k, k - 1).sum(1).mean().item()
    return out


def format_stats(stats: dict[str, float]) -> str:
    """The statistics as the lines printed under a SimLoss CIFAR table."""
    masses = "  ".join(f"l={k.split('@')[1]}: {v:.2f}" for k, v in stats.items() if k.startswith("row_mass@"))
    return (f"S off-diagonal mean {stats['offdiag_mean']:.3f}; within superclass {stats['within_mean']:.3f} ± "
            f"{stats['within_sd']:.3f}; between {stats['between_mean']:.3f} ± {stats['between_sd']:.3f} "
            f"({100 * stats['between_negative']:.1f} % negative)\n"
            f"mean row mass Σ_(c≠y) S'[y,c] of {int(stats['classes'])} classes: {masses}")


def stand_in_similarity(kind: str = "word2vec_like", seed: int = 0,
                        classes: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine matrix of the synthetic_cifar stand-in's class vectors (`dataset.class_vectors`: a named source or an
    invented kind, `dataset.seed`) over its `classes` CIFAR-100 classes, and their superclasses; the same lookup
    a SimLoss run with `loss.embeddings=null` makes."""
    import tempfile

    from image_classification.synthetic import SyntheticCifar, cifar100_classes

    if is_named_source(kind):
        names, superclass, queries = cifar100_classes(classes)   # what the stand-in's meta carries; no images
        return embedding_cosine(kind, queries, names)[0], superclass
    with tempfile.TemporaryDirectory() as tmp:
        meta = SyntheticCifar(tmp, n_train_per_class=2, n_test_per_class=1, image_size=8, seed=seed,
                              class_vectors=kind, classes=classes)().meta
        cosine, _ = embedding_cosine(meta.extras["class_vectors"], meta.extras["query_words"], meta.class_names,
                                     cache=False)
    return cosine, meta.superclass


def describe_vectors(kind: str) -> str:
    """One phrase naming where a stand-in's class vectors come from (table footers, the stats command)."""
    if is_named_source(kind):
        return f"{NAMED_SOURCES[kind].about}; package {NAMED_SOURCES[kind].package} {named_version(kind) or ''}".strip()
    return {"word2vec_like": "invented word2vec-like vectors calibrated to assumed statistics, docs/simloss.md",
            "prototypes": "invented: the stand-in's class prototypes, 8×8-pooled"}[kind]


def stand_in_footer(spec) -> list[str]:
    """Table footer hook (`footer:` of a SimLoss CIFAR table): statistics of the S its runs use, described by the
    table's `options`: `class_vectors`, `classes`, `seed` (= the runs' dataset.class_vectors, dataset.classes,
    dataset.seed; defaults glove-6b-50d, 96, 0)."""
    opts = dict(spec.options or {})
    kind, classes = str(opts.get("class_vectors", "glove-6b-50d")), int(opts.get("classes", 96))
    cosine, superclass = stand_in_similarity(kind, int(opts.get("seed", 0)), classes)
    return [f"Similarity S = cosine of the class vectors of the {classes} CIFAR-100 class names "
            f"({describe_vectors(kind)}): " + format_stats(similarity_stats(cosine, superclass)).replace("\n", "; ")]


def _cli_similarity(args) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(S, superclasses, description) for the `stats` command."""
    if not args.embeddings:
        classes = args.classes or 100
        cosine, sup = stand_in_similarity(args.stand_in, args.seed, classes)
        what = f"synthetic_cifar stand-in, {classes} classes, {describe_vectors(args.stand_in)}, seed {args.seed}"
        return cosine, sup, what
    classes = args.classes or 96
    if args.cifar:
        from image_classification.cifar import Cifar100

        meta = Cifar100(args.cifar, classes=classes)().meta
        names, sup, queries = meta.class_names, meta.superclass, meta.extras["query_words"]
    else:
        from image_classification.synthetic import cifar100_classes

        names, sup, queries = cifar100_classes(classes)
    cosine, _ = embedding_cosine(args.embeddings, queries, names)
    return cosine, sup, f"CIFAR-100 ({classes} classes), {args.embeddings}"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m image_classification.similarity stats [--stand-in KIND --seed N | --embeddings SOURCE
    [--cifar D]] [--classes 96|100]`."""
    import argparse

    from image_classification.synthetic import VECTOR_KINDS

    ap = argparse.ArgumentParser(prog="python -m image_classification.similarity")
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("stats", help="statistics of S (default: the stand-in's invented word2vec-like vectors)")
    st.add_argument("--stand-in", default="word2vec_like", choices=[*VECTOR_KINDS, *NAMED_SOURCES],
                    help="the stand-in's dataset.class_vectors")
    st.add_argument("--seed", type=int, default=0, help="the stand-in's dataset.seed")
    st.add_argument("--classes", type=int, choices=[96, 100],
                    help="CIFAR-100 classes (default 100 for --stand-in, 96 = the SimLoss subset for --embeddings)")
    st.add_argument("--embeddings", help=f"a word-vector file or a named source ({', '.join(NAMED_SOURCES)}): "
                                         f"S of the CIFAR-100 class names")
    st.add_argument("--cifar", help="folder holding cifar-100-python: names and superclasses from its meta file "
                                    "(default: CIFAR-100's, built in)")
    args = ap.parse_args(argv)
    try:
        cosine, sup, what = _cli_similarity(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"S statistics ({what})\n{format_stats(similarity_stats(cosine, sup))}")
    return 0


# --------------------------------------------------------------------------- config-facing builder
@dataclass
class SimilaritySpec:
    """The `loss.*` keys that define S. `kind=None` means the dataset's natural similarity."""

    kind: str | None = None
    r: float = 0.5
    lower_bound: float = 0.0
    embeddings: str | None = None
    superclass_sim: float = 0.5
    embedding_format: str = "auto"

    def __post_init__(self):
        if self.kind is not None and self.kind not in KINDS and Path(self.kind).suffix not in MATRIX_FILES:
            raise UserError(f"loss.similarity={self.kind!r}: choose one of {', '.join(KINDS)}, a matrix file "
                            f"({' or '.join(MATRIX_FILES)}), or null (the dataset's natural similarity)")
        if not 0.0 <= self.r < 1.0:
            raise UserError(f"loss.r={self.r}: the ordinal factor must satisfy 0 ≤ r < 1")
        if not 0.0 <= self.lower_bound < 1.0:
            raise UserError(f"loss.lower_bound={self.lower_bound}: must satisfy 0 ≤ l < 1")
        if not 0.0 <= self.superclass_sim <= 1.0:
            raise UserError(f"loss.superclass_sim={self.superclass_sim}: must lie in [0, 1]")
        if self.embedding_format not in FORMATS:
            raise UserError(f"loss.embedding_format={self.embedding_format!r}: choose one of {', '.join(FORMATS)}")


def build_similarity(spec: SimilaritySpec, meta: Meta) -> tuple[torch.Tensor, dict[str, Any]]:
    """S for the dataset described by `meta`, and a record of where it came from."""
    kind = spec.kind or meta.natural_similarity
    k = meta.num_classes
    if kind is None:
        raise UserError("loss.similarity=null but the dataset has no natural similarity; set loss.similarity "
                        f"to one of {', '.join(KINDS)}")
    if Path(kind).suffix in MATRIX_FILES:
        return load_similarity_file(kind, k), {"kind": "file", "file": str(Path(kind).expanduser().resolve())}
    if kind not in KINDS:
        raise UserError(f"the dataset's natural similarity {kind!r} is not one of {', '.join(KINDS)}; "
                        f"set loss.similarity")
    if kind == "identity":
        return identity_similarity(k), {"kind": kind}
    if kind == "ordinal":
        return ordinal_similarity(k, spec.r), {"kind": kind, "r": spec.r}
    if kind == "superclass":
        if meta.superclass is None:
            raise UserError("loss.similarity=superclass but the dataset has no superclasses; choose another "
                            "loss.similarity")
        return (superclass_similarity(meta.superclass, spec.superclass_sim),
                {"kind": kind, "superclass_sim": spec.superclass_sim})
    path = spec.embeddings or meta.extras.get("class_vectors") or meta.extras.get("class_vectors_path")
    if path is None:
        raise UserError(f"loss.similarity=embedding needs word vectors: set loss.embeddings to an installed "
                        f"source ({', '.join(NAMED_SOURCES)}) or to a word2vec/GloVe file")
    queries = list(meta.extras.get("query_words") or meta.class_names)
    cosine, source = embedding_cosine(path, queries, meta.class_names, spec.embedding_format)
    return lower_bound_rescale(cosine, spec.lower_bound), {**source, "lower_bound": spec.lower_bound}


def load_similarity_file(path: str | Path, num_classes: int) -> torch.Tensor:
    """A C×C similarity matrix from .npy or .csv (comma-separated numbers, no header), checked like any S:
    square, C×C, values in [0, 1], ones on the diagonal."""
    from experiments.losses.simloss import validate_similarity

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"loss.similarity={path} does not exist; give a .npy or .csv C×C matrix file")
    try:
        s = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=2)
    except (ValueError, OSError) as e:
        raise UserError(f"loss.similarity={path} cannot be read as a numeric matrix ({str(e).splitlines()[0]}); "
                        f"save it with numpy.save or as comma-separated rows") from None
    try:
        return validate_similarity(s, num_classes)
    except ValueError as e:
        raise UserError(f"loss.similarity={path}: {e}; fix the file") from None


class ConfiguredSimLoss(SimLoss):
    """SimLoss whose matrix is built from the config when the dataset is known (`bind(meta)`).

    similarity: ordinal | embedding | superclass | identity | null (= the dataset's `natural_similarity`).
    r: ordinal factor, S[i,j] = r^|i−j|. lower_bound: l of the embedding rescaling max(0, (S−l)/(1−l)).
    embeddings: a named source installed as a package (`glove-6b-50d`) or a word-vector file (word2vec bin/text,
    GloVe); null = the dataset's class vectors (`meta.extras["class_vectors"]`: the stand-in's
    `dataset.class_vectors`). superclass_sim: s for two classes of one superclass.
    """

    def __init__(self, similarity: str | None = None, r: float = 0.5, lower_bound: float = 0.0,
                 embeddings: str | None = None, superclass_sim: float = 0.5, eps: float = 1e-8,
                 impl: str = "logsumexp", embedding_format: str = "auto"):
        super().__init__(None, eps=eps, impl=impl)
        self.spec = SimilaritySpec(kind=similarity, r=r, lower_bound=lower_bound, embeddings=embeddings,
                                   superclass_sim=superclass_sim, embedding_format=embedding_format)
        self.source: dict[str, Any] = {}

    def bind(self, meta: Meta) -> None:
        s, self.source = build_similarity(self.spec, meta)
        self.set_similarity(s, meta.num_classes)


if __name__ == "__main__":
    sys.exit(main())
