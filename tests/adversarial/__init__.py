"""Tests that attack the promises of the README the way an operator or a hostile feed would."""
