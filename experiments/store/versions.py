"""A run's code version: the code it executed, hashed so that only an executable change counts.

The rule, stated by the code structure: a run executes `experiments.drivers.train` (the module that runs one
config) and the modules its resolved config names by `_target_`, plus the metric sets it reads from
`conf/metrics/` and the targets in them. Its code is the import closure of those modules, found statically
(`import`/`from … import` anywhere in a file, relative ones included, and the `__init__` of every package on the
way), restricted to files inside the project root or inside the top-level package of the target that led there
(a user's `mylab` package may live outside the repo); stdlib and site-packages never enter. Each Python file
enters as the digest of its syntax tree without docstrings (comments vanish with parsing), so an edit that
changes no executable code changes no version. `experiments.drivers.train` imports neither `experiments.report`
nor another driver, so presentation never enters a run's version.

A package `__init__` that is only passed through (the parent of an imported module, or re-exporting a name a run
asks for) enters without its import statements and `__all__`: the name is followed to the module that defines
it, and the package's other re-exports only define names the run never calls. A package imported as a whole
(`import pkg`, `from pkg import *`, a name it defines itself) enters whole, its imports followed.

`code_version` is sha256 (16 hex) over the sorted (path, digest) pairs; `files` maps each path (relative to the
project root, or to the `sys.path` entry of a package outside it) to its digest, so a stale run can say which
file changed.
"""
from __future__ import annotations

import ast
import hashlib
import json
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from omegaconf import OmegaConf

