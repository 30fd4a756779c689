"""Validates FHIR R4 JSON files with fhir.resources 6.4.0 (plain R4 4.0.1;
needs pydantic<2): types, required elements, choice exclusivity, unknown
elements. Each Bundle entry's resource is checked on its own as well.
Usage: python validate_fhir.py FILE...  Exit 1 when any file is invalid."""
import json
import sys

from fhir.resources import construct_fhir_element

bad = 0
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    parts = [doc] + [e["resource"] for e in doc.get("entry", [])]
    try:
        for p in parts:
            construct_fhir_element(p["resourceType"], p)
        print(f"{path}: valid (fhir.resources R4)")
    except Exception as e:  # noqa: BLE001 - report any validation failure
        bad += 1
        print(f"{path}: INVALID {str(e)[:800]}")
sys.exit(1 if bad else 0)
