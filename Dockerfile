# chatsvc: gunicorn (gevent workers) as a non-root user. Migrations are an explicit step:
#   docker run --rm -e DATABASE_URL=... chatsvc flask --app chatsvc db upgrade
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    CHATSVC_ENV=production HOST=0.0.0.0 PORT=8000
WORKDIR /app

COPY setup.cfg pyproject.toml constraints.txt ./
# The dependencies first, from setup.cfg alone (no package, an empty README): this layer is
# reused until they change, so a code or README change rebuilds in seconds.
RUN touch README.md \
    && pip install --no-compile -c constraints.txt . \
    && groupadd --gid 10001 chatsvc \
    && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home --home-dir /app \
       --shell /usr/sbin/nologin chatsvc
COPY README.md ./
COPY chatsvc ./chatsvc
RUN pip install --no-compile --no-deps --force-reinstall .
COPY migrations ./migrations
COPY docs ./docs
COPY wsgi.py gunicorn.conf.py ./

# Numeric, so that Kubernetes' runAsNonRoot can check it (deploy/k8s/deployment.yaml).
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/health/live', timeout=2)"]
CMD ["gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"]
