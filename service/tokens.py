"""Turning the gateway's usage object into token counts we can add up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """Normalised usage. Cached and reasoning tokens are subsets, not extra buckets."""

    prompt_tokens: int
    cached_tokens: int
    uncached_prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int | None
    total_tokens: int
    issues: list[str] = field(default_factory=list)
    # Prompt tokens written to the prompt cache: a part of uncached_prompt_tokens.
    cache_write_tokens: int = 0

    def summary(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "total_tokens": self.total_tokens,
        }


def _count(raw: dict[str, Any], key: str, issues: list[str]) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        issues.append(f"{key} is not a non-negative integer: {value!r}")
        return None
    return value


def normalise_usage(raw: dict[str, Any], *, surface: str = "openai") -> TokenCounts:
    """The counts of a usage object from either surface (see the two readers below)."""
    if surface == "anthropic":
        return normalise_anthropic_usage(raw)
    return normalise_openai_usage(raw)


def normalise_anthropic_usage(raw: dict[str, Any]) -> TokenCounts:
    """Read an Anthropic usage object into the same counts and invariants.

    Anthropic's ``input_tokens`` excludes the tokens read from and written to the cache, so
    ``prompt_tokens = input_tokens + cache_read_input_tokens + cache_creation_input_tokens``;
    cached tokens are the cache reads, and cache writes are a part of the uncached ones.
    ``output_tokens`` is authoritative on this surface (thinking included).
    """
    issues: list[str] = []
    plain = _count(raw, "input_tokens", issues)
    read = _count(raw, "cache_read_input_tokens", issues) or 0
    written = _count(raw, "cache_creation_input_tokens", issues) or 0
    completion = _count(raw, "output_tokens", issues)
    if plain is None:
        issues.append("input_tokens missing")
        plain = 0
    if completion is None:
        issues.append("output_tokens missing")
        completion = 0
    prompt = plain + read + written
    return TokenCounts(
        prompt_tokens=prompt,
        cached_tokens=read,
        uncached_prompt_tokens=plain + written,
        completion_tokens=completion,
        reasoning_tokens=None,
        total_tokens=prompt + completion,
        issues=issues,
        cache_write_tokens=written,
    )


def normalise_openai_usage(raw: dict[str, Any]) -> TokenCounts:
    """Read the authoritative OpenAI-named fields and check how they relate.

    ``output_tokens`` is never read: ezrouter has been seen sending 0 there while
    ``completion_tokens`` was not. What does not add up is recorded in ``issues`` and the
    raw object is kept, rather than quietly corrected.
    """
    issues: list[str] = []
    prompt = _count(raw, "prompt_tokens", issues)
    completion = _count(raw, "completion_tokens", issues)
    total = _count(raw, "total_tokens", issues)
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    cached = (
        _count(prompt_details, "cached_tokens", issues)
        if isinstance(prompt_details, dict)
        else None
    )
    reasoning = (
        _count(completion_details, "reasoning_tokens", issues)
        if isinstance(completion_details, dict)
        else None
    )
    if prompt is None:
        issues.append("prompt_tokens missing")
        prompt = 0
    if completion is None:
        issues.append("completion_tokens missing")
        completion = 0
    if total is None:
        issues.append("total_tokens missing; prompt + completion used")
        total = prompt + completion
    elif total != prompt + completion:
        issues.append(
            f"total_tokens {total} != prompt_tokens + completion_tokens {prompt + completion}"
        )
    cached = cached or 0
    if cached > prompt:
        issues.append(f"cached_tokens {cached} > prompt_tokens {prompt}")
    # new-api names cache writes this way when an upstream reports them; absent, they are 0.
    written = (
        _count(prompt_details, "cached_creation_tokens", issues)
        if isinstance(prompt_details, dict)
        else None
    ) or 0
    if written > max(prompt - cached, 0):
        issues.append(f"cached_creation_tokens {written} > uncached prompt tokens")
        written = max(prompt - cached, 0)
    if reasoning is not None and reasoning > completion:
        issues.append(f"reasoning_tokens {reasoning} > completion_tokens {completion}")
    return TokenCounts(
        prompt_tokens=prompt,
        cached_tokens=cached,
        uncached_prompt_tokens=max(prompt - cached, 0),
        completion_tokens=completion,
        reasoning_tokens=reasoning,
        total_tokens=total,
        issues=issues,
        cache_write_tokens=written,
    )
