"""The benchmark's memory of a process tree: shared pages count once in PSS and in every process in RSS."""

from __future__ import annotations

import subprocess
import sys

import psutil

from benchmarks.tpch.run import tree_memory

SHARED_MIB = 200
SHARING = f"""
import mmap, os, sys
size = {SHARED_MIB} * 2**20
shared = mmap.mmap(-1, size)
shared.write(b"x" * size)
if os.fork() == 0:
    touched = sum(shared[i] for i in range(0, size, mmap.PAGESIZE))
    print("ready", flush=True)
    sys.stdin.read()
    os._exit(0)
os.wait()
"""


def test_pages_shared_by_two_processes_count_once_in_pss_and_twice_in_rss() -> None:
    process = subprocess.Popen([sys.executable, "-c", SHARING], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        memory = tree_memory(psutil.Process(process.pid))
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait()
    mib = 2**20
    assert memory.rss >= 2 * SHARED_MIB * mib
    assert SHARED_MIB * mib <= memory.pss < memory.rss - (SHARED_MIB - 20) * mib
