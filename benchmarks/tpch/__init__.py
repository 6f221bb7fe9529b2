"""The TPC-H medallion workload (`WORKLOAD.md` here): data preparation, peers, correctness check, runner."""
