#!/usr/bin/env bash
# Makes sure the Protocol Buffers compiler is there: building Cube's etcd client (etcd-client,
# over gRPC) compiles etcd's .proto files with `protoc` and Google's well-known types. On
# Debian or Ubuntu it installs them (packages protobuf-compiler and libprotobuf-dev) when
# missing, as root or with sudo; elsewhere it says what to install. `PROTOC` pointing at a
# protoc binary is honoured, as by the build itself.
#
# Usage: scripts/ensure-protoc.sh
set -euo pipefail

have_protoc() {
  local protoc=${PROTOC:-protoc}
  command -v "$protoc" >/dev/null 2>&1 || return 1
  # The well-known types: next to the binary's prefix, or where Debian puts them.
  [ -n "${PROTOC_INCLUDE:-}" ] || [ -e /usr/include/google/protobuf/descriptor.proto ] ||
    [ -e "$(dirname "$(command -v "$protoc")")/../include/google/protobuf/descriptor.proto" ]
}

if have_protoc; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  run() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
  echo "installing protoc (protobuf-compiler, libprotobuf-dev) to build the etcd client..." >&2
  if run apt-get install -y -qq protobuf-compiler libprotobuf-dev >/dev/null 2>&1 ||
     { run apt-get update -qq >/dev/null && run apt-get install -y -qq protobuf-compiler libprotobuf-dev >/dev/null; }; then
    have_protoc && exit 0
  fi
fi
echo "error: building Cube needs protoc and Google's well-known .proto files: install your" >&2
echo "       system's protobuf compiler (Debian: apt-get install protobuf-compiler libprotobuf-dev)," >&2
echo "       or set PROTOC to a protoc binary." >&2
exit 1
