"""Normalising the gateway's usage object."""

from __future__ import annotations

from service.tokens import normalise_usage


def test_authoritative_fields_are_used_and_output_tokens_ignored() -> None:
    """completion_tokens is used even when output_tokens says 0."""
    counts = normalise_usage(
        {
            "prompt_tokens": 25231,
            "completion_tokens": 120,
            "total_tokens": 25351,
            "prompt_tokens_details": {"cached_tokens": 24901},
            "completion_tokens_details": {"reasoning_tokens": 40},
            "input_tokens": 25231,
            "output_tokens": 0,
        }
    )
    assert counts.completion_tokens == 120
    assert counts.cached_tokens == 24901
    assert counts.uncached_prompt_tokens == 330
    assert counts.reasoning_tokens == 40
    assert counts.total_tokens == 25351
    assert counts.issues == []


def test_inconsistent_usage_is_flagged_not_fixed() -> None:
    """A total that does not add up and cached > prompt are reported, values kept."""
    counts = normalise_usage(
        {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 99,
            "prompt_tokens_details": {"cached_tokens": 12},
        }
    )
    assert counts.total_tokens == 99
    assert counts.cached_tokens == 12
    assert len(counts.issues) == 2


def test_missing_fields_are_flagged() -> None:
    """A usage object without counts is flagged rather than read as zeros silently."""
    counts = normalise_usage({"output_tokens": 7})
    assert counts.completion_tokens == 0
    assert any("completion_tokens missing" in issue for issue in counts.issues)
