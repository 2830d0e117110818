"""A minimal test runner for the GPU checks, so that they need no pytest on the GPU machine:
each check is a function; failures are printed with their traceback; the last line is
'N passed, N failed' and the exit status is 1 when anything failed."""

from __future__ import annotations

import contextlib
import re
import sys
import tempfile
import time
import traceback


class Runner:
    def __init__(self, title: str) -> None:
        self.title = title
        self.passed = 0
        self.failed: list = []
        self.only = sys.argv[1:]  # substrings of check names to run

    def run(self, name: str, fn, *args) -> None:
        if self.only and not any(o in name for o in self.only):
            return
        t = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix="hoist-gpu-") as tmp:
                fn(*args, tmp) if _wants_tmp(fn, args) else fn(*args)
        except Exception:
            self.failed.append(name)
            print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
        else:
            self.passed += 1
            print(f"ok   {name} ({time.perf_counter() - t:.2f} s)", flush=True)

    def finish(self) -> int:
        if self.failed:
            print(f"{self.title}: failed: {', '.join(self.failed)}")
        print(f"{self.passed} passed, {len(self.failed)} failed")
        return 1 if self.failed else 0


def _wants_tmp(fn, args) -> bool:
    return fn.__code__.co_argcount == len(args) + 1 and fn.__code__.co_varnames[len(args)] == "tmp"


@contextlib.contextmanager
def raises(exc, match: str | None = None):
    try:
        yield
    except exc as e:
        if match is not None and not re.search(match, str(e)):
            raise AssertionError(f"{type(e).__name__} raised, but {match!r} not in: {e}") from e
    else:
        raise AssertionError(f"{exc.__name__} not raised")
