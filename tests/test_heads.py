import numpy as np
import pytest

from headstart.models.heads import make_head, restore_head


def blobs(n_per=40, d=32, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (k, d))
    x = np.concatenate([c + rng.normal(0, 1, (n_per, d)) for c in centers]).astype(np.float32)
    y = np.repeat(np.arange(k), n_per)
    order = rng.permutation(len(y))
    return x[order], y[order]


@pytest.mark.parametrize("name", ["logistic", "mlp", "knn"])
def test_head_learns_and_restores_exactly(name):
    x, y = blobs(n_per=80)
    x, y, xv, yv = x[:120], y[:120], x[120:], y[120:]
    head = make_head(name)
    info = head.fit(x[:90], y[:90], x[90:], y[90:], 3)
    proba = head.predict_proba(xv)
    assert proba.shape == (len(yv), 3) and np.allclose(proba.sum(1), 1)
    assert (proba.argmax(1) == yv).mean() > 0.9
    again = restore_head(name, head.arrays(), head.params())
    np.testing.assert_allclose(again.predict_proba(xv), proba, rtol=1e-5, atol=1e-6)
    assert {"logistic": {"C", "sweep"}, "mlp": {"best_epoch", "history"}, "knn": {"k", "sweep"}}[name] <= set(
        info
    )


def test_logistic_sweep_picks_c_on_validation():
    x, y = blobs()
    head = make_head("logistic")
    info = head.fit(x[:90], y[:90], x[90:], y[90:], 3)
    tried = [row["C"] for row in info["sweep"]]
    assert tried[: len(head.cs)] == sorted(head.cs) and head.C in tried  # widened past an edge best


def test_binary_logistic_matches_two_way_softmax():
    x, y = blobs(k=2)
    head = make_head("logistic")
    head.fit(x[:60], y[:60], x[60:], y[60:], 2)
    assert (head.predict_proba(x[60:]).argmax(1) == y[60:]).mean() > 0.9


def test_an_averaged_linear_head_gives_the_softmax_of_the_members_mean_logits():
    from headstart.estimator.auto import mean_logit_proba
    from headstart.models.heads import LogisticHead, averaged_linear_head

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    heads, xs = [], []
    for width in (5, 7):
        x = rng.normal(size=(60, width)) + y[:, None]
        head = LogisticHead(refit=False)
        head.fit(x[:40], y[:40], x[40:], y[40:], 3)
        heads.append(head)
        xs.append(x)
    both = averaged_linear_head(heads)
    expected = mean_logit_proba([h.predict_proba(x) for h, x in zip(heads, xs)])
    np.testing.assert_allclose(both.predict_proba(np.hstack(xs)), expected, atol=1e-5)
    assert not np.allclose(expected, heads[0].predict_proba(xs[0]), atol=1e-3)


def test_fine_tuned_flip_tta_averages_the_logits_of_the_image_and_its_mirror():
    import torch

    from headstart.training.loop import evaluate

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 6, 3))
    pixels, labels = torch.randn(5, 3, 4, 6), torch.tensor([0, 1, 2, 0, 1])
    loss_fn = torch.nn.CrossEntropyLoss()
    _, _, plain = evaluate(network, [(pixels, labels)], loss_fn)
    _, _, flipped = evaluate(network, [(pixels, labels)], loss_fn, tta="flip")
    with torch.no_grad():
        mean_logits = (network(pixels) + network(pixels.flip(-1))) / 2
    np.testing.assert_allclose(flipped, torch.softmax(mean_logits, 1).numpy(), atol=1e-6)
    assert not np.allclose(plain, flipped, atol=1e-3)
