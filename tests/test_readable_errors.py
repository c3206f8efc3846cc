"""Errors a person can read (issue 32): a long list is cut to its count and first few, the rest written to a
file the line names; a bad RESULTS= or FACTOR= is one `error:` line naming what the user typed, from every
command, before anything is written."""
from __future__ import annotations

import pytest

from experiments.drivers import converge, reproduce, status, verify
from experiments.engine.errors import UserError
from image_classification.similarity import SHOWN, class_vectors
from tests.helpers.formats import write_glove

NAMES = ["apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle"]


def test_a_long_missing_vector_list_is_cut_and_written_beside_the_file(tmp_path):
    path = write_glove(tmp_path / "vectors.txt", {"apple": [1.0, 0.0], "baby": [0.0, 1.0]})
    with pytest.raises(UserError) as raised:
        class_vectors(path, NAMES, NAMES)
    message = str(raised.value)
    missing = [n for n in NAMES if n not in ("apple", "baby")]
    listing = tmp_path / "vectors.txt.missing-classes.txt"
    assert f"has no vector for {len(missing)} of {len(NAMES)} class(es): " in message
    assert f"{', '.join(missing[:SHOWN])} and {len(missing) - SHOWN} more" in message
    assert str(listing) in message and "\n" not in message and len(message) < 500
    lines = listing.read_text().splitlines()
    assert [line.split(" (tried")[0] for line in lines] == missing
    assert "'aquarium_fish'" in lines[0] and "the official SimLoss code queries 'aquarium fish'" in lines[0]
    for name in missing[SHOWN:]:
        assert name not in message


def test_a_short_missing_vector_list_stays_whole_on_the_line(tmp_path):
    path = write_glove(tmp_path / "vectors.txt", {n: [1.0, float(i)] for i, n in enumerate(NAMES[2:])})
    shown = r"for 2 of 10 class\(es\): apple \(tried 'apple'; .*\), aquarium_fish \(tried"
    with pytest.raises(UserError, match=shown):
        class_vectors(path, NAMES, NAMES)
    assert not (tmp_path / "vectors.txt.missing-classes.txt").exists()


COMMANDS = {   # make target: (entry point, its arguments before the results folder, the results option)
    "reproduce-table": (reproduce.main, ["--profile", "smoke", "--exp", "simloss_age"], "--results-dir"),
    "tables": (reproduce.main, ["--profile", "smoke", "--exp", "simloss_age", "--render-only"], "--results-dir"),
    "status": (status.main, ["--profile", "smoke", "--exp", "simloss_age"], "--results-dir"),
    "verify": (verify.main, ["--profile", "smoke", "--exp", "simloss_age"], "--results"),
    "converge-check": (converge.main, ["--profile", "smoke", "--exp", "simloss_age"], "--results-dir"),
}


def _one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out + err, err
    return lines[0]


@pytest.mark.parametrize("target", sorted(COMMANDS))
@pytest.mark.parametrize("place", ["a file", "under a file"])
def test_results_at_a_file_or_an_impossible_place_is_one_line(target, place, tmp_path, capsys):
    main, args, option = COMMANDS[target]
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    results = blocker if place == "a file" else blocker / "results"
    assert main([*args, option, str(results)]) == 2
    line = _one_error_line(capsys)
    assert f"RESULTS={results} ({option})" in line
    assert ("is a file, not a folder" if place == "a file" else "cannot be created") in line
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("option, name", [("--factor", "FACTOR"), ("--budget", "BUDGET")])
def test_converge_check_names_the_factor_the_user_typed(option, name, tmp_path, capsys):
    assert converge.main(["--profile", "smoke", "--results-dir", str(tmp_path), option, "abc"]) == 2
    line = _one_error_line(capsys)
    assert line == f"error: {name}='abc' ({option}): must be a number > 0, e.g. {name}=2"
    assert "budget=" not in line
