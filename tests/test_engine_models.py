import pytest
import torch

from experiments.engine import models
from experiments.engine.errors import UserError
from experiments.engine.models import Network, NormedLinear
from experiments.losses import LDAMLoss


@pytest.mark.parametrize("factory, size, feat", [
    (models.small_cnn, 32, 128), (models.simloss_age_cnn, 60, 120), (models.lenet, 32, 84),
    (models.resnet32_cifar, 32, 64), (models.resnet34_cifar, 32, 512), (models.resnet18, 64, 512),
])
def test_backbones_give_their_feature_size_and_heads_follow_the_dataset(factory, size, feat):
    net = Network(factory(in_channels=3, image_size=size), num_classes=7, heads=("logits", "ml"))
    out = net(torch.randn(2, 3, size, size))
    assert net.backbone.out_features == feat
    assert set(out) == {"logits", "ml"} and out["logits"].shape == (2, 7) and out["ml"].shape == (2, 7)


def test_paper_models_refuse_the_wrong_input_size():
    with pytest.raises(UserError, match="60×60"):
        models.simloss_age_cnn(image_size=32)
    with pytest.raises(UserError, match="weights_path"):
        models.resnet18(weights_path="/nonexistent/weights.pth")


def test_cosine_head_is_cosine_similarity():
    head = NormedLinear(5, 3)
    x = torch.randn(4, 5)
    w = head.weight.detach()
    expected = torch.stack([torch.stack([torch.dot(x[i], w[:, j]) / (x[i].norm() * w[:, j].norm())
                                         for j in range(3)]) for i in range(4)])
    assert torch.allclose(head(x), expected, atol=1e-6)
    assert LDAMLoss(class_counts=[5, 1]).head == "cosine"
    assert LDAMLoss(class_counts=[5, 1], normed_head=False).head == "linear"
