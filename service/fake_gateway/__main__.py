"""Command line entry point: ``python -m service.fake_gateway --port 8765``."""

from __future__ import annotations

import argparse

from service.fake_gateway.server import serve


def main(argv: list[str] | None = None) -> None:
    """Parse options and serve until interrupted."""
    parser = argparse.ArgumentParser(description="Run the fake ezrouter gateway.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        help="accept only this key (repeatable); default: any key starting with sk-",
    )
    parser.add_argument("--chunk-chars", type=int, default=8)
    parser.add_argument("--usage-placement", choices=["separate", "finish"], default="separate")
    parser.add_argument(
        "--real-output-tokens",
        action="store_true",
        help="report output_tokens = completion_tokens instead of the observed 0",
    )
    parser.add_argument("--cache-granularity", type=int, default=1)
    parser.add_argument("--reply-words", type=int, default=None)
    args = parser.parse_args(argv)
    serve(
        args.host,
        args.port,
        api_keys=args.api_keys,
        chunk_chars=args.chunk_chars,
        usage_placement=args.usage_placement,
        output_tokens_zero=not args.real_output_tokens,
        cache_granularity=args.cache_granularity,
        reply_words=args.reply_words,
    )


if __name__ == "__main__":
    main()
