# The balance-api service image. PostgreSQL runs in its own container (see docker-compose.yml),
# reached through DATABASE_URL; migrations are applied at start-up.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    MIGRATIONS_DIR=/app/migrations

WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY loadtest ./loadtest
COPY migrations ./migrations
RUN pip install --no-cache-dir .

USER nobody
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --retries=5 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/api/health', timeout=2)"]
CMD ["balance-api", "serve"]
