"""The per-test table of experiments/sb3_own_tests.sh: each test's outcome with SB3's PPO and with rlgeom's,
from the JUnit XML files, and the count rlgeom passes of the tests SB3's PPO passes.
usage: python experiments/sb3_own_tests_table.py <workdir>/res"""

import glob
import os
import sys
import xml.etree.ElementTree as ET


def outcomes(folder: str, side: str) -> dict[str, tuple[str, str]]:
    """{file::test: (passed | failed | skipped, the first line of the failure's message)}."""
    found = {}
    for path in sorted(glob.glob(os.path.join(folder, f"{side}.*.xml"))):
        for case in ET.parse(path).getroot().iter("testcase"):
            name = f"{case.get('classname', '').split('.')[-1]}.py::{case.get('name')}"
            problem = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
            if problem is None:
                found[name] = ("passed", "")
            else:
                kind = "skipped" if problem.tag == "skipped" else "failed"
                found[name] = (kind, (problem.get("message") or "").splitlines()[0][:110] if problem.get("message") else "")
    return found


def main(folder: str) -> None:
    sb3, ours = outcomes(folder, "sb3"), outcomes(folder, "rlgeom")
    print("| test | SB3's PPO | rlgeom | rlgeom's failure |\n|---|---|---|---|")
    for name in sorted(set(sb3) | set(ours)):
        a, b = sb3.get(name, ("not run", "")), ours.get(name, ("not run", ""))
        print(f"| `{name}` | {a[0]} | {b[0]} | {b[1].replace('|', '/') if b[0] == 'failed' else ''} |")
    passing = [n for n, (kind, _) in sb3.items() if kind == "passed"]
    both = [n for n in passing if ours.get(n, ("",))[0] == "passed"]
    print(f"\nrlgeom passes {len(both)} of the {len(passing)} tests SB3's PPO passes "
          f"({sum(k == 'passed' for k, _ in ours.values())} passed of {len(ours)} run on rlgeom's side)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/sb3_own_tests/res")
