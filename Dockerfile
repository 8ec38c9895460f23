# dispatchd in a container.
#
#   docker build -t dispatchd .
#   docker run -p 8080:8080 -v dispatchd-data:/var/lib/dispatchd dispatchd
#
# With no database configured it keeps the embedded SQLite file (and its generated token key)
# in the volume /var/lib/dispatchd. Configure it by environment, DISPATCHD__SECTION__KEY as
# everywhere (config.toml lists every setting): e.g. DISPATCHD__DATABASE__URL,
# DISPATCHD__REDIS__URL, DISPATCHD__AUTH__JWT_SECRET. deploy/compose.yaml runs two nodes behind
# Nginx with Postgres, Redis, Prometheus and Grafana. deploy/check-container.py checks this file
# and runs the binary the way this image runs it.

# ---- build ----------------------------------------------------------------------------------
FROM rust:1-slim-bookworm AS build
WORKDIR /src

# Dependencies first, compiled against empty crates: this layer is rebuilt only when the
# manifests, the lock file or the patched crates (vendor/) change. The workspace's other member,
# the benchmarks (bench/), is never built here; its manifest and empty targets let cargo load
# the workspace.
COPY Cargo.toml Cargo.lock ./
COPY vendor vendor
COPY bench/Cargo.toml bench/Cargo.toml
RUN mkdir -p src bench/src bench/benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs bench/src/lib.rs \
    && echo 'fn main() {}' > bench/benches/grid.rs \
    && echo 'fn main() {}' > build.rs \
    && cargo build --release --locked -p dispatchd --bin dispatchd \
    && rm -rf src build.rs

# What compiling dispatchd reads: its sources, the migrations (sqlx::migrate!), the default
# configuration, the console's files and the API docs (include_str!/include_bytes!).
COPY build.rs config.toml ./
COPY src src
COPY migrations migrations
COPY console console
COPY docs/openapi.json docs/api.html docs/
# The stub build left fingerprints newer than the sources just copied: forget them, or cargo
# would keep the empty binary.
RUN rm -rf target/release/.fingerprint/dispatchd-* \
    && cargo build --release --locked -p dispatchd --bin dispatchd \
    && install -D -m 0755 target/release/dispatchd /out/dispatchd

# ---- run ------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# CA certificates for the payment gateways, FCM and SMTP over TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 dispatchd \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/dispatchd --no-create-home \
        --shell /usr/sbin/nologin dispatchd \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/dispatchd

COPY --from=build /out/dispatchd /usr/local/bin/dispatchd

# The healthcheck below reads the same settings, so a port changed here (or by `docker run -e`)
# is the port it asks. Settings given in a file (`--config`) instead are not seen by it: give
# the healthcheck's own CMD the same `--config`, or prefer the environment.
ENV DISPATCHD__SERVER__ADDR=0.0.0.0:8080 \
    DISPATCHD__DATABASE__SQLITE_PATH=/var/lib/dispatchd/dispatchd.db
VOLUME ["/var/lib/dispatchd"]
WORKDIR /var/lib/dispatchd
USER 10001:10001
EXPOSE 8080

# On SIGTERM the server stops accepting, lets requests in flight finish (at most
# server.shutdown_timeout_secs, 20 s) and exits 0. `docker stop` waits 10 s before it kills:
# an idle node is gone well within that; give a busy one `--stop-timeout 30` (compose:
# stop_grace_period, as deploy/compose.yaml does).
STOPSIGNAL SIGTERM
# GET /healthz on the port above, no curl needed: exit 0 on 200, 1 otherwise.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["dispatchd", "healthcheck"]

ENTRYPOINT ["dispatchd"]
CMD ["serve"]
