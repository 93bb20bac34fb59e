FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps --ignore-requires-python opa-golib-python-bindings==0.4.4
COPY policies ./policies
COPY tenants ./tenants
RUN useradd --uid 10001 llm-authz && mkdir -p /var/lib/llm-authz/audit && chown llm-authz /var/lib/llm-authz/audit
USER 10001
EXPOSE 9191 9192 9464
ENTRYPOINT ["llm-authz"]
CMD ["serve", "--listen", "0.0.0.0:9191", "--metrics-listen", "0.0.0.0:9464", "--audit-dir", "/var/lib/llm-authz/audit"]
