"""A small reader/writer for word-vector files: word2vec binary, word2vec text and GloVe text.

word2vec binary: header line "<count> <dim>\\n", then per entry the word (UTF-8), one space, `dim` float32
little-endian values and an optional newline. word2vec text: the same header, then "word v1 … vdim" lines.
GloVe: no header, "word v1 … vdim" lines. Only the requested words are parsed, so reading the 3.6 GB
GoogleNews file for 100 class names costs one pass over the file and little memory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from experiments.engine.data import atomic_write_bytes
from experiments.engine.errors import UserError

FORMATS = ("auto", "word2vec_bin", "word2vec_text", "glove")
_CHUNK = 1 << 24


def _parse_header(line: bytes) -> tuple[int, int] | None:
    parts = line.split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return None


def _floats(tokens: Sequence[str]) -> np.ndarray | None:
    try:
        return np.array([float(t) for t in tokens], dtype=np.float32)
    except ValueError:
        return None


def detect_format(path: str | Path) -> str:
    """Guess the format from the first two lines: a "<count> <dim>" header, then a text line or binary bytes."""
    with open(path, "rb") as f:
        first = f.readline(1 << 20)
        header = _parse_header(first)
        if header is None:
            return "glove"
        second = f.readline(header[1] * 40 + 4096)
    try:
        tokens = second.decode("utf-8").rstrip("\r\n").rstrip(" ").split(" ")
    except UnicodeDecodeError:
        return "word2vec_bin"
    if len(tokens) == header[1] + 1 and _floats(tokens[1:]) is not None:
        return "word2vec_text"
    return "word2vec_bin"


def _read_binary(path: Path, wanted: set[str] | None) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        header = _parse_header(f.readline())
        if header is None:
            raise UserError(f"{path}: no '<count> <dim>' header; not a word2vec binary file")
        count, dim = header
        nbytes = 4 * dim
        buf, pos = b"", 0
        for _ in range(count):
            while True:
                space = buf.find(b" ", pos)
                if space >= 0 and len(buf) >= space + 1 + nbytes:
                    break
                more = f.read(_CHUNK)
                if not more:
                    raise UserError(f"{path}: ends early (header says {count} words of dimension {dim}); "
                                    f"the file is truncated or not word2vec binary")
                buf, pos = buf[pos:] + more, 0
            word = buf[pos:space].lstrip(b"\n").decode("utf-8", errors="replace")
            start = space + 1
            if (wanted is None or word in wanted) and word not in out:
                out[word] = np.frombuffer(buf, dtype="<f4", count=dim, offset=start).astype(np.float32)
            pos = start + nbytes
            if wanted is not None and len(out) == len(wanted):
                break
    return out


def _read_text(path: Path, wanted: set[str] | None, has_header: bool) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    dim = None
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        if has_header:
            header = _parse_header(f.readline().encode())
            dim = header[1] if header else None
        for lineno, line in enumerate(f, start=2 if has_header else 1):
            tokens = line.rstrip("\r\n").rstrip(" ").split(" ")
            if len(tokens) < 2:
                continue
            if dim is None:
                dim = len(tokens) - 1
            word = " ".join(tokens[:-dim])
            if (wanted is not None and word not in wanted) or word in out:
                continue
            vec = _floats(tokens[-dim:]) if len(tokens) > dim else None
            if vec is None:
                raise UserError(f"{path}:{lineno}: expected a word and {dim} numbers; fix the line or the "
                                f"file format (loss.embedding_format)")
            out[word] = vec
            if wanted is not None and len(out) == len(wanted):
                break
    return out


def read_vectors(path: str | Path, words: Iterable[str] | None = None, fmt: str = "auto") -> dict[str, np.ndarray]:
    """{word: float32 vector} for the `words` present in the file (all words when `words` is None)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise UserError(f"word-vector format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise UserError(f"word-vector file {path} does not exist; put a word2vec/GloVe file there or point "
                        f"loss.embeddings to one")
    if fmt == "auto":
        fmt = detect_format(path)
    wanted = set(words) if words is not None else None
    if fmt == "word2vec_bin":
        return _read_binary(path, wanted)
    return _read_text(path, wanted, has_header=fmt == "word2vec_text")


def write_word2vec_text(path: str | Path, words: Sequence[str], vectors: np.ndarray) -> None:
    """Write vectors (len(words) × dim) in word2vec text format, atomically."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(words) != len(vectors):
        raise ValueError(f"{len(words)} words but vectors of shape {vectors.shape}")
    if any((" " in w) or ("\n" in w) or not w for w in words):
        raise ValueError("word2vec text words must be non-empty and contain no spaces or newlines")
    lines = [f"{len(words)} {vectors.shape[1]}"]
    lines += [w + " " + " ".join(f"{v:.6g}" for v in row) for w, row in zip(words, vectors)]
    atomic_write_bytes(Path(path), ("\n".join(lines) + "\n").encode("utf-8"))
