"""What a council run reports as it goes, and what it adds up to (pure values)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from soulstone.council.route import Verdict


@dataclass(frozen=True, slots=True)
class PersonaAnswer:
    """One persona's answer in one round, or why there is none (`error`)."""

    persona: str
    model: str
    content: str | None
    ms: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None

    def document(self) -> dict[str, Any]:
        """The answer as the council API shows it."""
        return {"persona": self.persona, "model": self.model, "content": self.content,
                "ms": self.ms, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "error": self.error}  # fmt: skip


@dataclass(slots=True)
class Round:
    """One round: who was routed to, their answers, the draft and the veto's verdict."""

    number: int
    routed: tuple[str, ...]
    fallback: str | None = None  # why the router's choice was replaced by every persona
    answers: list[PersonaAnswer] = field(default_factory=list)
    draft: str | None = None
    veto: Verdict | None = None

    def document(self) -> dict[str, Any]:
        """The round as the council API shows it."""
        veto = None if self.veto is None else {"verdict": self.veto.verdict,
                                               "reason": self.veto.reason}  # fmt: skip
        return {"round": self.number, "routed": list(self.routed), "fallback": self.fallback,
                "answers": [a.document() for a in self.answers], "draft": self.draft,
                "veto": veto}  # fmt: skip


@dataclass(slots=True)
class Usage:
    """Tokens of every persona call of a run, added up."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, prompt: int | None, completion: int | None) -> None:
        """Count one call's usage."""
        self.prompt_tokens += prompt or 0
        self.completion_tokens += completion or 0

    def document(self) -> dict[str, int]:
        """OpenAI's usage object."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Routed:
    """A round begins: these personas were chosen (every one, when `fallback` says why)."""

    round: int
    personas: tuple[str, ...]
    fallback: str | None


@dataclass(frozen=True, slots=True)
class Answered:
    """A persona finished (answered or failed) in a round."""

    round: int
    answer: PersonaAnswer


@dataclass(frozen=True, slots=True)
class Drafted:
    """The aggregator's draft, for the veto persona to judge."""

    round: int
    persona: str
    content: str


@dataclass(frozen=True, slots=True)
class Judged:
    """The veto persona's verdict on a round's draft."""

    round: int
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class FinalText:
    """A piece of the final answer, as the aggregator generates it."""

    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The run's whole result: the council API's answer."""

    result: dict[str, Any]


CouncilEvent = Routed | Answered | Drafted | Judged | FinalText | Finished
