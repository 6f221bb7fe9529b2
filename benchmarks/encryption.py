"""What column encryption costs: `encrypt` and `decrypt` of N 20-character strings bound to int64 row keys,
per value and per million rows, in CPU time of one process on one core; and the bare AEAD calls of the
candidates.

Usage: python -m benchmarks.encryption [--rows 1000000] [--repeat 3] [--results out.json]

Measures the CPU time of this process (the wall time on an idle core; other work on the machine barely
moves it), median of the repeats: the row key bytes of the key column (`keyhash.key_bytes`), `encrypt` (Arrow
in, Arrow out) and `decrypt` (checked to give the values back), with row keys and without; then one AEAD
call per value in a bare loop for AES-256-GCM-SIV (the engine's), AES-256-GCM and ChaCha20-Poly1305, on the
same values, to show what the engine adds around the calls and what the other ciphers would cost. Prints a
Markdown table; `python -m benchmarks.report --steps encryption` records it in `docs/performance.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV, ChaCha20Poly1305

from engine.governance.encryption import NONCE_BYTES, ColumnKey, ColumnKeys, decrypt, encrypt
from engine.keyhash import key_bytes

TABLE, COLUMN = "silver.customers", "email"
CIPHERS = {"AES-256-GCM-SIV": AESGCMSIV, "AES-256-GCM": AESGCM, "ChaCha20-Poly1305": ChaCha20Poly1305}


def _median_seconds(work: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """The median CPU time of `repeat` calls of `work`, and the last call's result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.process_time()
        result = work()
        times.append(time.process_time() - started)
    return statistics.median(times), result


def measure(rows: int = 1_000_000, repeat: int = 3) -> dict[str, Any]:
    """Seconds of each step over `rows` values, and of the bare AEAD calls."""
    values = pa.array([f"c{i:09d}@mail.test" for i in range(rows)])
    ids = pa.table({"id": pa.array(range(rows), pa.int64())})
    key = ColumnKey.from_bytes(os.urandom(32))
    keys = ColumnKeys(key)
    steps: dict[str, float] = {}
    steps["row key bytes"], row_key = _median_seconds(lambda: key_bytes(ids, ["id"]), repeat)
    for bound, label in ((row_key, "with row keys"), (None, "without row keys")):
        steps[f"encrypt, {label}"], stored = _median_seconds(
            lambda bound=bound: encrypt(values, key, TABLE, COLUMN, bound), repeat)
        steps[f"decrypt, {label}"], plain = _median_seconds(
            lambda bound=bound, stored=stored: decrypt(stored, keys, TABLE, COLUMN, bound), repeat)
        assert plain.to_pylist() == values.to_pylist()
    plain_bytes, associated = values.cast(pa.binary()).to_pylist(), [b"medallion associated data " + r
                                                                     for r in row_key.to_pylist()]
    nonce = os.urandom(NONCE_BYTES)
    ciphers = {}
    for name, cipher in CIPHERS.items():
        aead = cipher(os.urandom(32))
        seal_s, sealed = _median_seconds(
            lambda aead=aead: [aead.encrypt(nonce, v, a) for v, a in zip(plain_bytes, associated)], repeat)
        open_s, _ = _median_seconds(
            lambda aead=aead, sealed=sealed: [aead.decrypt(nonce, s, a) for s, a in zip(sealed, associated)], repeat)
        ciphers[name] = {"seal_s": seal_s, "open_s": open_s}
    return {"rows": rows, "value_chars": len(values[0].as_py()), "repeat": repeat, "steps": steps,
            "ciphers": ciphers}


def markdown(result: dict[str, Any]) -> list[str]:
    """The measurements as the lines of two Markdown tables."""
    rows = result["rows"]
    lines = [f"{rows:,} values of {result['value_chars']} characters, int64 row keys; CPU time of one process on "
             f"one core, median of {result['repeat']}.", "",
             "| step | CPU seconds | ns per value | seconds per million rows |", "|---|---:|---:|---:|"]
    lines += [f"| {step} | {seconds:.2f} | {seconds / rows * 1e9:,.0f} | {seconds / rows * 1e6:.2f} |"
              for step, seconds in result["steps"].items()]
    lines += ["", "| bare AEAD call per value | seal (ns) | open (ns) |", "|---|---:|---:|"]
    lines += [f"| {name} | {c['seal_s'] / rows * 1e9:,.0f} | {c['open_s'] / rows * 1e9:,.0f} |"
              for name, c in result["ciphers"].items()]
    return lines


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--results", type=Path, help="write the measurements here (JSON)")
    args = parser.parse_args()
    result = measure(args.rows, args.repeat)
    print("\n".join(markdown(result)))
    if args.results:
        args.results.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
