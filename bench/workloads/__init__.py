"""The workloads, one module each (``faults`` holds both failover and restart).

A workload module holds the worker that runs in the load processes, the function that runs one
side (directly or through pyproxy) and returns its figures, and ``workload_<name>``, which runs
both sides on fresh targets and adds the results and the table rows to the run.
"""
