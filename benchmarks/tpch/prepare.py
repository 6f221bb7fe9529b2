"""Input data of the TPC-H medallion workload (`WORKLOAD.md` section 1): generated, then deterministically messed.

Usage: python -m benchmarks.tpch.prepare --sf 0.01 --root DATA

Runs `tpchgen-cli` into `DATA/sf<SF>/gen`, then writes the raw input `DATA/sf<SF>/raw/<table>/<table>.<i>.csv`
(orders, customer, nation copied; lineitem with ~1 % of its lines duplicated into the next file and ~0.1 %
corrupted) and `DATA/sf<SF>/manifest.json` with the exact expected counts. A complete folder is reused.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine.errors import EngineError

SEED = 42
TABLES = ("lineitem", "orders", "customer", "nation")
PARTS = 8
CORRUPT_BELOW = 0.001
DUPLICATE_BELOW = 0.011
BAD_DISCOUNTS = ["-0.05", "-0.01", "0.11", "0.15", "0.25", "0.50"]
CORRUPTIONS = ("negative_quantity", "discount_out_of_range", "null_shipdate")
"""Corruption kinds 0, 1, 2, named like the silver `_reason` each one triggers."""
QUANTITY, DISCOUNT, SHIPDATE = 4, 6, 10
"""Field positions in a lineitem line; every field up to the ship date is free of commas and quotes."""
KEYS = {"lineitem": ("l_orderkey", "l_linenumber"), "orders": ("o_orderkey",), "customer": ("c_custkey",),
        "nation": ("n_nationkey",)}


class PrepareError(EngineError):
    """The TPC-H generator failed or produced an unexpected layout."""


def sf_folder(root: Path, sf: float) -> Path:
    """`<root>/sf<SF>`, with the scale factor written as given (`0.01`, `1`)."""
    return root / f"sf{sf:g}"


def generate(sf: float, out: Path) -> None:
    """Run `tpchgen-cli` for the four workload tables, 8 parts each, CSV."""
    command = [str(Path(sys.executable).with_name("tpchgen-cli")), "csv", "-s", f"{sf:g}",
               "-T", ",".join(TABLES), "--parts", str(PARTS), "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PrepareError(f"tpchgen-cli failed ({done.returncode}): {done.stderr.strip()}")


def part_files(folder: Path, table: str) -> list[Path]:
    """The generated files of `table`, sorted by part number."""
    files = sorted(folder.glob(f"{table}.*.csv"), key=lambda p: int(p.name.split(".")[-2]))
    if not files:
        raise PrepareError(f"no generated files for {table} in {folder}")
    return files


def corrupt(line: str, kind: int, rng: random.Random) -> str:
    """`line` with corruption `kind` applied (0 negative quantity, 1 bad discount, 2 empty ship date)."""
    fields = line.split(",", SHIPDATE + 1)
    if kind == 0:
        fields[QUANTITY] = "-" + fields[QUANTITY]
    elif kind == 1:
        fields[DISCOUNT] = rng.choice(BAD_DISCOUNTS)
    else:
        fields[SHIPDATE] = ""
    return ",".join(fields)


def mess_lineitem(sources: list[Path], target: Path) -> dict[str, Any]:
    """Write the messed lineitem files to `target`; return their counts."""
    headers: list[str] = []
    bodies: list[list[str]] = []
    appended: list[list[str]] = [[] for _ in sources]
    corrupted = dict.fromkeys(CORRUPTIONS, 0)
    source_rows = 0
    for i, path in enumerate(sources):
        rng = random.Random(f"{SEED}-lineitem-{i}")
        header, *lines = path.read_text().splitlines()
        headers.append(header)
        body: list[str] = []
        for line in lines:
            u = rng.random()
            if u < CORRUPT_BELOW:
                kind = rng.randrange(3)
                corrupted[CORRUPTIONS[kind]] += 1
                line = corrupt(line, kind, rng)
            elif u < DUPLICATE_BELOW:
                appended[(i + 1) % len(sources)].append(line)
            body.append(line)
        source_rows += len(lines)
        bodies.append(body)
    for i, (header, body) in enumerate(zip(headers, bodies, strict=True)):
        (target / f"lineitem.{i + 1}.csv").write_text("\n".join([header, *body, *appended[i]]) + "\n")
    duplicates = sum(len(a) for a in appended)
    total_corrupted = sum(corrupted.values())
    return {"raw_rows": source_rows + duplicates, "source_rows": source_rows, "duplicates": duplicates,
            "corrupted": total_corrupted, "corrupted_by_reason": corrupted,
            "silver_rows": source_rows - total_corrupted, "files": len(sources)}


def copy_table(sources: list[Path], target: Path) -> dict[str, Any]:
    """Copy the generated files unchanged; return their counts."""
    rows = 0
    for path in sources:
        shutil.copyfile(path, target / path.name)
        with path.open() as handle:
            rows += sum(1 for _ in handle) - 1
    return {"raw_rows": rows, "source_rows": rows, "silver_rows": rows, "files": len(sources)}


def prepare(sf: float, root: Path, force: bool = False) -> Path:
    """Generate and mess the data at scale `sf` under `root` (reused when complete); return its folder."""
    folder = sf_folder(root, sf)
    manifest_path = folder / "manifest.json"
    if manifest_path.exists() and not force:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    gen, raw = folder / "gen", folder / "raw"
    generate(sf, gen)
    tables: dict[str, Any] = {}
    for table in TABLES:
        target = raw / table
        target.mkdir(parents=True)
        sources = part_files(gen / table, table)
        tables[table] = mess_lineitem(sources, target) if table == "lineitem" else copy_table(sources, target)
        tables[table]["keys"] = list(KEYS[table])
    shutil.rmtree(gen)
    manifest = {"sf": sf, "seed": SEED, "generator": "tpchgen-cli 4.0.0", "tables": tables}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def load_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a prepared folder."""
    return json.loads((folder / "manifest.json").read_text())


def main() -> None:
    """Command line: prepare one scale factor."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sf", type=float, default=0.01)
    parser.add_argument("--root", type=Path, default=Path("bench-data"))
    parser.add_argument("--force", action="store_true", help="regenerate even when the folder is complete")
    args = parser.parse_args()
    folder = prepare(args.sf, args.root, args.force)
    print(json.dumps(load_manifest(folder)["tables"]["lineitem"], indent=2))


if __name__ == "__main__":
    main()
