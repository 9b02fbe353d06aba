# shellcheck shell=bash
# Sourced by cross/cross and cross/build-all: the settings `cross` runs with here.
# The toolchain cross mounts into the container is pinned by its version: that of the host's
# rustc unless CROSS_RUST_VERSION says otherwise (cross/build-all makes it known to rustup).
CROSS_RUST_VERSION=${CROSS_RUST_VERSION:-$(rustc --version | cut -d' ' -f2)}
# Podman with the settings this machine needs (cross/containers.conf), also where a `docker`
# client is on PATH without an engine behind it (cross would pick docker first).
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/cross/containers.conf}
export CROSS_CONTAINER_ENGINE=${CROSS_CONTAINER_ENGINE:-podman}
# cross 0.2.5 would otherwise try to add rust-src to the toolchain (a download).
export CROSS_CUSTOM_TOOLCHAIN=1
# Offline: the image is local (Cross.toml), the container has no network, and cargo takes the
# crates that `cargo fetch --locked` put in the host's CARGO_HOME (mounted at /cargo).
export CROSS_CONTAINER_OPTS="--pull=never --network=none -e CARGO_NET_OFFLINE=true"
# A target dir of its own (cross mounts it at /target): the host's build scripts and proc macros,
# linked on this host against glibc 2.36, would be found fresh by cargo in a shared one and fail
# to start in the image ("GLIBC_2.34 not found"). The binaries are
# target/cross/<triple>/release/edge-relay.
export CARGO_TARGET_DIR=${CROSS_TARGET_DIR:-$PWD/target/cross}
mkdir -p "$CARGO_TARGET_DIR"
# cross passes every CARGO_* variable into the container; the image sets the test runners for
# its own qemu-user and glibc, so the host's (if any) stay out.
unset CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER
