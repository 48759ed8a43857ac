#!/usr/bin/env bash
# Reference solution: dictionary attack with sha256sum over the shipped wordlist; the flag
# goes to /tmp/result.txt (and stdout).
set -euo pipefail
IFS='$' read -r algo salt digest < hash.txt
[ "$algo" = sha256 ] || { echo "unexpected hash type: $algo" >&2; exit 1; }
while IFS= read -r word; do
    candidate=$(printf '%s%s' "$salt" "$word" | sha256sum | cut -d' ' -f1)
    if [ "$candidate" = "$digest" ]; then
        echo "FLAG{$word}" | tee /tmp/result.txt
        exit 0
    fi
done < wordlist.txt
echo "password not in wordlist" >&2
exit 1
