# syntax=docker/dockerfile:1
# image-cloner controller image.
#   docker build -t image-cloner:latest .
# Runs as uid/gid 10001 (matches runAsUser/runAsGroup and dind's --group=10001
# in manifests/deployment.yaml) and works with a read-only root filesystem.

# --- build: install the pinned dependencies into a virtualenv ---------------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt

# --- runtime -----------------------------------------------------------------
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 cloner \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin cloner
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY controller.py ./
COPY cloner/ ./cloner/
COPY config/ ./config/
# Byte-compile now: the root filesystem is read-only at runtime.
RUN python -m compileall -q /app
USER 10001:10001
EXPOSE 9090
ENTRYPOINT ["python", "controller.py"]
