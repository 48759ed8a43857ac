"""Recompute an evaluation's hash chains from its history answer (standard library only).

curl -s -H "X-API-Key: $KEY" "$SERVER/api/v1/org/$ORG/ws/$WS/evaluation/$ID/events" > h.json
python3 verify_history.py h.json [more pages...]    # exit 0: every hash recomputes
"""

import hashlib
import json
import sys

ZERO = "0" * 64
FIELDS = (
    "event_id",
    "stream_type",
    "stream_id",
    "stream_version",
    "type",
    "schema_version",
    "data",
    "metadata",
    "recorded_at",
)


def sha256_hex(text_prefix, payload=b""):
    return hashlib.sha256(text_prefix.encode("ascii") + payload).hexdigest()


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def check(events):
    last_in_stream = {}  # (stream_type, stream_id) -> (stream_version, hash)
    last_position = 0
    for e in events:
        where = f"position {e['position']}"
        if e["position"] <= last_position:
            return f"{where}: positions are not ascending"
        last_position = e["position"]
        content = {name: e[name] for name in FIELDS}
        if sha256_hex(e["prev_hash"], canonical(content)) != e["hash"]:
            return f"{where}: hash does not match the event's content"
        if sha256_hex(e["chain_prev_hash"] + e["hash"]) != e["chain_hash"]:
            return f"{where}: chain_hash does not match chain_prev_hash + hash"
        key = (e["stream_type"], e["stream_id"])
        if key in last_in_stream:
            version, prev = last_in_stream[key]
            if (e["stream_version"], e["prev_hash"]) != (version + 1, prev):
                return f"{where}: does not follow version {version} of its stream"
        elif e["stream_version"] == 1 and e["prev_hash"] != ZERO:
            return f"{where}: a stream's first event must have prev_hash 0...0"
        last_in_stream[key] = (e["stream_version"], e["hash"])
    return None


def main(paths):
    events = []
    for path in paths:
        with open(path, encoding="utf-8") if path != "-" else sys.stdin as f:
            events += json.load(f)["events"]
    problem = check(events)
    if problem:
        print(f"BROKEN: {problem}")
        return 1
    tail = f"; last chain_hash {events[-1]['chain_hash']} at position {events[-1]['position']}"
    print(f"ok: {len(events)} events recompute" + (tail if events else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["-"]))
