"""HXE, soft labels and hierarchical distance @k on a tiny tree, against the official code's definitions written
out here node by node (root → superclasses {0, 1} and {2, 3, 4} → classes)."""
import math

import pytest
import torch

from experiments.engine.data import Meta
from experiments.engine.metrics import EvalOutputs
from image_classification.hierarchy import HXE, HierarchicalDistance, SoftLabels
from image_classification.metrics import SuperclassMetrics

SUPER = [0, 0, 1, 1, 1]
TREE = {"root": ["s0", "s1"], "s0": [0, 1], "s1": [2, 3, 4]}


def meta():
    return Meta(num_classes=5, class_names=list("abcde"), class_counts=torch.ones(5), superclass=torch.tensor(SUPER))


def nodes_with_depth(node="root", depth=0):
    yield node, depth
    for child in TREE.get(node, []):
        yield from nodes_with_depth(child, depth + 1)


def leaves(node):
    return [node] if node not in TREE else [leaf for child in TREE[node] for leaf in leaves(child)]


def path(leaf):
    return ["root", f"s{SUPER[leaf]}", leaf]


def hxe_hand(p, y, alpha):
    """get_exponential_weighting (every node, root included, weighs exp(−α·depth), normalised to sum 1) and the
    path sum −Σ_edges λ(child)·log(P(child)/P(parent)), P(node) = Σ p over its leaves."""
    depth = dict(nodes_with_depth())
    total = math.fsum(math.exp(-alpha * d) for d in depth.values())
    prob = {n: sum(p[leaf] for leaf in leaves(n)) for n in depth}
    nodes = path(y)
    return -sum(math.exp(-alpha * depth[c]) / total * math.log(prob[c] / prob[a]) for a, c in zip(nodes, nodes[1:]))


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 2.0])
def test_hxe_is_the_weighted_sum_over_the_path(alpha):
    torch.manual_seed(0)
    z, y = torch.randn(6, 5) * 2, torch.tensor([0, 1, 2, 3, 4, 2])
    loss = HXE(alpha)
    loss.bind(meta())
    p = z.double().softmax(1).tolist()
    want = sum(hxe_hand(p[i], int(y[i]), alpha) for i in range(6)) / 6
    assert loss(z, y).item() == pytest.approx(want, rel=1e-5)


def test_hxe_at_alpha_zero_is_cross_entropy_over_the_node_count():
    z, y = torch.randn(4, 5), torch.tensor([0, 2, 3, 1])
    loss = HXE(0.0)
    loss.bind(meta())
    ce = torch.nn.functional.cross_entropy(z, y).item()
    assert loss(z, y).item() == pytest.approx(ce / (1 + 2 + 5), rel=1e-5)


def test_soft_labels_are_the_official_exponential_of_the_normalised_tree_distance():
    loss = SoftLabels(beta=4.0)
    loss.bind(meta())
    e = [1.0, math.exp(-2.0), math.exp(-4.0)]            # D/max = 0, 1/2, 1
    col = [e[0], e[1], e[2], e[2], e[2]]                  # class 0: itself, its sibling, the other superclass
    assert loss.labels[:, 0].tolist() == pytest.approx([v / sum(col) for v in col], rel=1e-6)
    z, y = torch.randn(3, 5), torch.tensor([0, 3, 4])
    q = z.double().log_softmax(1)
    t = loss.labels.double()[:, y].T
    kl = (t * (t.log() - q)).sum()
    assert loss(z, y).item() == pytest.approx((kl / 15).item(), rel=1e-5)
    batch = SoftLabels(beta=4.0, reduction="batchmean")
    batch.bind(meta())
    assert batch(z, y).item() == pytest.approx((kl / 3).item(), rel=1e-5)


def test_soft_labels_at_beta_zero_are_one_hot_as_the_official_switch():
    loss = SoftLabels(beta=0.0)
    loss.bind(meta())
    z, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 4])
    assert torch.equal(loss.labels, torch.eye(5))
    assert loss(z, y).item() == pytest.approx(torch.nn.functional.cross_entropy(z, y).item() / 5, rel=1e-5)


def test_losses_refuse_a_dataset_without_superclasses():
    flat = Meta(num_classes=5, class_names=list("abcde"), class_counts=torch.ones(5))
    for loss in (HXE(0.1), SoftLabels(5.0)):
        with pytest.raises(ValueError, match="superclass"):
            loss.bind(flat)


def test_hierarchical_distance_at_k_on_the_tiny_tree():
    logits = torch.tensor([[5.0, 4, 3, 2, 1],      # y=0: top-3 = 0, 1, 2 → d 0, 1, 2
                           [1.0, 2, 3, 4, 5],      # y=0: top-3 = 4, 3, 2 → d 2, 2, 2
                           [1.0, 5, 4, 3, 2]])     # y=2: top-3 = 1, 2, 3 → d 2, 0, 1
    y = torch.tensor([0, 0, 2])
    ev = EvalOutputs(outputs={"logits": logits}, scores={"probs": logits.softmax(1)}, targets=y)
    res = HierarchicalDistance(ks=(1, 3))(ev, meta())
    assert res["hdist@1"] == pytest.approx((0 + 2 + 2) / 3)
    assert res["hdist@3"] == pytest.approx((0 + 1 + 2 + 2 + 2 + 2 + 2 + 0 + 1) / 9)
    assert res["hdist_mistakes@1"] == pytest.approx(2.0)
    assert res["hdist_mistakes@3"] == pytest.approx((2 + 2 + 2 + 2 + 0 + 1) / 6)
    assert res["hdist_mistakes@1"] == pytest.approx(SuperclassMetrics()(ev, meta())["mistake_severity"])


def test_hierarchical_distance_declarations():
    m = HierarchicalDistance()
    assert m.requires == ("superclass",) and m.needs == "ranking"
    assert m.measure("hdist@5").higher_is_better is False


@pytest.mark.parametrize("loss", ["hxe", "soft_labels"])
def test_each_hierarchy_loss_trains_in_the_engine(train_run, loss):
    rec = train_run("dataset=synthetic_cifar", "model=small_cnn", f"loss={loss}", "dataset.image_size=16")
    assert rec["status"] == "completed"
    for name in ("test/accuracy", "test/superclass_accuracy", "test/hdist@1", "test/hdist@5"):
        assert rec["metrics"][name] is not None
