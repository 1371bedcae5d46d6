# syntax=docker/dockerfile:1
#
# Mapperkit: one image for `mapperkit run` (files or --kubeedge), `mapperkit twin serve`
# and `mapperkit sim`.
#
#   docker build -t mapperkit:0.1.0-modbus .                                 # Modbus
#   docker build --build-arg EXTRAS=opcua -t mapperkit:0.1.0-opcua .
#   docker build --build-arg EXTRAS=modbus,opcua,ble -t mapperkit:0.1.0 .
#
# EXTRAS names the protocol extras to install (modbus, opcua, ble, sinks), comma
# separated; the KubeEdge DMI support (grpcio, protobuf) is always in.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: resolve and install into a self-contained virtualenv ----------------------
FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=modbus
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mapper_sdk ./mapper_sdk
COPY mappers ./mappers
COPY twin ./twin
COPY simulators ./simulators
RUN python -m venv /opt/mapperkit \
    && /opt/mapperkit/bin/pip install --upgrade pip \
    && /opt/mapperkit/bin/pip install ".[kubeedge,${EXTRAS}]" \
    && /opt/mapperkit/bin/pip uninstall --yes pip \
    && /opt/mapperkit/bin/python -m compileall -q /opt/mapperkit/lib \
    && /opt/mapperkit/bin/mapperkit drivers

# ---- runtime: the virtualenv on a clean slim base, as an unprivileged user ------------
FROM ${PYTHON_IMAGE}
ARG EXTRAS=modbus
LABEL org.opencontainers.image.title="mapperkit" \
      org.opencontainers.image.description="Device-protocol mappers and a device twin for edge nodes (KubeEdge-compatible)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.mapperkit.extras="${EXTRAS}"
RUN groupadd --system --gid 10001 mapperkit \
    && useradd --system --uid 10001 --gid mapperkit --no-create-home \
       --home-dir /var/lib/mapperkit --shell /usr/sbin/nologin mapperkit \
    && install -d -o mapperkit -g mapperkit -m 0750 /var/lib/mapperkit
COPY --from=build /opt/mapperkit /opt/mapperkit
ENV PATH=/opt/mapperkit/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /var/lib/mapperkit
USER 10001:10001
# 7777: the management API of `mapperkit run`; 7778: /healthz and /readyz of --kubeedge.
EXPOSE 7777 7778
ENTRYPOINT ["mapperkit"]
CMD ["--help"]
