# AgentOps Studio: the gateway (proxy on 8080, UI/API on 8081) in a slim image, as a non-root
# user. It listens on 0.0.0.0, so it refuses to start without AGENTOPS_UI_TOKEN.
#   docker build -t agentops-studio .                       (add --build-arg EXTRAS=all for
#   docker run -e AGENTOPS_UI_TOKEN=... -p 8080:8080 -p 8081:8081 agentops-studio   W&B and HF)

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY webui ./webui
COPY templates ./templates
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM python:3.12-slim
ARG EXTRAS=otel,prometheus
RUN useradd --system --uid 10001 --create-home agentops \
    && mkdir /data && chown agentops /data
COPY --from=build /dist /dist
RUN python -m venv /opt/agentops \
    && /opt/agentops/bin/pip install --no-cache-dir "$(ls /dist/*.whl)[${EXTRAS}]" \
    && rm -rf /dist
ENV PATH=/opt/agentops/bin:$PATH
ENV PYTHONUNBUFFERED=1
ENV AGENTOPS_HOST=0.0.0.0
ENV AGENTOPS_UI_HOST=0.0.0.0
ENV AGENTOPS_DB=sqlite:///data/agentops.db
ENV AGENTOPS_SPOOL_DIR=/data/spool
USER agentops
WORKDIR /data
VOLUME /data
EXPOSE 8080 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 CMD ["agentops-studio", "healthcheck"]
ENTRYPOINT ["agentops-studio", "serve"]
