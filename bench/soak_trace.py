"""twistd under tracemalloc, dumping what it holds on SIGUSR2: bench/soak.py --trace, not a production option.

    python bench/soak_trace.py -n relay ...        (what bench/soak.py --trace DIR runs instead of twistd)

It starts tracemalloc (``SOAK_TRACE_FRAMES`` frames, default 10) and runs
twistd with the same arguments; the relay's workers, spawned with this
script as their twistd (``relay.workers``), do the same. On SIGUSR2 a
process writes ``SOAK_TRACE_DIR/PID-N.pickle``: its tracemalloc snapshot
and, to see growth that tracemalloc cannot (memory from plain malloc, an
object leaked by a missing Py_DECREF is still traced), the garbage
collector's counts, its objects counted by type, and the length of every
dict, set, list and deque attribute of every object of a ``relay.``,
``rendezvous.`` or ``twisted.logger`` class. ``compare`` prints two dumps'
differences.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import sys
import tracemalloc
from collections import Counter, OrderedDict, deque
from pathlib import Path

DIR_ENV, FRAMES_ENV = "SOAK_TRACE_DIR", "SOAK_TRACE_FRAMES"
_WATCHED = ("relay.", "rendezvous.", "twisted.logger")


def tables() -> dict[str, int]:
    """'module.Class.attribute' -> summed length of that container attribute over the live instances."""
    lengths: Counter[str] = Counter()
    for obj in gc.get_objects():
        cls = type(obj)
        module = getattr(cls, "__module__", None)
        if not isinstance(module, str) or not module.startswith(_WATCHED):
            continue
        names = list(getattr(obj, "__dict__", {}))
        names += [n for k in cls.__mro__ for n in getattr(k, "__slots__", ())]
        for name in names:
            try:
                value = getattr(obj, name, None)
            except Exception:  # a property that fails on this instance
                continue
            if isinstance(value, (dict, set, frozenset, list, deque, OrderedDict, bytearray)):
                lengths[f"{module}.{cls.__qualname__}.{name}"] += len(value)
    for name, module in list(sys.modules.items()):  # lru_cache'd functions of our modules
        if name.startswith(("relay", "rendezvous")):
            for attr, value in list(vars(module).items()):
                if hasattr(value, "cache_info"):
                    lengths[f"{name}.{attr}()"] = value.cache_info().currsize
    return dict(lengths)


def dump() -> None:
    """Write this process's snapshot, gc counts, objects by type and table lengths (never raises)."""
    try:
        _dump()
    except Exception as e:  # a bench aid must not disturb the relay it watches
        print(f"soak_trace: no dump: {e!r}", file=sys.stderr, flush=True)


def _dump() -> None:
    directory = Path(os.environ[DIR_ENV])
    number = len(list(directory.glob(f"{os.getpid()}-*.pickle")))
    gc.collect()
    record = {
        "pid": os.getpid(), "argv": sys.argv,
        "snapshot": tracemalloc.take_snapshot(),
        "traced": tracemalloc.get_traced_memory(),
        "gc_count": gc.get_count(), "gc_objects": len(gc.get_objects()),
        "types": Counter(type(o).__qualname__ for o in gc.get_objects()),
        "tables": tables(),
    }
    with open(directory / f"{os.getpid()}-{number}.pickle", "wb") as f:
        pickle.dump(record, f)


def compare(before: Path, after: Path, top: int = 12) -> list[str]:
    """What grew between two dumps of one process: tracebacks, object types and tables."""
    with open(before, "rb") as f:
        a = pickle.load(f)
    with open(after, "rb") as f:
        b = pickle.load(f)
    lines = [f"pid {b['pid']}: traced {a['traced'][0] / 1024:.0f} -> {b['traced'][0] / 1024:.0f} KiB, "
             f"gc objects {a['gc_objects']} -> {b['gc_objects']}"]
    for stat in b["snapshot"].compare_to(a["snapshot"], "traceback")[:top]:
        frames = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in list(stat.traceback)[::-1][:5])
        lines.append(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  {frames}")
    grown = (b["types"] - a["types"]).most_common(top)
    lines.append("  objects by type (grown): " + ", ".join(f"{name} +{n}" for name, n in grown))
    changed = sorted(((name, a["tables"].get(name, 0), n) for name, n in b["tables"].items()
                      if n != a["tables"].get(name, 0)), key=lambda t: t[1] - t[2])
    lines.append("  tables (grown): " + ", ".join(f"{name} {m} -> {n}" for name, m, n in changed[:top]))
    return lines


def _later(signum, frame) -> None:
    """Dump between two events of the reactor (twistd's), not inside what the signal interrupted."""
    from twisted.internet import reactor

    reactor.callFromThread(dump)


def main() -> None:
    tracemalloc.start(int(os.environ.get(FRAMES_ENV, "10")))
    signal.signal(signal.SIGUSR2, _later)
    from twisted.scripts.twistd import run

    run()


if __name__ == "__main__":
    main()
