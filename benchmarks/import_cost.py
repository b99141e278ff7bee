"""What the plugin adds to `import verl`: modules loaded and wall time, against plugins off.

Each variant runs in fresh processes, alternating, and the median is reported:
    python benchmarks/import_cost.py [--repeats 7] [--pythonpath DIR]
`--pythonpath` puts another checkout of erc_verl first on sys.path (e.g. an older commit).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

PROBE = (
    "import sys, time, json; t = time.perf_counter(); import verl; "
    "dt = time.perf_counter() - t; "
    "print(json.dumps({'s': dt, 'modules': len(sys.modules), "
    "'ours': sum(n.startswith('erc_verl') for n in sys.modules)}))"
)


def probe(plugins: str, pythonpath: str | None) -> dict:
    env = dict(os.environ, VERL_USE_EXTERNAL_PLUGINS=plugins)
    env.pop("VERL_PLATFORM", None)
    env.pop("VERL_USE_EXTERNAL_MODULES", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--pythonpath", default=None)
    args = parser.parse_args()
    runs = {"none": [], "auto": []}
    for _ in range(args.repeats):
        for plugins in runs:
            runs[plugins].append(probe(plugins, args.pythonpath))
    base, plug = runs["none"], runs["auto"]
    t0 = statistics.median(r["s"] for r in base)
    t1 = statistics.median(r["s"] for r in plug)
    print(f"import verl, plugins off: {t0:.3f} s, {base[0]['modules']} modules")
    print(f"import verl + erc_verl:   {t1:.3f} s, {plug[0]['modules']} modules ({plug[0]['ours']} of them erc_verl's)")
    print(f"added_modules={plug[0]['modules'] - base[0]['modules']} added_s={t1 - t0:.3f} time_ratio={t1 / t0:.3f}")


if __name__ == "__main__":
    main()
