"""Parses Prometheus text exposition from stdin with Debian's
python3-prometheus-client (run by /usr/bin/python3, which has it) and prints
what it found as JSON: {"families": {name: {"type", "help"}}, "samples":
[[sample name, labels, value], ...]}. A text the parser refuses exits 1 with
its message. Values only: the metrics hold no secret."""

import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    out = {"families": {}, "samples": []}
    try:
        for fam in text_string_to_metric_families(text):
            out["families"][fam.name] = {"type": fam.type, "help": fam.documentation}
            for s in fam.samples:
                v = s.value
                out["samples"].append([s.name, s.labels, "+Inf" if math.isinf(v) else v])
    except Exception as e:  # noqa: BLE001 - the parser raises ValueError and others
        print(f"prometheus_client refused the text: {e}", file=sys.stderr)
        sys.exit(1)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
