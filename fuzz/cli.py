"""The command line the fuzzers here share: libFuzzer's own (``-runs=N``,
``-max_total_time=S``, corpus folders, an input to replay), with
``--seed-corpus DIR`` first to write the fuzzer's seeds into DIR."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Mapping

import atheris


def write_seeds(directory: str, seeds: Mapping[str, bytes]) -> None:
    os.makedirs(directory, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


def run(argv: list[str], test_one_input: Callable[[bytes], None],
        seeds: Callable[[], Mapping[str, bytes]]) -> None:
    if len(argv) > 2 and argv[1] == "--seed-corpus":
        write_seeds(argv[2], seeds())
        argv = [argv[0], *argv[3:]]
    atheris.Setup(argv, test_one_input)
    # What exists before the first input is never garbage: a collection an input
    # asks for (fuzz_login.py's, to find Deferreds that failed unseen) then looks
    # only at what that input made, not at every module (a full one takes 30 ms).
    gc.collect()
    gc.freeze()
    atheris.Fuzz()
