# image-cloner controller image.
#   make image                      (docker build -t image-cloner:latest .)
#   make image IMAGE=ghcr.io/example/image-cloner:0.1.0
# No `# syntax=` line: BuildKit would fetch a frontend image from Docker Hub
# for it, so an offline build would fail.
# Runs as uid/gid 10001 (matches runAsUser/runAsGroup and dind's --group=10001
# in manifests/base/deployment.yaml) and works with a read-only root filesystem.
#
# BASE_IMAGE: any Debian bookworm image with python3 (3.11) and the venv
# module. The default is the public one; the cluster tests pass a base built
# offline from a debootstrap rootfs (hack/base-image.sh).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- build: install the pinned dependencies into a virtualenv ---------------
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt

# --- runtime -----------------------------------------------------------------
FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# skopeo: the registry-to-registry copy backend (no Docker engine needed).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends skopeo \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 cloner \
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
