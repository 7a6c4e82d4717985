#!/usr/bin/env bash
# Builds cube-test/nginx:latest, a backend that keeps its connections alive, for the ingress
# benchmark (`cube-bench ingress`): with busybox httpd, which closes every connection after its
# answer, the backend's accept queue is what every path measures.
#
# There is no registry to pull from, so the image is made from Debian's nginx package as
# installed on this machine: the binary, the shared libraries it links (as `ldd` lists them),
# the users its workers run as, and a configuration answering every GET with a short text
# over kept-alive connections; imported with `docker import`.
#
# Usage: scripts/build-nginx-image.sh [--force]      (installs Debian's nginx when missing)
set -euo pipefail

IMAGE=cube-test/nginx:latest

if [ "${1:-}" != "--force" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "image $IMAGE already present"
  exit 0
fi
if ! [ -x /usr/sbin/nginx ]; then
  apt-get install -y -qq nginx >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null && apt-get install -y -qq nginx >/dev/null
  }
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root/usr/sbin" "$root/etc/nginx" "$root/tmp" "$root/var/log/nginx" "$root/var/lib/nginx"
cp /usr/sbin/nginx "$root/usr/sbin/nginx"
# Every library the binary loads, at the path the loader looks for it.
for lib in $(ldd /usr/sbin/nginx | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/:/nonexistent\nnobody:x:65534:65534:nobody:/:/nonexistent\n' \
  > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
chmod 1777 "$root/tmp"
# One worker (the benchmark's host has few cores and the proxies compete for them); no access
# log; connections kept alive for as many requests as a client sends.
cat > "$root/etc/nginx/nginx.conf" <<'EOF'
daemon off;
user nobody nogroup;
worker_processes 1;
pid /tmp/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path /tmp; proxy_temp_path /tmp; fastcgi_temp_path /tmp;
  uwsgi_temp_path /tmp; scgi_temp_path /tmp;
  server {
    listen 80;
    location / { default_type text/plain; return 200 "hello from nginx\n"; }
  }
}
EOF

tar -C "$root" -c . | docker import \
  -c 'CMD ["/usr/sbin/nginx", "-e", "stderr", "-c", "/etc/nginx/nginx.conf"]' \
  - "$IMAGE" >/dev/null
# Check it answers before anyone measures with it.
name=cube-nginx-image-check-$$
docker run -d --rm --name "$name" -p 127.0.0.1::80 "$IMAGE" >/dev/null
trap 'docker rm -f "$name" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
port=$(docker port "$name" 80/tcp | head -1 | sed 's/.*://')
for _ in $(seq 50); do
  if answer=$(curl -fsS -m 2 "http://127.0.0.1:$port/" 2>/dev/null); then
    echo "image $IMAGE works: $answer"
    exit 0
  fi
  sleep 0.1
done
echo "image $IMAGE does not answer on port 80:" >&2
docker logs "$name" >&2 || true
exit 1
