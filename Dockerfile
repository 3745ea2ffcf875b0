FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY service ./service
COPY migrations ./migrations
# The charts extra too, so that `ezq usage --chart` works in the container.
RUN pip install '.[charts]' && useradd --system --uid 10001 ezq

USER ezq
# The worker is the default; the compose file runs `ezq db upgrade` in a one-shot service.
CMD ["ezq", "worker"]
