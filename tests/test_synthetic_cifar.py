"""The CIFAR-100 stand-in carries the structure SimLoss exploits: mistakes stay within the superclass."""
import torch

from image_classification.synthetic import SyntheticCifar


def test_generation_is_seeded_and_cached(tmp_path):
    a = SyntheticCifar(str(tmp_path), scale=0.1)()
    b = SyntheticCifar(str(tmp_path), scale=0.1)()
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert len(list(tmp_path.glob("synthetic_cifar_v*.pt"))) == 1
    c = SyntheticCifar(str(tmp_path / "other"), scale=0.1, seed=1)()
    assert not torch.equal(a.train.x, c.train.x)
    assert a.meta.num_classes == 100 and a.train.x.shape[1:] == (3, 32, 32)
    assert torch.equal(a.meta.superclass, torch.arange(100) // 5)


def test_trained_ce_confuses_within_superclass_far_more_than_across(train_run):
    rec = train_run("dataset=synthetic_cifar", "loss=ce", "dataset.scale=1.0", "trainer.epochs=4",
                    "optim.lr=3e-3")
    m = rec["metrics"]
    # Of the misclassified test images, the share whose prediction is in the true superclass; 4/99 if mistakes
    # were spread uniformly over the other classes.
    assert m["test/failed_superclass_accuracy"] > 0.5 > 10 * (4 / 99)
    assert m["test/accuracy"] > 0.2
