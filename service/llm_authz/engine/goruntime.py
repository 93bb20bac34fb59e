"""Go runtime settings for the embedded engine's library.

The OPA library's Go runtime reads GOGC once, from the environment the process started with
(setting os.environ later does not reach it). Its live heap is small (a few MB) and every
evaluation allocates, so at Go's default (GOGC=100) it collects every few milliseconds under
load; GOGC=400 lets the heap grow to five times the live data between collections and cuts
the engine's CPU per evaluation by about a fifth (bench/RESULTS.md). `llm-authz serve`
re-executes itself once with GOGC=400 when GOGC is not set; an operator's own GOGC wins.
"""

from __future__ import annotations

import os
import sys

GOGC_DEFAULT = "400"


def reexec_with_gogc(argv: list[str]) -> None:
    """Replace this process by `python -m llm_authz ARGV` with GOGC set, unless GOGC is already set.

    Call it first thing, before any thread starts or the OPA library loads. The process id stays
    the same, so a supervisor and its signals are unaffected.
    """
    if "GOGC" in os.environ:
        return
    env = {**os.environ, "GOGC": GOGC_DEFAULT}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "llm_authz", *argv], env)
