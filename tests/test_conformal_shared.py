"""ConformalSets ranks each split's rows once and builds APS's scores once for every K (issue 31: at 1,081 classes
the repeated sorts cost more than a GPU epoch); the thresholds and sets must be exactly those of `aps_scores`
computed afresh for each (method, K)."""
import math
from types import SimpleNamespace

import pytest
import torch

from average_k.conformal import ConformalSets, aps_scores, size_calibrated_threshold


@pytest.mark.parametrize("u", [0.0, 1.0, "random"])
@pytest.mark.parametrize("rule", ["official", "own_rank"])
def test_shared_ranking_gives_the_per_pair_thresholds_and_sets_exactly(u, rule):
    g = torch.Generator().manual_seed(7)
    probs = torch.softmax(2 * torch.randn(200, 15, generator=g), 1)
    targets = torch.randint(0, 15, (200,), generator=g)
    out = SimpleNamespace(scores={"probs": probs}, targets=targets, distribution=lambda key: probs)
    metric = ConformalSets(ks=(1, 2, 3.5), aps_u=u, raps_rule=rule, seed=2)
    state = metric.fit(out, None)
    draw = u
    if u == "random":   # the metric's own draw: seeded by its seed and the number of rows
        draw = torch.rand(probs.shape, generator=torch.Generator().manual_seed(2 * 1_000_003 + 200),
                          dtype=torch.float64)
    values = metric(out, SimpleNamespace(num_classes=15), state)
    for k in (1, 2, 3.5):
        for method, penalty, kreg in (("aps", 0.0, 0.0), ("raps", 0.01, float(math.floor(k)))):
            scores = aps_scores(probs, penalty, kreg, draw, rule)
            assert state[(method, k)] == size_calibrated_threshold(scores, k)
            sets = scores <= state[(method, k)]
            label = f"{k:g}"
            assert values[f"{method}_size@{label}"] == sets.sum(1).double().mean().item()
            assert values[f"{method}_acc@{label}"] == sets.gather(1, targets.view(-1, 1)).double().mean().item()
