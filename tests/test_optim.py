import math

import torch

from alexnet.config import TrainConfig
from alexnet.engine.optim import PaperSGD, Schedule, set_lr


def test_paper_update_rule_by_hand_across_an_lr_change():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = PaperSGD([w], lr=0.1, momentum=0.9, weight_decay=0.5)
    grads = [torch.tensor([0.5, 1.0]), torch.tensor([-1.0, 0.25]), torch.tensor([2.0, -0.5])]
    lrs = [0.1, 0.1, 0.01]  # eps divided by 10 before the third step
    v = torch.zeros(2)
    ref = torch.tensor([1.0, -2.0])
    for g, lr in zip(grads, lrs):
        set_lr(opt, lr)
        w.grad = g.clone()
        opt.step()
        v = 0.9 * v - 0.5 * lr * ref - lr * g  # §5
        ref = ref + v
        assert torch.allclose(w.detach(), ref, atol=1e-7)
    # written out for the first step: v1 = -0.05*[1,-2] - 0.1*[0.5,1] = [-0.1, 0.0]
    w2 = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    o2 = PaperSGD([w2], lr=0.1, momentum=0.9, weight_decay=0.5)
    w2.grad = grads[0].clone()
    o2.step()
    assert torch.allclose(w2.detach(), torch.tensor([0.9, -2.0]), atol=1e-7)


def test_paper_rule_differs_from_torch_sgd_after_lr_change():
    def run(opt_cls, **kw):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(5))
        opt = opt_cls([w], lr=0.1, momentum=0.9, weight_decay=5e-4, **kw)
        for step in range(6):
            if step == 3:
                set_lr(opt, 0.01)
            w.grad = torch.sin(w.detach() * (step + 1))
            opt.step()
            if step == 2:
                before = w.detach().clone()
        return before, w.detach()

    a_before, a = run(PaperSGD)
    b_before, b = run(torch.optim.SGD)
    assert torch.allclose(a_before, b_before, atol=1e-6)  # equal while eps is fixed
    assert not torch.allclose(a, b, atol=1e-4)  # differ after the change


def test_plateau_schedule_drops_at_most_three_times():
    cfg = TrainConfig(lr=0.01, schedule="plateau", plateau_patience=2, max_lr_drops=3, plateau_threshold=0.0)
    s = Schedule(cfg, steps_per_epoch=10)
    errs = [0.9, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7] + [0.7] * 10
    lrs, drops = [], 0
    for e in errs:
        drops += s.end_of_epoch(e)
        lrs.append(s.lr_at(0))
    assert drops == 3
    assert lrs[1] == 0.01 and math.isclose(lrs[3], 0.001) and math.isclose(lrs[-1], 1e-5)
    state = s.state_dict()
    s2 = Schedule(cfg, 10)
    s2.load_state_dict(state)
    assert s2.lr_at(0) == s.lr_at(0)


def test_warmup_and_cosine():
    cfg = TrainConfig(lr=1.0, schedule="cosine", epochs=10, warmup_epochs=1)
    s = Schedule(cfg, steps_per_epoch=4)
    assert s.lr_at(0) == 0.25 and s.lr_at(3) == 1.0
    assert s.lr_at(40) < 1e-9 and 0.4 < s.lr_at(22) < 0.6
