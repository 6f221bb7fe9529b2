"""The column-encryption benchmark on a few rows: every step and cipher is measured and reported per value and
per million rows, and the decrypted values are the ones encrypted (checked inside `measure`)."""

from __future__ import annotations

from benchmarks.encryption import CIPHERS, markdown, measure


def test_every_step_and_cipher_is_measured_and_reported() -> None:
    result = measure(rows=2_000, repeat=1)
    assert set(result["steps"]) == {"row key bytes", "encrypt, with row keys", "decrypt, with row keys",
                                    "encrypt, without row keys", "decrypt, without row keys"}
    assert set(result["ciphers"]) == set(CIPHERS) and result["value_chars"] == 20
    assert all(seconds >= 0 for seconds in result["steps"].values())
    lines = markdown(result)
    assert lines[0].startswith("2,000 values of 20 characters")
    assert "| step | CPU seconds | ns per value | seconds per million rows |" in lines
    assert sum(line.startswith("| encrypt") or line.startswith("| decrypt") for line in lines) == 4
    assert sum(line.startswith(f"| {name} |") for name in CIPHERS for line in lines) == 3
