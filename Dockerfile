# syntax=docker/dockerfile:1
# ramp in a small image: a build stage (the crates fetched in a layer of their own, then the
# binary built with profile-guided optimisation), then Debian slim with the binary, run as a
# non-root user.
#
#   config  /etc/ramp/ramp.yaml (mount a directory there to edit it live: hot reload)
#   state   /var/lib/ramp        (the state file, or the fleet's local cache)
#   ports   8080 the proxy, 9100 metrics, the status page, /healthz and /readyz

FROM rust:1.95-slim-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The release binary is built with profile-guided optimisation (deploy/build-release.sh): an
# instrumented build is trained on wrk and h2load traffic, then built again with the profile.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends wrk nghttp2-client openssl \
 && rm -rf /var/lib/apt/lists/* \
 && rustup component add llvm-tools
WORKDIR /src
# The crates in a layer of their own, fetched again only when Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/decide.rs \
 && cargo fetch --locked \
 && rm -rf src benches
COPY src ./src
COPY benches ./benches
COPY deploy/build-release.sh ./deploy/
# The line tables stay in the build (a profile of it names lines); the image's copy keeps only
# the symbols a backtrace names functions by: 13 MB rather than 51.
RUN deploy/build-release.sh \
 && cp "target/$(rustc -vV | sed -n 's/^host: //p')/release/ramp" /src/ramp \
 && objcopy --strip-debug /src/ramp

FROM debian:bookworm-slim
# ca-certificates: the system roots for https:// upstreams and etcd endpoints.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ramp \
 && useradd --system --uid 10001 --gid ramp --home-dir /var/lib/ramp --shell /usr/sbin/nologin ramp \
 && mkdir -p /etc/ramp /var/lib/ramp /run/ramp \
 && chown ramp:ramp /var/lib/ramp /run/ramp
COPY --from=build /src/ramp /usr/local/bin/ramp
COPY deploy/docker/ramp.yaml /etc/ramp/ramp.yaml
USER 10001:10001
EXPOSE 8080 9100
VOLUME ["/var/lib/ramp"]
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s \
  CMD ["/usr/local/bin/ramp", "probe", "http://127.0.0.1:9100/healthz"]
ENTRYPOINT ["/usr/local/bin/ramp"]
CMD ["serve", "--config", "/etc/ramp/ramp.yaml", "--log-format", "json"]
