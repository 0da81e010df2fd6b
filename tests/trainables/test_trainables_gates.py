"""Pure search math: budget -> k, top-k, random subsets, straight-through gate, fallback."""

from __future__ import annotations

import pytest
import torch

from trainables.search.gates import apply_fallback, budget_to_k, cosine, logistic_noise, random_mask, straight_through, topk_mask


def test_budget_to_k_ratio_and_absolute() -> None:
    assert budget_to_k(0.34, 132) == 44  # RepVGG-A0 as shipped by RepNAS
    assert budget_to_k(1.0, 30) == 30
    assert budget_to_k(0.3, 10) == 3  # no float floor surprise (0.3 * 10 = 2.999...)
    assert budget_to_k(7, 30) == 7


@pytest.mark.parametrize("budget", [0.0, -0.5, 1.5, 0, -3, 31, 0.01])
def test_budget_to_k_rejects(budget: float) -> None:
    with pytest.raises(ValueError):
        budget_to_k(budget, 30)


def test_topk_mask_keeps_exactly_k_and_skips_invalid() -> None:
    scores = torch.tensor([[5.0, 1.0, 3.0], [4.0, 9.0, 2.0]])
    valid = torch.tensor([[True, True, True], [True, False, True]])
    mask = topk_mask(scores, 3, valid)
    assert mask.tolist() == [[True, False, True], [True, False, False]]
    assert int(topk_mask(torch.zeros(10), 4).sum()) == 4  # ties still give exactly k


def test_random_mask_is_uniform_k_subset() -> None:
    g = torch.Generator().manual_seed(0)
    masks = torch.stack([random_mask(6, 2, g) for _ in range(3000)])
    assert bool((masks.sum(1) == 2).all())
    assert torch.allclose(masks.float().mean(0), torch.full((6,), 1 / 3), atol=0.04)


def test_straight_through_value_is_mask_and_gradient_is_sigmoid_prime() -> None:
    r = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    mask = torch.tensor([True, False, True])
    z = straight_through(mask, r)
    assert torch.equal(z.detach(), mask.float())
    z.sum().backward()
    s = torch.sigmoid(r.detach())
    assert torch.allclose(r.grad, s * (1 - s))


def test_logistic_noise_is_seeded_and_centred() -> None:
    a = logistic_noise(5000, torch.Generator().manual_seed(1))
    b = logistic_noise(5000, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert abs(float(a.mean())) < 0.1 and abs(float(a.var()) - torch.pi**2 / 3) < 0.3  # logistic(0, 1)


def test_apply_fallback_turns_on_kxk_of_empty_layers_without_identity() -> None:
    sizes = [3, 3, 3]
    fallback = torch.tensor([1, -1, 7])  # layer 1 has identity
    mask = torch.tensor([False, False, False, False, False, False, True, False, False])
    out = apply_fallback(mask, sizes, fallback)
    assert out.tolist() == [False, True, False, False, False, False, True, False, False]


def test_cosine_schedule() -> None:
    assert cosine(0, 10, 1.0) == 1.0
    assert cosine(5, 10, 1.0) == pytest.approx(0.5)
    assert cosine(10, 10, 1.0) == 0.0 and cosine(99, 10, 1.0) == 0.0


def test_kept_slots_are_always_in_the_top_k() -> None:
    from trainables.search.gates import fair_mask, fair_update, floored_topk, keep_slots

    scores = torch.tensor([5.0, -9.0, 3.0, 1.0, -7.0, 0.0])
    kept = torch.tensor([False, True, False, False, True, False])
    assert torch.equal(keep_slots(scores, None), scores)
    assert keep_slots(scores, kept).tolist() == [5.0, float("inf"), 3.0, 1.0, float("inf"), 0.0]
    assert floored_topk(keep_slots(scores, kept), 3, [3, 3]).tolist() == [True, True, False, False, True, False]
    assert floored_topk(keep_slots(scores, kept), 4, [3, 3], floor=2).tolist() == [True, True, False, True, True, False]
    counts, generator = torch.zeros(6, dtype=torch.long), torch.Generator().manual_seed(0)
    for _ in range(8):  # the kept slots every step, the other four in turn
        mask = fair_mask(counts, 4, generator, kept=kept)
        assert bool(mask[kept].all()) and int(mask.sum()) == 4
        counts = fair_update(counts, mask)
    assert counts[~kept].tolist() == [0, 0, 0, 0]  # 8 steps x 2 free slots over 4: each used 4 times
