"""The planner's per-model rates (experiments/drivers/rates.py), the plan's pricing and the local launcher's GPU
slots (RUNS_PER_GPU)."""
import pytest
from omegaconf import OmegaConf

from experiments.drivers import rates, runner
from experiments.engine.errors import UserError


def _model(name, **kw):
    return OmegaConf.create({"_target_": f"experiments.engine.models.{name}", **kw})


def test_lenet_flops_params_and_activations_match_its_layers():
    cost = rates.model_cost(_model("lenet"), 3, None)   # no declared size: lenet's own 32 px
    # 2 × multiply-adds: conv 3→6 k5 on 28×28 outputs, conv 6→16 k5 on 10×10, fc 400→120, 120→84
    flops = 2 * (3 * 25 * 6 * 28 * 28 + 6 * 25 * 16 * 10 * 10 + 400 * 120 + 120 * 84)
    params = (3 * 25 * 6 + 6) + (6 * 25 * 16 + 16) + (400 * 120 + 120) + (120 * 84 + 84)
    # leaf outputs: conv, relu, pool, conv, relu, pool, flatten, fc, relu, fc, relu
    acts = 2 * 6 * 28 * 28 + 6 * 14 * 14 + 2 * 16 * 10 * 10 + 2 * 16 * 5 * 5 + 2 * 120 + 2 * 84
    assert (cost.flops, cost.params, cost.activations, cost.side) == (flops, params, acts, 32)


def test_weights_are_never_read_to_count_a_model():
    cost = rates.model_cost(_model("resnet18", weights="imagenet", weights_path="/nonexistent.pt"), 3, 64)
    assert cost.side == 64 and cost.params == 11_176_512


def test_scaled_rate_is_compute_plus_a_fixed_step_cost():
    ref = rates.Cost(8e9, 1, 1, 224)
    small = rates.Cost(2e9, 1, 1, 32)
    r = rates.scaled_rate(small, ref, 1000.0, batch=64, overhead_s=0.05)
    compute = 1000.0 * 8e9 / 2e9                            # 4,000 img/s of pure compute: 16 ms per 64 images
    assert r.compute_img_per_s == pytest.approx(compute)
    assert r.img_per_s == pytest.approx(64 / 0.066)         # + 50 ms fixed: 969.7 img/s
    assert r.busy() == pytest.approx(0.016 / 0.066)
    assert r.shared(1) == pytest.approx(64 / 0.066)
    assert r.shared(2) == pytest.approx(2 * 64 / 0.066)     # 1,939: two runs overlap their fixed costs
    assert r.shared(10) == pytest.approx(compute)           # 9,697 > 4,000: the GPU's compute caps it
    same = rates.scaled_rate(ref, ref, 1000.0, batch=64, overhead_s=0.0)
    assert same.img_per_s == pytest.approx(1000.0)


def test_a_measured_rate_wins_over_the_flops_scaling():
    ds = OmegaConf.create({})
    measured = {"lenet@default": {"img_per_s": 1234.0, "compute_img_per_s": 5000.0, "batch": 64, "device": "X"}}
    cache = {}
    r, _ = rates.rate_for(_model("lenet"), ds, 64, 3000.0, measured, cache)
    assert (r.img_per_s, r.compute_img_per_s) == (1234.0, 5000.0) and "measured by gpu-check on X" in r.source
    r2, _ = rates.rate_for(_model("lenet"), OmegaConf.create({"image_size": 32}), 64, 3000.0, measured, cache)
    assert "scaled from FLOPs" in r2.source      # another key (lenet@32px): not the measured one


def test_optimizer_states_count_what_the_optimizer_keeps():
    states = [rates.optimizer_states(OmegaConf.create(o)) for o in (
        {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9},
        {"_target_": "torch.optim.SGD", "lr": 0.1},
        {"_target_": "torch.optim.Adam", "lr": 1e-3})]
    assert states == [1, 0, 2]


def test_gpu_memory_is_weights_grads_states_and_activations():
    cost = rates.Cost(1.0, params=1000, activations=50, side=8)
    assert rates.gpu_memory_gb(cost, batch=10, optimizer_states=2) == pytest.approx(4 * (1000 * 4 + 50 * 10) / 2**30)


def test_measure_rate_times_steps_on_the_cpu():
    m = rates.measure_rate(_model("lenet"), 3, None, batch=8, device="cpu", steps=2, warmup=1)
    assert m["img_per_s"] > 0 and m["compute_img_per_s"] > 0 and m["batch"] == 8 and m["device"] == "cpu"


def test_gpu_slots_fill_one_gpu_then_the_next():
    assert runner.gpu_slots(5, 2, ["0", "1"]) == ["0", "0", "1", "1", "0"]
    assert runner.gpu_slots(3, 1, ["4", "6"]) == ["4", "6", "4"]
    assert runner.gpu_slots(2, None, ["0"]) == [None, None]
    assert runner.gpu_slots(2, 3, []) == [None, None]


def test_runs_per_gpu_from_the_environment(monkeypatch):
    monkeypatch.delenv("RUNS_PER_GPU", raising=False)
    assert runner.runs_per_gpu_from_env() is None
    monkeypatch.setenv("RUNS_PER_GPU", "3")
    assert runner.runs_per_gpu_from_env() == 3
    monkeypatch.setenv("RUNS_PER_GPU", "0")
    with pytest.raises(UserError, match="RUNS_PER_GPU='0'"):
        runner.runs_per_gpu_from_env()


