#!/usr/bin/env bash
# deploy/stand-in-base-images.sh: local stand-ins for deploy/Dockerfile's two
# base images, for a machine that cannot pull from container registries but
# reaches Debian's packages and the crate registry, so that the multi-stage
# Dockerfile itself can be built and run there:
#
#   deploy/stand-in-base-images.sh
#   podman build --pull=never -f deploy/Dockerfile -t tandem-relay:multistage .
#   deploy/build-local-image.sh --smoke-only --tag localhost/tandem-relay:multistage
#
# docker.io/library/rust:1.90-bookworm  <- Debian bookworm (debootstrap, minbase, gcc,
#     libc6-dev, ca-certificates and this machine's CA bundle) + this machine's stable
#     Rust toolchain (its version, not necessarily 1.90), CARGO_HOME=/usr/local/cargo
# gcr.io/distroless/static-debian12:nonroot  <- scratch + /etc/passwd and /etc/group
#     with "nonroot" (65532), /etc/nsswitch.conf, /tmp (1777); user 65532
#
# They are not the real images (the real distroless one also has CA
# certificates and tzdata; the relay needs neither). Needs root, podman (or
# ENGINE=docker), debootstrap (apt-get install debootstrap) and rustup's
# stable toolchain. Takes a few minutes and about 1.5 GB.
set -euo pipefail

engine=${ENGINE:-podman}
work=$(mktemp -d /tmp/tandem-stand-in.XXXXXX)
trap 'rm -rf "$work"' EXIT

root="$work/rust"
# debootstrap's default mirror, or DEBIAN_MIRROR.
# shellcheck disable=SC2086 # empty when unset
debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates bookworm "$root" \
    ${DEBIAN_MIRROR:-} >"$work/debootstrap.log"
# The machine's CA bundle: the crate registry may be reached through a proxy that
# only the machine's bundle trusts.
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
toolchain=$(rustup toolchain list | sed -n 's/^\(stable-[^ ]*\).*/\1/p' | head -1)
mkdir -p "$root/usr/local/rust" "$root/usr/local/cargo"
tar -C "$(rustup run "$toolchain" rustc --print sysroot)" --exclude=./share/doc -cf - . |
    tar -C "$root/usr/local/rust" -xf -
tar -C "$root" -cf - . | "$engine" import \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' - docker.io/library/rust:1.90-bookworm

d="$work/distroless"
mkdir -p "$d/etc" "$d/tmp" "$d/home/nonroot"
chmod 1777 "$d/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$d/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$d/etc/group"
printf 'hosts: files dns\n' >"$d/etc/nsswitch.conf"
chown 65532:65532 "$d/home/nonroot"
tar -C "$d" -cf - . | "$engine" import --change 'USER 65532' - gcr.io/distroless/static-debian12:nonroot
"$engine" images | grep -E 'rust|distroless'
