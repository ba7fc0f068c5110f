# The Atlas server image: every server service is this image with a different `atlas-server` subcommand
# (docker-compose.yml, deploy/kubernetes/). Dependencies are the exact versions in constraints.txt; the
# agent's are not installed. Runs as uid 10001, so Kubernetes' runAsNonRoot can check it.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY constraints.txt ./
COPY contract/ contract/
COPY services/ services/
RUN python -m venv /opt/atlas \
 && /opt/atlas/bin/pip install -c constraints.txt ./contract ./services \
 && /opt/atlas/bin/pip check

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 atlas \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin atlas
COPY --from=build /opt/atlas /opt/atlas
# Bytecode was compiled at install time; nothing is written at run time, so the root filesystem can be read-only.
ENV PATH=/opt/atlas/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8768 8769 8770
ENTRYPOINT ["atlas-server"]
CMD ["ingest"]