from experiments.engine.config import metric_set_names
from experiments.engine.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
RUN_MODULE = "experiments.drivers.train"
METRIC_SETS = Path("conf") / "metrics"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------- one file
@dataclass(frozen=True)
class Source:
    """What the closure needs of one .py file: its digest whole and as a passed-through package (without its
    top-level imports and `__all__`), every import in it, and the names its top-level imports bind."""
    digest: str
    body_digest: str
    imports: tuple[tuple[int, str, tuple[str, ...] | None], ...]   # (level, module, names; None: `import m`)
    bindings: dict[str, tuple[int, str, str | None]]               # name -> (level, module, attribute)


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    # A bare string statement does nothing when run, wherever it stands; an emptied body keeps a `pass`.
    for node in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            body = getattr(node, name, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                kept = [s for s in body if not _is_docstring(s)]
                setattr(node, name, kept or ([ast.Pass()] if name == "body" else []))
    return tree


def _is_export_list(node: ast.stmt) -> bool:
    return isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and any(
        isinstance(t, ast.Name) and t.id == "__all__" for t in getattr(node, "targets", [getattr(node, "target", None)]))


def parse_source(text: bytes | str) -> Source:
    tree = _strip_docstrings(ast.parse(text))
    imports, bindings = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports += [(0, a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            imports.append((node.level, node.module or "", tuple(a.name for a in node.names)))
    for node in tree.body:
        if isinstance(node, ast.Import):
            bindings.update({a.asname: (0, a.name, None) for a in node.names if a.asname})
        elif isinstance(node, ast.ImportFrom):
            bindings.update({a.asname or a.name: (node.level, node.module or "", a.name) for a in node.names})
    body = ast.Module(body=[s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))
                            and not _is_export_list(s)], type_ignores=[])
    return Source(_digest(ast.dump(tree)), _digest(ast.dump(body)), tuple(imports), bindings)


_SOURCES: dict[tuple[str, int, int], Source] = {}


def source(path: Path) -> Source:
    """`parse_source` of a file, cached per (path, mtime_ns, size) within the process."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _SOURCES:
        try:
            _SOURCES[key] = parse_source(path.read_bytes())
        except SyntaxError as e:
            raise UserError(f"{path}: not valid Python ({e.msg}, line {e.lineno}); a run's code version reads "
                            f"every file it imports: fix the file") from None
    return _SOURCES[key]


def ast_digest(path: str | Path) -> str:
    """sha256 of a Python file's syntax tree without docstrings and comments."""
    return source(Path(path)).digest


# ---------------------------------------------------------------------- finding modules without importing them
def _outside_code() -> tuple[Path, ...]:
    paths = sysconfig.get_paths()
    return tuple(Path(paths[k]).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths)


def _searchable(entry: Path, excluded: tuple[Path, ...]) -> bool:
    if not entry.is_dir() or {"site-packages", "dist-packages"} & set(entry.parts):
        return False
    return not any(entry == e or e in entry.parents for e in excluded)


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    key: str            # the path shown and hashed: relative to the project root, else to its sys.path entry
    is_package: bool
    home: Path          # its top-level package (directory or single file)


class Finder:
    """Modules by dotted name on [root] + sys.path, less stdlib and site-packages, read from disk only."""

    def __init__(self, root: Path, search: Iterable[str | Path]) -> None:
        excluded = _outside_code()
        entries = [Path(root).resolve()] + [Path(p or ".").resolve() for p in search]
        self.root = entries[0]
        self.entries = list(dict.fromkeys(e for e in entries if _searchable(e, excluded)))
        self._found: dict[str, Module | None] = {}

    def find(self, name: str) -> Module | None:
        if name not in self._found:
            self._found[name] = next((m for e in self.entries if (m := self._find_in(e, name)) is not None), None)
        return self._found[name]

    def _find_in(self, entry: Path, name: str) -> Module | None:
        parts = name.split(".")
        if not parts[0].isidentifier():
            return None
        base = entry.joinpath(*parts)
        for path, is_package in ((base / "__init__.py", True), (base.with_suffix(".py"), False)):
            if path.is_file():
                home = entry / parts[0] if (entry / parts[0]).is_dir() else entry / f"{parts[0]}.py"
                rel_to = self.root if self.root in path.parents else entry
                return Module(name, path, path.relative_to(rel_to).as_posix(), is_package, home)
        return None


# ---------------------------------------------------------------------- closures
class Closure:
    """Files a set of modules executes: `whole` (digest of the file) and `passed` (packages passed through)."""

    def __init__(self, finder: Finder, scope: tuple[Path, ...]) -> None:
        self.finder, self.scope = finder, scope
        self.whole: dict[str, Path] = {}
        self.passed: dict[str, Path] = {}
        self._seen: set[tuple[str, str | None]] = set()

    def _in_scope(self, module: Module) -> bool:
        return any(module.path == s or s in module.path.parents for s in self.scope)

    def _find(self, name: str) -> Module | None:
        module = self.finder.find(name) if name else None
        return module if module is not None and self._in_scope(module) else None

    def _parents(self, name: str) -> None:
        parts = name.split(".")
        for i in range(1, len(parts)):
            parent = self._find(".".join(parts[:i]))
            if parent is not None and parent.is_package:
                self.passed.setdefault(parent.key, parent.path)

    def module(self, name: str) -> None:
        """`import name`: the module runs whole, its imports followed."""
        if (name, None) in self._seen or (module := self._find(name)) is None:
            return
        self._seen.add((name, None))
        self._parents(name)
        self.whole[module.key] = module.path
        for level, target, names in source(module.path).imports:
            absolute = _absolute(module, level, target)
            if names is None or "*" in names:
                self.module(absolute)
            else:
                self.names(absolute, names)

    def names(self, name: str, attributes: Iterable[str]) -> None:
        """`from name import attributes`: submodules are imported; a name a package only re-exports is followed
        to where it comes from; any other name needs the module whole."""
        for attribute in attributes:
            if (name, attribute) in self._seen:
                continue
            self._seen.add((name, attribute))
            if self._find(f"{name}.{attribute}") is not None:
                self.module(f"{name}.{attribute}")
                continue
            module = self._find(name)
            binding = source(module.path).bindings.get(attribute) if module is not None and module.is_package else None
            if binding is None:
                self.module(name)
                continue
            self._parents(f"{name}.{attribute}")
            self.passed.setdefault(module.key, module.path)
            level, target, original = binding
            absolute = _absolute(module, level, target)
            self.module(absolute) if original is None else self.names(absolute, [original])

    def target(self, dotted: str) -> None:
        """A `_target_`: the longest prefix that is a module, then the attribute taken from it."""
        parts = dotted.split(".")
        for i in range(len(parts) - 1, 0, -1):
            if self._find(".".join(parts[:i])) is not None:
                self.names(".".join(parts[:i]), [parts[i]])
                return


def _absolute(module: Module, level: int, target: str) -> str:
    if level == 0:
        return target
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    base = package[:len(package) - (level - 1)] if level > 1 else package
    return ".".join(base + ([target] if target else []))


# ---------------------------------------------------------------------- a run
@dataclass(frozen=True)
class Deps:
    """What a run's version depends on besides the engine: the `_target_`s of its config and its metric sets."""
    targets: tuple[str, ...]
    metric_sets: tuple[str, ...]

    def as_list(self) -> list[list[str]]:
        return [list(self.targets), list(self.metric_sets)]

    @classmethod
    def from_list(cls, value: list[list[str]]) -> "Deps":
        return cls(tuple(value[0]), tuple(value[1]))


def _targets(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                yield value
            else:
                yield from _targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _targets(value)


# Config nodes that say how a run is watched, not what it computes (the `logger` group's `_target_`): not part of a
# run's code, so choosing or editing a logger leaves every run current (experiments.store.results: nor of its id).
WATCHING_KEYS = ("logger",)


def deps_of(config: dict) -> Deps:
    """The deps of a resolved config (without its volatile keys: tables and figures are not part of a run)."""
    sets = [name for name, _ in metric_set_names(config)]
    run_part = {k: v for k, v in config.items() if k not in WATCHING_KEYS}
    return Deps(tuple(sorted(set(_targets(run_part)))), tuple(sorted(set(sets))))


@dataclass(frozen=True)
class CodeVersion:
    version: str
    files: dict[str, str]


def version_of(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for key in sorted(files):
        h.update(f"{key}\0{files[key]}\n".encode())
    return h.hexdigest()[:16]


def _signature(paths: Iterable[Path]) -> tuple:
    out = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            return ()
        out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


class Versions:
    """Code versions of runs under the code in `root` (and the user packages on `sys.path`), cached per
    distinct `Deps` while none of their files changes."""

    def __init__(self, root: Path = ROOT) -> None:
        self.root = Path(root).resolve()
        self._cache: dict[tuple, tuple[list[Path], tuple, CodeVersion]] = {}
        self._finders: dict[tuple, Finder] = {}
        self._closures: dict[tuple, tuple[list[Path], tuple, Closure]] = {}

    def of_modules(self, modules: Iterable[str]) -> CodeVersion:
        """The version of the import closure of `modules` (e.g. what composes a config, for a planning cache)."""
        return self._cached(("modules", tuple(modules)), lambda: self._compute(tuple(modules), ()))

    def of_deps(self, deps: Deps) -> CodeVersion:
        return self._cached(("run", deps), lambda: self._compute((RUN_MODULE,), deps.targets, deps.metric_sets))

    def of_config(self, config: dict) -> CodeVersion:
        return self.of_deps(deps_of(config))

    def _cached(self, key: tuple, compute) -> CodeVersion:
        hit = self._cache.get(key)
        if hit is not None and _signature(hit[0]) == hit[1]:
            return hit[2]
        paths, version = compute()
        self._cache[key] = (paths, _signature(paths), version)
        return version

    def _finder(self) -> Finder:
        key = tuple(sys.path)
        if key not in self._finders:
            self._finders[key] = Finder(self.root, key)
        return self._finders[key]

    def _compute(self, modules: tuple[str, ...], targets: tuple[str, ...],
                 metric_sets: tuple[str, ...] = ()) -> tuple[list[Path], CodeVersion]:
        files, paths, yaml_targets = self._metric_sets(metric_sets)
        parts = [self._closure("module", m) for m in modules]
        parts += [self._closure("target", t) for t in dict.fromkeys((*targets, *yaml_targets))]
        whole = {k: v for each in parts for k, v in each.whole.items()}
        passed = {k: v for each in parts for k, v in each.passed.items() if k not in whole}
        files.update({key: source(path).body_digest for key, path in passed.items()})
        files.update({key: source(path).digest for key, path in whole.items()})
        paths += list(whole.values()) + list(passed.values())
        return paths, CodeVersion(version_of(files), dict(sorted(files.items())))

    def _closure(self, kind: str, name: str) -> Closure:
        """The closure of one module or target, cached while none of its files changes (runs share most)."""
        finder = self._finder()
        key = (kind, name, tuple(finder.entries))
        hit = self._closures.get(key)
        if hit is not None and _signature(hit[0]) == hit[1]:
            return hit[2]
        top = finder.find(name.split(".")[0]) if kind == "target" else None
        scope = (finder.root,) if top is None or finder.root in top.path.parents else (finder.root, top.home)
        closure = Closure(finder, scope)
        closure.module(name) if kind == "module" else closure.target(name)
        paths = list(closure.whole.values()) + list(closure.passed.values())
        self._closures[key] = (paths, _signature(paths), closure)
        return closure

    def _metric_sets(self, names: tuple[str, ...]) -> tuple[dict[str, str], list[Path], list[str]]:
        """The metric-set files a run reads outside its resolved config: digest of their content (comments do
        not count), and the targets in them."""
        files, paths, targets = {}, [], []
        for name in names:
            path = self.root / METRIC_SETS / f"{name}.yaml"
            if path.is_file():
                digest, found = _metric_set(path)
                files[(METRIC_SETS / path.name).as_posix()] = digest
                targets += found
                paths.append(path)
        return files, paths, targets


_METRIC_SETS: dict[tuple[str, int, int], tuple[str, list[str]]] = {}


def _metric_set(path: Path) -> tuple[str, list[str]]:
    """Digest of a metric-set file's content and the targets in it, cached per (path, mtime_ns, size)."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _METRIC_SETS:
        content = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        _METRIC_SETS[key] = (_digest(json.dumps(content, sort_keys=True)), list(_targets(content)))
    return _METRIC_SETS[key]


CURRENT = Versions()


def changed_files(recorded: dict[str, str] | None, current: dict[str, str]) -> list[str]:
    """The files whose digest differs between a run's recorded `code_files` and the current code (added and
    removed ones included); None when the run recorded none."""
    if recorded is None:
        return []
    return sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
