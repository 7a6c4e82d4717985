#!/usr/bin/env bash
# Builds the Docker image the tests run: cube-test/busybox:latest.
#
# There is no registry to pull from, so the image is made from Debian's statically linked
# busybox: one binary plus a symlink per applet (relative links: `busybox --install -s` would
# write absolute links to the host's path), imported with `docker import`.
#
# Usage: scripts/build-test-image.sh [--force]
set -euo pipefail

IMAGE=cube-test/busybox:latest

if [ "${1:-}" != "--force" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "test image $IMAGE already present"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A static busybox: the installed one if it is static, else the Debian package's.
busybox=""
if [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; then
  busybox=/bin/busybox
else
  (cd "$work" && apt-get download busybox-static >/dev/null 2>&1) || {
    apt-get update >/dev/null && (cd "$work" && apt-get download busybox-static >/dev/null)
  }
  dpkg-deb -x "$work"/busybox-static_*.deb "$work/pkg"
  busybox="$work/pkg/bin/busybox"
fi

root="$work/rootfs"
mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/www"
cp "$busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
echo 'root:x:0:0:root:/:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"
echo '<h1>cube test image</h1>' > "$root/www/index.html"
chmod 1777 "$root/tmp"

tar -C "$root" -c . | docker import \
  -c 'CMD ["/bin/sh"]' \
  -c 'ENV PATH=/bin' \
  - "$IMAGE" >/dev/null
docker run --rm "$IMAGE" sh -c 'echo "test image $0 works"' "$IMAGE"