def test_gpu_check_writes_the_rates_the_plan_then_uses(tmp_path, monkeypatch):
    """gpu-check's rate step (here on the CPU, one small model) writes rates.json; rate_for then reports the
    measured rate instead of the FLOPs scaling."""
    from experiments.drivers import gpu_check

    monkeypatch.setattr(gpu_check, "paper_models", lambda: {"lenet@default": (_model("lenet"), 3, None, 8)})
    path = tmp_path / "rates.json"
    assert gpu_check.measure_paper_rates("cpu", path)
    measured = rates.measured_rates(path)
    assert set(measured) == {"lenet@default"} and measured["lenet@default"]["device"] == "cpu"
    r, _ = rates.rate_for(_model("lenet"), OmegaConf.create({}), 8, 3000.0, measured, {})
    assert r.img_per_s == measured["lenet@default"]["img_per_s"] and "measured by gpu-check on cpu" in r.source


def test_gpu_work_adds_to_the_step_and_to_what_shared_runs_divide():
    r = rates.Rate(img_per_s=1000.0, compute_img_per_s=4000.0, source="s", basis="b")
    slower = r.plus_gpu_work(0.032, batch=32, why="a table")
    assert slower.img_per_s == pytest.approx(32 / (0.032 + 0.032))           # 32 ms step + 32 ms of traffic
    assert slower.compute_img_per_s == pytest.approx(32 / (0.008 + 0.032))   # the traffic is not overlapped
    assert "a table" in slower.source and r.plus_gpu_work(0.0, 32, "x") is r


def test_a_cap_binds_only_below_the_rate_and_says_so():
    r = rates.Rate(img_per_s=1000.0, compute_img_per_s=4000.0, source="s", basis="b")
    assert r.capped(2000.0, "the loader") is r
    c = r.capped(600.0, "the loader")
    assert c.img_per_s == 600.0 and c.shared(4) == pytest.approx(2400.0) and "capped by the loader" in c.basis


def test_table_traffic_counts_value_gradient_and_states():
    seconds, moved = rates.table_traffic(1_000_000, optimizer_states=2)       # Adam: m and v
    # backward writes the gradient; the step reads value, gradient, m, v and writes value, m, v
    assert moved == 4 * 1_000_000 * 8 and seconds == pytest.approx(moved / rates.GPU_BYTES_PER_S)
    cost = rates.Cost(1.0, params=1000, activations=50, side=8)
    assert rates.gpu_memory_gb(cost, 10, 2, state_floats=500) == pytest.approx(4 * (1500 * 4 + 50 * 10) / 2**30)


def _part(loss, decode=None, train=1000, classes=10, batch=20):
    from experiments.drivers.plan import Part

    cfg = OmegaConf.create({
        "model": {"_target_": "experiments.engine.models.lenet"}, "optim": {"_target_": "torch.optim.Adam", "lr": 1e-3},
        "trainer": {"batch_size": batch}, "loss": loss, "dataset": {"classes": classes}})
    return Part("x", runs=1, epochs=1, sizes=(train, 0, 0), source="", decode=decode, cfg=cfg)


def test_the_plan_prices_a_loss_by_its_declared_per_example_parameters(monkeypatch):
    from experiments.drivers.plan import Pricing

    monkeypatch.delenv("CORES_PER_GPU", raising=False)
    pricing = Pricing(3000.0, measured={})
    role = {"_target_": "average_k.losses.RegularizedOnlineLabelEstimation", "table_update": "dense"}
    ce_hours, ce_line = pricing.part(_part({"_target_": "experiments.engine.loss.CrossEntropy"}))
    dense_hours, dense_line = pricing.part(_part(role, train=100_000, classes=1000))
    rows_hours, rows_line = pricing.part(_part(dict(role, table_update="rows"), train=100_000, classes=1000))
    assert "per-example" not in ce_line and "100,000,000 floats" in dense_line
    # 10^8 floats × 4 B × (gradient write, value/gradient/m/v read, value/m/v write = 8) / 1.5 TB/s = 2.13 ms
    assert "3 GB moved per step ≈ 2.1 ms" in dense_line
    assert dense_hours / 100 > rows_hours / 100 > ce_hours      # per image: rows moves 20 × 1000 floats, dense 10^8


def test_a_streamed_part_is_capped_by_its_loader_per_core_rate(monkeypatch, tmp_path):
    from experiments.drivers import plan

    bench = {"loader": {"800x600": {"pil": {"2 workers": {"img_per_s_per_core": 100.0}}},
                        "500x375": {"pil": {"2 workers": {"img_per_s_per_core": 250.0}}}}}
    monkeypatch.setattr(plan, "BENCH_JSON", tmp_path / "bench.json")
    (tmp_path / "bench.json").write_text(__import__("json").dumps(bench))
    monkeypatch.setenv("CORES_PER_GPU", "6")
    ce = {"_target_": "experiments.engine.loss.CrossEntropy"}
    hours, line = plan.Pricing(3000.0, runs_per_gpu=2, measured={}).part(_part(ce, decode="pil"))
    assert "capped by the loader (3 cores × 100 img/s per core, pil, make bench)" in line
    assert "loader-bound" in line and "would fill it" not in line      # more runs per GPU would not help
    assert hours == pytest.approx(1000 / (2 * 300.0) / 3600)       # two runs per GPU, each at 3 × 100 img/s
    monkeypatch.setenv("CORES_PER_GPU", "two")
    with pytest.raises(UserError, match="CORES_PER_GPU='two'"):
        plan.Pricing(3000.0)
