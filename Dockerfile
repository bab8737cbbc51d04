# rabbitsocks, built from this repository: `docker build -t rabbitsocks .`, or
# `docker compose up` to run it next to RabbitMQ (docker-compose.yml).
#
#   docker run -p 8080:8080 rabbitsocks                     memory broker, demo page on :8080
#   docker run -e RABBITSOCKS_AMQP_URL=amqp://u:p@host:5672/ -p 8080:8080 rabbitsocks
#
# The configuration is config/docker.yaml, at /etc/rabbitsocks/docker.yaml: mount another
# file there, or pass `rabbitsocks serve -c FILE` as the command.

# 1. The demo page and the socket.io-client it uses, from npm as demo/package-lock.json pins.
FROM node:20-slim AS demo
WORKDIR /src
COPY demo/package.json demo/package-lock.json demo/index.html demo/
COPY scripts/build-demo scripts/
RUN scripts/build-demo --omit-dev

# 2. A wheel of rabbitsocks, with the demo page inside.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY config/default.yaml config/
COPY callbacks/ callbacks/
COPY rabbitsocks/ rabbitsocks/
COPY --from=demo /src/rabbitsocks/demo/ rabbitsocks/demo/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# 3. The image: the wheel with uvloop, run by an unprivileged user.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install "$(echo /tmp/wheels/rabbitsocks-*.whl)[speed]" \
    && rm -rf /tmp/wheels \
    && groupadd --system --gid 10001 rabbitsocks \
    && useradd --system --uid 10001 --gid rabbitsocks --no-create-home \
        --shell /usr/sbin/nologin rabbitsocks
COPY config/docker.yaml /etc/rabbitsocks/docker.yaml
USER 10001:10001
# 8080: browsers (WebSocket, Socket.IO, the demo page); 8081: RPC HTTP, for back ends;
# 8082: admin (/metrics, /health, /ready), for operators.
EXPOSE 8080 8081 8082
# SIGTERM (docker stop) shuts down gracefully: connections get 1001 "going away".
CMD ["rabbitsocks", "serve", "-c", "/etc/rabbitsocks/docker.yaml"]
