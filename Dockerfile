# One image for web, worker and monitor; docker-compose.yml picks the command.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY web ./web
COPY clients/js ./clients/js
COPY tasks ./tasks
COPY jobcast ./jobcast
RUN pip install .
RUN useradd --create-home jobcast && mkdir -p /data/media && chown jobcast /data/media
USER jobcast
ENV JOBCAST_MEDIA_DIR=/data/media
EXPOSE 8000
