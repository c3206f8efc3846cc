"""The official CCE and COT code written out literally: tests compare our losses with what the authors ran."""
import torch
import torch.nn.functional as F


def official_cce(yhat_logits: torch.Tensor, y: torch.Tensor, balancing_factor: float = 1.0) -> torch.Tensor:
    """The official code (v1/v2 `criterion.py`/`CE.py` + `trainer.py::CCE`), written out literally."""
    n, k = yhat_logits.shape
    ce = F.cross_entropy(yhat_logits, y)
    yHat = F.softmax(yhat_logits, dim=1)
    Yg = torch.gather(yHat, 1, torch.unsqueeze(y, 1))
    Yg_ = (1 - Yg) + 1e-7  # avoiding numerical issues (first)
    Px = yHat / Yg_.view(len(yHat), 1)
    Px_log = torch.log(Px + 1e-10)  # avoiding numerical issues (second)
    y_zerohot = torch.ones(n, k).scatter_(1, y.view(n, 1).data.cpu(), 0)
    output = Px * Px_log * y_zerohot.to(Px.dtype)
    loss = torch.sum(output)
    loss /= float(n)
    loss /= float(k)
    return ce - balancing_factor * loss  # current cce.py: CE − b·T; v1/v2: CE + γ·T with γ = −1


def cot_complement(yhat_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """COT `code/COT.py` ComplementEntropy.forward, literally (classes = K instead of the hard-coded 10)."""
    n, classes = yhat_logits.shape
    yHat = F.softmax(yhat_logits, dim=1)
    Yg = torch.gather(yHat, 1, torch.unsqueeze(y, 1))
    Yg_ = (1 - Yg) + 1e-7
    Px = yHat / Yg_.view(len(yHat), 1)
    Px_log = torch.log(Px + 1e-10)
    y_zerohot = torch.ones(n, classes).scatter_(1, y.view(n, 1).data.cpu(), 0)
    output = Px * Px_log * y_zerohot.to(Px.dtype)
    loss = torch.sum(output)
    loss /= float(n)
    loss /= float(classes)
    return loss
