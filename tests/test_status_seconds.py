"""`make status` says what each part of a profile costs: run seconds per experiment and dataset."""
from experiments.drivers import status


def test_seconds_per_part_are_summed_and_ranked():
    lines = []
    status.report_seconds({("avgk", "plantnet_like"): [2.0, 4.0], ("cce", "digits"): [10.0, 10.0, 12.0]},
                          out=lines.append)
    assert lines[1] == "run time of the finished runs (s, one thread per run; 38 s in all):"
    first, second = lines[2].split(), lines[3].split()
    assert first[:5] == ["cce", "/", "digits", "32.0", "s"] and first[5:7] == ["3", "runs"]
    assert first[-2] == "84.2" and second[-2] == "15.8"
    assert second[:4] == ["avgk", "/", "plantnet_like", "6.0"] and second[7:9] == ["3.00", "s/run"]


def test_no_finished_run_prints_nothing():
    lines = []
    status.report_seconds({}, out=lines.append)
    assert lines == []
