"""Builds cases.json: VRL (MPL-2.0) and Logstash (Apache-2.0) vectors copied verbatim with their
source, plus our own cases mirroring the Beats (Elastic-2.0) and Sekoia (no license) vectors,
which may not be copied. Run from this folder with the shared samples beside the repository:
    python3 build_cases.py /path/to/shared/samples/cef
"""
import json, sys

src = sys.argv[1]
cases = []
for name in ["vrl_parse_cef_cases.json", "logstash_codec_cef_cases.json"]:
    cases += json.load(open(f"{src}/{name}"))
cases += json.load(open("own_cases.json"))
json.dump(cases, open("cases.json", "w"), indent=1, ensure_ascii=False)
print(len(cases), "cases")
