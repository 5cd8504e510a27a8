"""Check an evaluation's perplexities against the README's table of the default evaluation: every
(method, length) the run computed must print as the README's value (3 decimals)."""

import json
import re
import sys

summary, readme = json.load(open(sys.argv[1])), open(sys.argv[2]).read()
header = re.search(r"^\| method \|(.*)\|$", readme, re.M)
lengths = [int(x) for x in header.group(1).replace("|", " ").split()]
table = {}
for row in re.findall(r"^\| (\S+(?: ×\d+)?) \|(.*)\|$", readme[header.end():], re.M):
    label, cells = row[0].replace(" ×", " x"), row[1].replace("|", " ").split()
    if len(cells) == len(lengths) and all(re.fullmatch(r"[\d.]+", c) for c in cells):
        table[label] = dict(zip(lengths, cells))
checked, wrong = 0, []
for r in summary["perplexity"]:
    want = table.get(r["method"], {}).get(r["length"])
    if want is None:
        wrong.append(f"{r['method']} at {r['length']}: not in the README's table")
        continue
    checked += 1
    if f"{r['ppl']:.3f}" != want:
        wrong.append(f"{r['method']} at {r['length']}: ran {r['ppl']:.3f}, README says {want}")
if wrong or not checked:
    sys.exit("README table check failed: " + ("; ".join(wrong) or "nothing compared"))
print(f"README table check: {checked} perplexities equal the README's")
