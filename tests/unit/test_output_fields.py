"""Output length fields (pure): every one must fit the budget, the tightest is sent."""

from __future__ import annotations

import pytest

from soulstone.guard.budget import Budget, BudgetExceeded, OutputAsk, bound_output, fit, output_ask

BUDGET = Budget(max_context_tokens=8192, max_output_tokens=2048)


def test_the_tightest_length_field_is_sent_and_the_others_removed() -> None:
    document = {"max_tokens": 5, "n_predict": 400}
    ask = output_ask(document)
    assert ask == OutputAsk(400, 1, 5)
    sent = fit(10, ask, BUDGET)
    assert sent == 5
    assert bound_output(document, sent)
    assert document == {"max_tokens": 5}
    assert fit(None, output_ask({"max_completion_tokens": 7, "max_tokens": 30}), BUDGET) == 7


def test_every_length_field_must_fit_the_budget() -> None:
    with pytest.raises(BudgetExceeded) as caught:
        fit(10, output_ask({"max_completion_tokens": 10, "max_tokens": 5000}), BUDGET)
    assert (caught.value.max_tokens, caught.value.limit) == (5000, 2048)
    with pytest.raises(BudgetExceeded):
        fit(None, output_ask({"max_tokens": 600, "n": 4}), BUDGET)
    assert fit(10, output_ask({"n_predict": -1}), BUDGET) == 2048  # -1: unlimited, bounded here
