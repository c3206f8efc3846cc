"""Lazy optimizers (experiments/engine/lazy.py): the rows of a sparse gradient only, each with its own state."""
import pytest
import torch
import torch.nn.functional as F

from experiments.engine.errors import UserError
from experiments.engine.lazy import LazySGD, lazy_optimizer
from experiments.engine.schemas import OptimConfig


def _grads(batches, n=6, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.tensor(idx), torch.randn(len(idx), c, generator=g)) for idx in batches]


def _run(make, steps, n=6, c=3, sparse=True):
    table = torch.nn.Parameter(torch.linspace(-1, 1, n * c).view(n, c).clone())
    opt = make([table])
    for idx, w in steps:
        opt.zero_grad(set_to_none=True)
        (F.embedding(idx, table, sparse=sparse) * w).sum().backward()
        opt.step()
    return table.detach()


@pytest.mark.parametrize("kw", [{"momentum": 0.9}, {"momentum": 0.9, "dampening": 0.3},
                                {"momentum": 0.8, "nesterov": True}, {}])
def test_lazy_sgd_with_every_row_in_every_batch_is_sgd(kw):
    steps = _grads([[0, 1, 2, 3, 4, 5]] * 3)
    lazy = _run(lambda p: LazySGD(p, lr=0.1, **kw), steps)
    dense = _run(lambda p: torch.optim.SGD(p, lr=0.1, **kw), steps, sparse=False)
    torch.testing.assert_close(lazy, dense, rtol=1e-6, atol=1e-7)


def test_lazy_sgd_moves_only_the_batch_rows_each_with_its_own_buffer():
    lr, m, d = 0.1, 0.9, 0.2
    steps = _grads([[0, 1], [1, 2], [0, 2]])
    got = _run(lambda p: LazySGD(p, lr=lr, momentum=m, dampening=d), steps)
    table = torch.linspace(-1, 1, 18).view(6, 3).clone()
    buf = {}
    for idx, w in steps:
        for i, row in zip(idx.tolist(), w):
            buf[i] = row.clone() if i not in buf else m * buf[i] + (1 - d) * row   # a row's first gradient starts it
            table[i] -= lr * buf[i]
    torch.testing.assert_close(got, table, rtol=1e-6, atol=1e-7)
    assert torch.equal(got[3:], torch.linspace(-1, 1, 18).view(6, 3)[3:])        # rows never in a batch


def test_the_run_optimizer_picks_its_lazy_counterpart_or_is_refused():
    p = [torch.nn.Parameter(torch.zeros(4, 2))]
    sgd = lazy_optimizer(OptimConfig(_target_="torch.optim.SGD", lr=0.1, momentum=0.9, nesterov=True), p, 0.5, "x")
    assert isinstance(sgd, LazySGD) and sgd.defaults["lr"] == 0.5 and sgd.defaults["nesterov"]
    adam = lazy_optimizer(OptimConfig(_target_="torch.optim.Adam", lr=0.1, betas=[0.8, 0.9]), p, 1.0, "x")
    assert isinstance(adam, torch.optim.SparseAdam) and tuple(adam.defaults["betas"]) == (0.8, 0.9)
    with pytest.raises(UserError, match="loss.table_update=rows needs a lazy counterpart of the run's optimizer "
                                        "torch.optim.RMSprop"):
        lazy_optimizer(OptimConfig(_target_="torch.optim.RMSprop", lr=0.1), p, 1.0, "loss.table_update=rows")
    with pytest.raises(UserError, match=r"torch.optim.Adam \(amsgrad\)"):
        lazy_optimizer(OptimConfig(_target_="torch.optim.Adam", lr=0.1, amsgrad=True), p, 1.0, "x")


def test_lazy_sgd_refuses_a_dense_gradient():
    with pytest.raises(UserError, match="sparse gradient"):
        _run(lambda p: LazySGD(p, lr=0.1, momentum=0.9), _grads([[0, 1]]), sparse=False)
