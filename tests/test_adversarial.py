"""PGD accuracy (stirflow.adversarial): eps = 0 is clean accuracy, accuracy falls with eps, and the
attack is the same as an independently written PGD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stirflow.adversarial import (
    adversarial_accuracy,
    adversarial_dataarray,
    load_adversarial,
    pgd,
    save_adversarial,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Every test here runs torch on one thread (see conftest.one_torch_thread)."""


def toy_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, 3, 8, 8) in [0, 1] whose class (of 4) is which quadrant is brightest, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    x = 0.3 + 0.1 * torch.rand(n, 3, 8, 8, generator=g)
    for i, c in enumerate(labels.tolist()):
        r, q = divmod(c, 2)
        x[i, :, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 0.25
    return x.clamp(0, 1), labels


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """A small MLP trained to about 100 % on the toy data (in eval mode, on the CPU)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    x, y = toy_data(512, seed=1)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def accuracy(net, x, y) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


# An independent PGD, written from Madry et al. (2018) one image at a time, without the module's helpers.
def reference_pgd(net, x, y, norm, eps, steps, alpha, start=None):
    out = []
    for i in range(len(x)):
        x0 = x[i:i + 1].clone()
        adv = x0.clone() if start is None else (x0 + start[i:i + 1]).clamp(0, 1)
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(net(adv), y[i:i + 1])
            grad = torch.autograd.grad(loss, adv)[0]
            with torch.no_grad():
                if norm == "linf":
                    adv = adv + alpha * torch.sign(grad)
                    adv = torch.min(torch.max(adv, x0 - eps), x0 + eps)
                else:
                    adv = adv + alpha * grad / (torch.sqrt((grad**2).sum()) + 1e-10)
                    delta = adv - x0
                    length = torch.sqrt((delta**2).sum())
                    if length > eps:
                        delta = delta * (eps / length)
                    adv = x0 + delta
                adv = torch.clamp(adv, 0.0, 1.0)
        out.append(adv.detach())
    return torch.cat(out)


@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("l2", 0.8)])
def test_pgd_equals_an_independent_implementation(model, norm, eps):
    x, y = toy_data(24, seed=2)
    ours = pgd(model, x, y, norm=norm, eps=eps, steps=7, step_size=eps / 4, random_start=False)
    # cross-entropy of a batch is the mean, of one image its own loss: the gradient directions agree
    theirs = reference_pgd(model, x, y, norm, eps, 7, eps / 4)
    assert torch.allclose(ours, theirs, atol=1e-5)
    with torch.no_grad():  # the attack raises every image's loss
        assert (F.cross_entropy(model(ours), y, reduction="none") > F.cross_entropy(model(x), y, reduction="none")).all()


def test_random_starts_lie_in_the_ball_and_are_used(model):
    x, y = toy_data(32, seed=3)
    for norm, eps in (("linf", 0.03), ("l2", 0.5)):
        start = pgd(model, x, y, norm=norm, eps=eps, steps=0, step_size=0.0, random_start=True,
                    generator=torch.Generator().manual_seed(0))
        delta = (start - x).flatten(1)
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert (size <= eps + 1e-6).all() and (size > 0).all()
        # the attack from a random start is the reference attack from the same start
        g = torch.Generator().manual_seed(5)
        ours = pgd(model, x, y, norm=norm, eps=eps, steps=3, step_size=eps / 3, random_start=True, generator=g)
        start = pgd(model, x, y, norm=norm, eps=eps, steps=0, step_size=0.0, random_start=True,
                    generator=torch.Generator().manual_seed(5)) - x
        theirs = reference_pgd(model, x, y, norm, eps, 3, eps / 3, start=start)
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_eps_zero_is_clean_accuracy_and_accuracy_falls_with_eps(model):
    x, y = toy_data(128, seed=4)
    clean = accuracy(model, x, y)
    assert clean > 0.9
    eps = {"linf": [0.0, 0.01, 0.02, 0.04, 0.08, 0.16], "l2": [0.0, 0.1, 0.2, 0.4, 0.8, 1.6]}
    acc = adversarial_accuracy(model, x, y, eps=eps, steps=10, step_size=0.25, seed=0, batch_size=50)
    for norm in eps:
        assert acc[norm][0] == clean
        assert all(a >= b for a, b in zip(acc[norm], acc[norm][1:])), (norm, acc[norm])
        assert acc[norm][-1] < 0.2, (norm, acc[norm])


def test_same_seed_same_accuracies(model):
    x, y = toy_data(60, seed=5)
    eps = {"linf": [0.02, 0.04]}
    a = adversarial_accuracy(model, x, y, eps=eps, steps=5, step_size=0.25, seed=3, batch_size=60)
    b = adversarial_accuracy(model, x, y, eps=eps, steps=5, step_size=0.25, seed=3, batch_size=60)
    np.testing.assert_array_equal(a["linf"], b["linf"])


def test_the_pipeline_model_normalises_its_input_itself():
    # eps is in pixel units: StirViT takes [0, 1] images and normalises them inside forward
    from stirflow.models import create_model
    from stirflow.training import evaluate

    torch.manual_seed(0)
    spec = {"task": "classification", "num_classes": 4,
            "vit": {"img_size": 8, "patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}}
    vit = create_model(spec).eval()
    x, y = toy_data(40, seed=6)
    acc = adversarial_accuracy(vit, x, y, eps={"linf": [0.0, 0.1]}, steps=5, step_size=0.25)
    assert acc["linf"][0] == evaluate(vit, x, y)["accuracy"]
    assert acc["linf"][1] <= acc["linf"][0]


def test_bad_arguments(model):
    x, y = toy_data(4, seed=7)
    with pytest.raises(ValueError, match="linf, l2"):
        pgd(model, x, y, norm="l1", eps=0.1, steps=1, step_size=0.1)
    with pytest.raises(ValueError, match=">= 0"):
        pgd(model, x, y, norm="linf", eps=-0.1, steps=1, step_size=0.1)


def test_files_and_dataarray(tmp_path):
    eps = {"linf": [0.0, 0.01], "l2": [0.0, 0.5]}
    per_epoch = [{"linf": np.array([0.9, 0.5]), "l2": np.array([0.9, 0.4])},
                 {"linf": np.array([0.95, 0.6]), "l2": np.array([0.95, 0.3])}]
    save_adversarial(tmp_path / "a.h5", [0, 1], per_epoch, eps, run="a")
    data, attrs = load_adversarial(tmp_path / "a.h5")
    assert attrs["eps"] == eps and list(data["epochs"]) == [0, 1]
    da = adversarial_dataarray([tmp_path / "a.h5"], ["a", "recon"], [0, 1, 2])
    assert da.dims == ("run", "epoch", "norm", "eps")
    assert list(da.norm.values) == ["linf", "l2"] and list(da.eps.values) == [0.0, 0.01, 0.5]
    assert da.sel(run="a", epoch=1, norm="l2", eps=0.5).item() == 0.3
    assert np.isnan(da.sel(run="a", epoch=1, norm="l2", eps=0.01).item())  # not attacked there
    assert np.isnan(da.sel(run="recon").values).all() and np.isnan(da.sel(epoch=2).values).all()
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(Exception, match="bad.h5"):
        load_adversarial(tmp_path / "bad.h5")
