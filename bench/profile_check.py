"""Where a check's time goes: Checker.check under cProfile, split by the steps it calls.

    python bench/profile_check.py [--n 3000] [--jwt]

Prints each direct callee of Checker.check with its share of the check's time (cProfile's
cumulative time on that call edge), and the time spent inside the Go evaluation (the native
call), which cProfile measures without distortion: it is one C call. cProfile adds a fixed cost
to every Python call, so Python-heavy steps look somewhat bigger than they are; the ranking is
what to read.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import fixtures  # noqa: E402
import inprocess  # noqa: E402
from workload import check_request  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--jwt", action="store_true", help="profile the JWT path instead of the API key")
    args = ap.parse_args(argv)
    fx = fixtures.make(Path(tempfile.mkdtemp(prefix="llm-authz-profile-")))
    checker = inprocess.make_checker(fx.root, 2, "sink")
    token = fx.jwt_token if args.jwt else fx.api_key
    ok, why = inprocess.allowed(checker, token)
    if not ok:
        raise SystemExit(f"not allowed: {why}")
    request = check_request(token)
    for _ in range(300):
        checker.check(request)
    started = time.perf_counter()
    for _ in range(args.n):
        checker.check(request)
    plain_us = (time.perf_counter() - started) / args.n * 1e6
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(args.n):
        checker.check(request)
    profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    check_key = next(k for k in stats if k[2] == "check" and k[0].endswith("llm_authz/check.py"))
    total = stats[check_key][3]
    rows = []
    for key, (_, _, _, _, callers) in stats.items():
        edge = callers.get(check_key)
        if edge:
            rows.append((edge[3], f"{Path(key[0]).name}:{key[2]}"))
    native = sum(v[2] for k, v in stats.items() if k[2] == "eval_document" and "fastcall" in k[0])
    print(f"{'API key' if not args.jwt else 'JWT'} path, {args.n} checks: {plain_us:.0f} µs per check without the "
          f"profiler, {total / args.n * 1e6:.0f} µs with it")
    print(f"  {'inside the Go evaluation (native call)':44s} {native / total * 100:5.1f} %")
    print(f"  {'Checker.check itself':44s} {stats[check_key][2] / total * 100:5.1f} %")
    for seconds, name in sorted(rows, reverse=True):
        if seconds / total >= 0.005:
            print(f"  {name:44s} {seconds / total * 100:5.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
