"""What `sat/benchmark.py` measures and models, kept out of the library: FLOP counts (`flops`), a forward's device
time by kernel kind (`kernel_profile`) and the multi-prompt step's work per rank (`work_counts`).

Imported as `benchmarking` with `sat/` on `sys.path`, as the entry scripts import `ditctrl`.
"""
