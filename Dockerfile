# The Atlas server image: every server service is this image with a different `atlas-server` subcommand.
FROM python:3.11-slim AS build
WORKDIR /src
COPY constraints.txt ./
COPY contract/ contract/
COPY services/ services/
RUN python -m venv /opt/atlas \
 && /opt/atlas/bin/pip install --no-cache-dir -c constraints.txt ./contract ./services

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin atlas
COPY --from=build /opt/atlas /opt/atlas
ENV PATH=/opt/atlas/bin:$PATH PYTHONUNBUFFERED=1
USER atlas
EXPOSE 8768
ENTRYPOINT ["atlas-server"]
CMD ["ingest"]
