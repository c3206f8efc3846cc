"""A no-op re-render draws nothing; a changed input redraws only the items it feeds (experiments.report.render_cache)."""
from dataclasses import dataclass
from pathlib import Path

from experiments.report import render_cache


@dataclass(frozen=True)
class Spec:
    experiment: str
    name: str


def _items():
    return [("table", Spec("a", "main")), ("figure", Spec("a", "curves")), ("table", Spec("b", "main"))]


class Drawer:
    """Writes one file per item and remembers which items it was asked to draw."""

    def __init__(self, out: Path, fail: set[str] = frozenset()):
        self.out, self.fail, self.calls = out, fail, []

    def __call__(self, todo):
        self.calls.append([f"{k}:{s.experiment}/{s.name}" for k, s in todo])
        results = []
        for kind, spec in todo:
            if spec.name in self.fail:
                results.append((f"{kind} {spec.name}: broken", None))
                continue
            path = self.out / f"{kind}-{spec.experiment}-{spec.name}.txt"
            path.write_text("drawn")
            results.append(("", {"table": str(path)} if kind == "table" else [str(path)]))
        return results


def _outputs(item, result):
    return [result["table"]] if item[0] == "table" else list(result)


def _render(tmp_path, keys, drawer):
    cache = render_cache.RenderCache(tmp_path)
    out = render_cache.render_cached(_items(), cache, lambda item: keys[item[1].experiment], _outputs, drawer)
    cache.save()
    return out


def test_unchanged_inputs_draw_nothing_and_keep_the_results(tmp_path):
    keys, drawer = {"a": "k1", "b": "k2"}, Drawer(tmp_path)
    first = _render(tmp_path, keys, drawer)
    second = _render(tmp_path, keys, drawer)
    assert drawer.calls == [["table:a/main", "figure:a/curves", "table:b/main"]]
    assert second == first and all(error == "" for error, _ in second)


def test_a_changed_key_redraws_only_its_items(tmp_path):
    keys, drawer = {"a": "k1", "b": "k2"}, Drawer(tmp_path)
    _render(tmp_path, keys, drawer)
    _render(tmp_path, {**keys, "b": "k3"}, drawer)
    assert drawer.calls[1] == ["table:b/main"]


def test_a_missing_output_or_cache_file_redraws(tmp_path):
    keys, drawer = {"a": "k1", "b": "k2"}, Drawer(tmp_path)
    _render(tmp_path, keys, drawer)
    (tmp_path / "figure-a-curves.txt").unlink()
    _render(tmp_path, keys, drawer)
    assert drawer.calls[1] == ["figure:a/curves"]
    (tmp_path / render_cache.CACHE).write_text("{not json")
    _render(tmp_path, keys, drawer)
    assert len(drawer.calls[2]) == 3


def test_an_item_that_failed_is_drawn_again_next_time(tmp_path):
    keys = {"a": "k1", "b": "k2"}
    _render(tmp_path, keys, Drawer(tmp_path, fail={"curves"}))
    drawer = Drawer(tmp_path)
    _render(tmp_path, keys, drawer)
    assert drawer.calls == [["figure:a/curves"]]


def test_runs_digest_follows_each_runs_file(tmp_path):
    @dataclass
    class Point:
        exp: str
        run_id: str
        path: Path

    run = tmp_path / "r1.json"
    run.write_text("{}")
    points = [Point("a", "r1", run), Point("b", "r2", tmp_path / "absent.json")]
    before = render_cache.runs_digest(points)
    run.write_text('{"status": "completed"}')
    after = render_cache.runs_digest(points)
    assert before["a"] != after["a"] and before["b"] == after["b"]


def test_code_digest_changes_with_a_source_or_config_file(tmp_path):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "conf").mkdir()
    source = tmp_path / "experiments" / "m.py"
    source.write_text("x = 1\n")
    (tmp_path / "conf" / "c.yaml").write_text("a: 1\n")
    before = render_cache.code_digest(tmp_path)
    assert render_cache.code_digest(tmp_path) == before
    (tmp_path / "conf" / "c.yaml").write_text("a: 22\n")
    assert render_cache.code_digest(tmp_path) != before
