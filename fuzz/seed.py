#!/usr/bin/env python3
"""Fills fuzz/corpus/<target>/ with seeds from the repo's own test vectors (idempotent).

Seeds only steer libFuzzer to interesting shapes sooner; the vectors' sources and licences are
noted beside them in ingest/tests/data.
"""
import hashlib
import json
import pathlib

root = pathlib.Path(__file__).resolve().parent
data = root.parent / "ingest" / "tests" / "data"


def put(target: str, payload: bytes) -> None:
    d = root / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(payload).hexdigest()).write_bytes(payload)


def inputs(path: pathlib.Path):
    for case in json.loads(path.read_text()):
        if isinstance(case.get("input"), str):
            yield case["input"].encode()


cef = [*inputs(data / "cef" / "cases.json"), *inputs(data / "cef" / "own_cases.json")]
syslog = [
    x
    for f in ("syslog_header_expected.json", "syslog_header_own_cases.json",
              "syslog_loose_cases.json", "vector_vrl_syslog_cases.json")
    for x in inputs(data / "syslog" / f)
]
darktrace = [p.read_bytes() for p in sorted((data / "darktrace").glob("*.log"))]
json_bodies = [(data / "darktrace" / "model_breach_body.json").read_bytes()]

for x in cef:
    put("cef", x)
    put("parse_message", x)
for x in syslog:
    put("syslog_header", x)
    put("parse_message", x)
for x in darktrace:
    put("parse_message", x)
    put("framer", x)
for x in json_bodies:
    put("json", x)
# Octet-counted streams (RFC 6587) of the syslog vectors, for the framer.
put("framer", b"".join(b"%d %s" % (len(x), x) for x in syslog[:20]))
