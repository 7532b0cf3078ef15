"""Token budgets (pure): prompt + max_tokens within the context, max_tokens within the output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from soulstone.errors import Refusal
from soulstone.guard.clients import GatewayDecl, LimitsDecl


@dataclass(frozen=True)
class Budget:
    """The limits a request must fit."""

    max_context_tokens: int
    max_output_tokens: int


class BudgetExceeded(Refusal):
    """A request breaks its budget (400 TOKEN_BUDGET_EXCEEDED with the counts)."""

    def __init__(self, message: str, prompt_tokens: int | None, max_tokens: int | None,
                 limit: int) -> None:  # fmt: skip
        super().__init__(400, "TOKEN_BUDGET_EXCEEDED", message, prompt_tokens=prompt_tokens,
                         max_tokens=max_tokens, limit=limit)  # fmt: skip
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


LENGTH_FIELDS = ("max_tokens", "max_completion_tokens", "n_predict")
SEQUENCE_FIELDS = ("n", "best_of")
ASKING_FIELDS = frozenset((*LENGTH_FIELDS, *SEQUENCE_FIELDS))
BOUNDED_FIELDS = frozenset((*LENGTH_FIELDS, "min_tokens"))  # what `bound_output` may change


@dataclass(frozen=True)
class OutputAsk:
    """What a request asks the engine to generate, read from every field engines obey.

    `max_tokens` is the largest length any of OpenAI's `max_tokens` /
    `max_completion_tokens` or llama-server's `n_predict` asks for (None when
    none does): each must fit the budget. `least` is the smallest of them, what
    the engine is sent (None: `max_tokens`). `sequences` is how many answers
    are generated (`n`, `best_of`).
    """

    max_tokens: int | None
    sequences: int = 1
    least: int | None = None

    @property
    def to_send(self) -> int | None:
        """The length the engine gets: the tightest the request asked for."""
        return self.least if self.least is not None else self.max_tokens


def _positive(document: dict[str, Any], key: str, allow_unlimited: bool = False) -> int | None:
    value = document.get(key)
    if value is None or (allow_unlimited and value == -1):
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise Refusal(400, "BAD_MAX_TOKENS" if key not in SEQUENCE_FIELDS else "BAD_N",
                      f"`{key}` must be a positive integer", param=key)  # fmt: skip
    return value


NO_ASK = OutputAsk(None)


def output_ask(document: dict[str, Any]) -> OutputAsk:
    """The output a request asks for; Refusal 400 when a length or count is not a positive int."""
    if document.keys().isdisjoint(ASKING_FIELDS):
        return NO_ASK
    lengths = [_positive(document, k, allow_unlimited=k == "n_predict") for k in LENGTH_FIELDS]
    given = [n for n in lengths if n is not None]
    sequences = max((_positive(document, k) or 1 for k in SEQUENCE_FIELDS), default=1)
    if not given:
        return OutputAsk(None, sequences)
    return OutputAsk(max(given), sequences, min(given))


def bound_output(document: dict[str, Any], max_tokens: int) -> bool:
    """Make `max_tokens` the one length field, set to this; True when the body changed.

    Other length fields are removed (engines obey whichever they know), and
    `min_tokens` is clamped to it.
    """
    changed = document.get("max_tokens") != max_tokens
    document["max_tokens"] = max_tokens
    for key in LENGTH_FIELDS[1:]:
        if key in document:
            del document[key]
            changed = True
    least = document.get("min_tokens")
    if isinstance(least, int) and least > max_tokens:
        document["min_tokens"] = max_tokens
        changed = True
    return changed


def fit(prompt_tokens: int | None, ask: OutputAsk, budget: Budget) -> int:
    """The `max_tokens` to send for each answer; BudgetExceeded when the request cannot fit.

    All answers together (`n` of them) must fit `max_output_tokens`, and the
    prompt plus one answer `max_context_tokens`, for every length field asked;
    the smallest is sent. Without a prompt count (an engine that cannot
    tokenize) only the output limit is checked.
    """
    max_tokens, sequences, sent = ask.max_tokens, ask.sequences, ask.to_send
    output = budget.max_output_tokens
    if max_tokens is not None and max_tokens * sequences > output:
        asked = f"max_tokens {max_tokens}" + (f" × n {sequences}" if sequences > 1 else "")
        raise BudgetExceeded(f"{asked} exceeds max_output_tokens {output}", prompt_tokens,
                             max_tokens, output)  # fmt: skip
    if sequences > output:
        raise BudgetExceeded(f"n {sequences} exceeds max_output_tokens {output}", prompt_tokens,
                             max_tokens, output)  # fmt: skip
    if prompt_tokens is None:
        return sent if sent is not None else output // sequences
    if max_tokens is None:
        remaining = budget.max_context_tokens - prompt_tokens
        if remaining < 1:
            raise BudgetExceeded(
                f"the prompt's {prompt_tokens} tokens leave no room for an answer within "
                f"max_context_tokens {budget.max_context_tokens}",
                prompt_tokens, 0, budget.max_context_tokens,
            )  # fmt: skip
        return min(output // sequences, remaining)
    if prompt_tokens + max_tokens > budget.max_context_tokens:
        raise BudgetExceeded(
            f"prompt_tokens {prompt_tokens} + max_tokens {max_tokens} exceeds "
            f"max_context_tokens {budget.max_context_tokens}",
            prompt_tokens, max_tokens, budget.max_context_tokens,
        )  # fmt: skip
    return sent if sent is not None else max_tokens
