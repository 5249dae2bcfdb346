# Pooldesk: the app, the `pooldesk` command and the workers in one image.
# Production: set POOLDESK_ENV=production, POOLDESK_DATABASE_URL (PostgreSQL), POOLDESK_REDIS_URL,
# POOLDESK_ENCRYPTION_KEYS (`pooldesk new-key`), POOLDESK_PAYMENT_GATEWAY=stripe with POOLDESK_STRIPE_API_KEY
# and POOLDESK_SECRET_KEY (32+ characters); run `pooldesk migrate` once, then the app and `pooldesk worker` processes.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv/pooldesk

COPY requirements.txt pyproject.toml README.md ./
RUN pip install -r requirements.txt
COPY . .
RUN pip install --no-deps -e . && useradd --system --home /srv/pooldesk pooldesk && chown -R pooldesk data
USER pooldesk

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health')"
CMD ["streamlit", "run", "app/main.py", "--server.port=8501", "--server.address=0.0.0.0", "--server.headless=true"]
