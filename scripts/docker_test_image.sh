#!/usr/bin/env bash
# Build `assay-runtime:test` (or $1), the image the docker sandbox tests run, from this host's
# own files: no registry is reachable from CI, so the image is `docker import`ed from a root
# file system assembled here. It holds bash, coreutils, python3 (the task scripts use it) and
# the few tools the tests and task scripts use (procps to kill trees, util-linux's unshare/mount/setsid so
# the adversarial tests try the real thing), with every shared library `ldd` names.
# Idempotent: does nothing when the tag exists, built by this version of the script. Needs a
# running Docker daemon.
set -euo pipefail
TAG="${1:-assay-runtime:test}"
# The recipe's hash is a label of the image: an image built by an older recipe is rebuilt.
RECIPE="$(sha256sum "$0" | cut -c1-16)"
if [ "$(docker image inspect -f '{{index .Config.Labels "assay.recipe"}}' "$TAG" 2>/dev/null)" \
    = "$RECIPE" ]; then
    echo "image $TAG exists"
    exit 0
fi
PYTHON=/usr/bin/python3  # the distribution's, not a pyenv shim: its stdlib lives in /usr/lib
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
ROOT="$(mktemp -d)"
trap 'rm -rf "$ROOT"' EXIT

TOOLS=(bash sh dash cat ls cp mv rm mkdir rmdir ln chmod chown touch echo printf head tail wc
    sort uniq cut tr tee env id whoami sleep timeout nohup setsid date stat readlink realpath
    dirname basename test true false yes seq md5sum sha256sum base64 od dd du df find xargs
    grep sed awk mawk ps pkill pgrep kill unshare mount umount nsenter hostname tar gzip
    python3 "python$PYVER" diff cmp file xxd bzip2 xz less)
# Every program of coreutils (mktemp, cut, comm, ...): task scripts assume a whole userland.
mapfile -t -O "${#TOOLS[@]}" TOOLS < <(dpkg -L coreutils | grep -E '^/(usr/)?s?bin/' | xargs -n1 basename)
bins=()
for tool in "${TOOLS[@]}"; do
    path="$(PATH=/usr/bin:/bin:/usr/sbin:/sbin type -P "$tool" || true)"
    [ -n "$path" ] && bins+=("$(readlink -f "$path")") && [ "$path" != "$(readlink -f "$path")" ] \
        && bins+=("$path")
done

# Debian's /bin, /lib and /lib64 are links into /usr; keep that layout (the ELF interpreter
# is /lib64/ld-linux-x86-64.so.2). Made first, so files copied by those paths land in /usr.
mkdir -p "$ROOT/usr"
for link in bin sbin lib lib64; do
    if [ -L "/$link" ]; then
        mkdir -p "$ROOT/$(readlink -m "/$link")"
        ln -s "$(readlink "/$link")" "$ROOT/$link"
    fi
done

# Copy a file keeping its absolute path. A link becomes a link straight to its final target
# (copied too): Debian's /usr/bin/awk goes through /etc/alternatives, which is not copied.
copy() {
    local src="$1"
    [ -e "$ROOT$src" ] || [ -L "$ROOT$src" ] && return 0
    mkdir -p "$ROOT$(dirname "$src")"
    if [ -L "$src" ]; then
        ln -s "$(readlink -f "$src")" "$ROOT$src"
        copy "$(readlink -f "$src")"
    else
        cp -a "$src" "$ROOT$src"
    fi
}
for bin in "${bins[@]}"; do copy "$bin"; done

# The standard library without what no task needs (tests, the C headers/static lib, IDLE,
# tkinter, 2to3): a few MB instead of ~55. The distribution's site-packages are left out.
mkdir -p "$ROOT/usr/lib"
tar -C /usr/lib -c \
    --exclude="python$PYVER/test" --exclude="python$PYVER/config-*" \
    --exclude="python$PYVER/idlelib" --exclude="python$PYVER/tkinter" \
    --exclude="python$PYVER/lib2to3" --exclude="python$PYVER/ensurepip" \
    --exclude="python$PYVER/site-packages" --exclude="python$PYVER/dist-packages" \
    --exclude="python$PYVER/pydoc_data" --exclude="*/lib-dynload/_test*" \
    --exclude="*/lib-dynload/_xx*" --exclude="*/lib-dynload/xx*" \
    "python$PYVER" | tar -C "$ROOT/usr/lib" -x
# Shared libraries of the tools and of the stdlib's extension modules, plus the loader.
mapfile -t libs < <(ldd "${bins[@]}" "$ROOT/usr/lib/python$PYVER"/lib-dynload/*.so 2>/dev/null \
    | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $2 ~ /^\(/ {print $1}' | sort -u)
for lib in "${libs[@]}"; do copy "$lib"; done

# Principals: the agent (1000), services (1001), checkers (1002); root exists only as file owner.
mkdir -p "$ROOT"/{etc,tmp,workspace,proc,sys,dev,root,home}
chmod 1777 "$ROOT/tmp"
cat >"$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/bash
agent:x:1000:1000:agent:/workspace:/bin/bash
service:x:1001:1001:service:/srv:/bin/bash
checker:x:1002:1002:checker:/workspace:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat >"$ROOT/etc/group" <<'EOF'
root:x:0:
agent:x:1000:
service:x:1001:
checker:x:1002:
nogroup:x:65534:
EOF
echo "hosts: files dns" >"$ROOT/etc/nsswitch.conf"
[ -e "$ROOT/bin/sh" ] || ln -s bash "$ROOT/usr/bin/sh"

tar -C "$ROOT" --numeric-owner -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' -c 'CMD ["bash"]' -c "LABEL assay.recipe=$RECIPE" - "$TAG" >/dev/null
docker run --rm --network none "$TAG" bash -c 'python3 -c "import json, ssl, ctypes, sqlite3; print(\"ok\")"' \
    | grep -qx ok || { echo "image $TAG does not run python3" >&2; docker rmi "$TAG" >/dev/null; exit 1; }
echo "built $TAG: $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')"
