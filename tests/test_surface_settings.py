"""Where the Anthropic surface is, and which surface a model gets by default."""

from __future__ import annotations

import pytest

from service.config import Settings


@pytest.mark.parametrize(
    ("base", "explicit", "expected"),
    [
        ("https://www.ezrouter.dev/v1", None, "https://www.ezrouter.dev/anthropic"),
        ("https://www.ezrouter.dev/v1/", None, "https://www.ezrouter.dev/anthropic"),
        ("http://proxy.internal/ezrouter/v1", None, "http://proxy.internal/ezrouter/anthropic"),
        ("http://127.0.0.1:8765", None, "http://127.0.0.1:8765/anthropic"),
        (
            "https://www.ezrouter.dev/v1",
            "https://other.test/anthropic/",
            "https://other.test/anthropic",
        ),
    ],
)
def test_anthropic_base_url(base: str, explicit: str | None, expected: str) -> None:
    """The Anthropic root is EZROUTER_BASE_URL's root + /anthropic unless a setting names it."""
    settings = Settings(ezrouter_base_url=base, ezrouter_anthropic_base_url=explicit)
    assert settings.anthropic_base_url == expected


def test_surface_defaults_first_match_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """EZQ_SURFACE_DEFAULTS maps model patterns to surfaces in order; no match means auto."""
    monkeypatch.setenv("EZQ_SURFACE_DEFAULTS", " claude-opus-*=openai, claude-*=anthropic ,")
    settings = Settings()
    assert settings.default_surface("claude-opus-4-7") == "openai"
    assert settings.default_surface("claude-haiku-4-5") == "anthropic"
    assert settings.default_surface("glm-5.1") == "auto"
    monkeypatch.delenv("EZQ_SURFACE_DEFAULTS")
    assert Settings().default_surface("claude-haiku-4-5") == "auto"
