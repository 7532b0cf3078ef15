"""Token budgets (pure): prompt + max_tokens within the context, max_tokens within the output."""

from __future__ import annotations

from dataclasses import dataclass

from soulstone.guard.clients import GatewayDecl, LimitsDecl


@dataclass(frozen=True)
class Budget:
    """The limits a request must fit."""

    max_context_tokens: int
    max_output_tokens: int


class BudgetExceeded(Exception):
    """A request breaks its budget; carries the body fields of the 400."""

    def __init__(self, message: str, prompt_tokens: int | None, max_tokens: int | None,
                 limit: int) -> None:  # fmt: skip
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.limit = limit


def budget_for(gateway: GatewayDecl, *more: LimitsDecl | None) -> Budget:
    """The tightest of the gateway's, the soulstone's and the client's limits."""
    context, output = gateway.max_context_tokens, gateway.max_output_tokens
    for limits in more:
        if limits is None:
            continue
        if limits.max_context_tokens is not None:
            context = min(context, limits.max_context_tokens)
        if limits.max_output_tokens is not None:
            output = min(output, limits.max_output_tokens)
    return Budget(context, output)


def fit(prompt_tokens: int | None, max_tokens: int | None, budget: Budget) -> int | None:
    """Check a request; return the `max_tokens` to send when it had none (else None).

    Without a prompt count (an engine that cannot tokenize), only the output
    limit is checked.
    """
    if max_tokens is not None and max_tokens > budget.max_output_tokens:
        raise BudgetExceeded(
            f"max_tokens {max_tokens} exceeds max_output_tokens {budget.max_output_tokens}",
            prompt_tokens, max_tokens, budget.max_output_tokens,
        )  # fmt: skip
    if prompt_tokens is None:
        return None if max_tokens is not None else budget.max_output_tokens
    if max_tokens is None:
        remaining = budget.max_context_tokens - prompt_tokens
        if remaining < 1:
            raise BudgetExceeded(
                f"the prompt's {prompt_tokens} tokens leave no room for an answer within "
                f"max_context_tokens {budget.max_context_tokens}",
                prompt_tokens, 0, budget.max_context_tokens,
            )  # fmt: skip
        return min(budget.max_output_tokens, remaining)
    if prompt_tokens + max_tokens > budget.max_context_tokens:
        raise BudgetExceeded(
            f"prompt_tokens {prompt_tokens} + max_tokens {max_tokens} exceeds "
            f"max_context_tokens {budget.max_context_tokens}",
            prompt_tokens, max_tokens, budget.max_context_tokens,
        )  # fmt: skip
    return None
