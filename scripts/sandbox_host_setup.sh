#!/usr/bin/env bash
# Install what strict sandboxes need on this host: bubblewrap (the views), slirp4netns (an
# item's uplink), iptables (brings the nftables userspace, `nft`, the item filter uses) and
# uidmap. Idempotent and silent when everything is present; without root or apt it prints the
# command to run instead (exit 1, so CI notices).
set -euo pipefail

# package:command that proves it is installed
NEEDED="bubblewrap:bwrap slirp4netns:slirp4netns iptables:iptables nftables:nft uidmap:newuidmap"

missing=()
for entry in $NEEDED; do
    package="${entry%%:*}"
    command="${entry##*:}"
    if ! command -v "$command" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$command" ] && [ ! -x "/sbin/$command" ]; then
        missing+=("$package")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

install_cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "sandbox host setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086  # the package list is meant to split
    apt-get install -y -qq --no-install-recommends ${missing[*]} >/dev/null
    exit 0
fi
echo "sandbox host setup: missing ${missing[*]}; as root run: apt-get update && $install_cmd" >&2
exit 1
