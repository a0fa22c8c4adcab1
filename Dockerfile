# One image for web and workers (docker-compose.yml). CPU torch by default; the gpu worker's host
# provides the NVIDIA runtime (install a CUDA torch build in a derived image for real GPU speed).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY catalog_review catalog_review
COPY ml_worker ml_worker
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 && pip install .
COPY . .
RUN DATABASE_URL=postgres://x@localhost/x CELERY_BROKER_URL=redis://localhost SECRET_KEY=build \
    python manage.py collectstatic --noinput
EXPOSE 8000
