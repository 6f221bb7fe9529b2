"""Feast's run-time type checks are prepared on a method's first call, not when Feast is imported
(`engine/typechecks.py`), and still check every call."""

from __future__ import annotations

import json
import subprocess
import sys

IMPORT_FEAST = """
import ast, json, sys
{first}
parsed = 0
parse = ast.parse
def counting(*args, **kwargs):
    global parsed
    parsed += 1
    return parse(*args, **kwargs)
ast.parse = counting
import feast
from feast import Entity, Field
from feast.types import Int64
at_import = parsed
errors = []
for attempt in range(2):
    try:
        Field(name=1, dtype=Int64)
    except Exception as error:
        errors.append(type(error).__name__ + ": " + str(error))
entity = Entity(name="customer", join_keys=["customer_id"])
print(json.dumps({{"at_import": at_import, "errors": errors, "entity": entity.join_key}}))
"""


def imported(first: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", IMPORT_FEAST.format(first=first)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_feast_imported_after_the_engine_parses_no_module_again_and_checks_its_arguments_the_same() -> None:
    """Without the engine, typeguard parses a module again for each of Feast's annotated methods as Feast is
    imported (hundreds of parses); after it, only Feast's own few remain, and the checks raise the same."""
    alone, with_engine = imported(""), imported("import engine")
    assert alone["at_import"] > 100
    assert with_engine["at_import"] < alone["at_import"] / 10, "typeguard instrumented Feast as it was imported"
    assert with_engine["errors"] == alone["errors"] == [
        'TypeCheckError: argument "name" (int) is not an instance of str'] * 2
    assert with_engine["entity"] == "customer_id"
