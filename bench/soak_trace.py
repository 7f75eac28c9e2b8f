"""twistd under tracemalloc, dumping what it holds on SIGUSR2: bench/soak.py --trace, not a production option.

    python bench/soak_trace.py -n relay ...        (what bench/soak.py --trace DIR runs instead of twistd)

It starts tracemalloc (``SOAK_TRACE_FRAMES`` frames, default 10; 0: not)
and runs twistd with the same arguments; the relay's workers, spawned with
this script as their twistd (``relay.workers``), do the same. On SIGUSR2 a
process writes ``SOAK_TRACE_DIR/PID-N.pickle``: its tracemalloc snapshot
(an object a C extension leaks by a missing Py_DECREF shows there, at the
line that called it); for what tracemalloc cannot see, glibc's and
pymalloc's heap figures and the RSS before and after ``malloc_trim(0)``
(memory from plain malloc, fragmentation); the garbage collector's counts
and objects by type; and the summed length of every container attribute of
the ``relay.``, ``rendezvous.`` and ``twisted.logger`` objects and of our
``lru_cache`` tables. ``compare`` prints what changed between two dumps.
"""

from __future__ import annotations

import ctypes
import gc
import os
import pickle
import re
import signal
import sys
import tempfile
import tracemalloc
from collections import Counter, deque
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
            if isinstance(value, (dict, set, frozenset, list, deque, bytearray)):
                lengths[f"{module}.{cls.__qualname__}.{name}"] += len(value)
    for name, module in list(sys.modules.items()):  # lru_cache'd functions of our modules
        if name.startswith(("relay", "rendezvous")):
            for attr, value in list(vars(module).items()):
                if hasattr(value, "cache_info"):
                    lengths[f"{name}.{attr}()"] = value.cache_info().currsize
    return dict(lengths)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def heap() -> dict[str, int]:
    """glibc's heap (mallinfo2: arena = brk heap, hblkhd = mmapped, uordblks in use, fordblks free) and
    pymalloc's (sys._debugmallocstats: its '# ... = N' lines), in bytes; RSS before and after malloc_trim(0)."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    stats = {f"malloc {name}": getattr(info, name) for name in ("arena", "hblkhd", "uordblks", "fordblks")}
    with tempfile.TemporaryFile() as out:  # _debugmallocstats writes to the C stderr
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode("ascii", "replace")
    for name, value in re.findall(r"^# (.+?)\s+=\s+([\d,]+)$", text, re.M):
        stats[f"pymalloc {name}"] = int(value.replace(",", ""))
    stats["rss before trim"] = rss_kib() * 1024
    libc.malloc_trim(0)
    stats["rss after trim"] = rss_kib() * 1024
    return stats


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
    tracing = tracemalloc.is_tracing()
    record = {
        "pid": os.getpid(), "argv": sys.argv,
        "snapshot": tracemalloc.take_snapshot() if tracing else None,
        "traced": tracemalloc.get_traced_memory() if tracing else (0, 0),
        "heap": heap(),
        "gc_count": gc.get_count(), "gc_objects": len(gc.get_objects()),
        "types": Counter(type(o).__qualname__ for o in gc.get_objects()),
        "tables": tables(),
    }
    with open(directory / f"{os.getpid()}-{number}.pickle", "wb") as f:
        pickle.dump(record, f)


_SHOWN = {"arena", "hblkhd", "uordblks", "fordblks", "arenas allocated current", "bytes in allocated blocks",
          "bytes in available blocks", "before trim", "after trim"}


def compare(before: Path, after: Path, top: int = 12) -> list[str]:
    """What grew between two dumps of one process: heap figures, tracebacks, object types and tables."""
    with open(before, "rb") as f:
        a = pickle.load(f)
    with open(after, "rb") as f:
        b = pickle.load(f)
    lines = [f"pid {b['pid']}: traced {a['traced'][0] / 1024:.0f} -> {b['traced'][0] / 1024:.0f} KiB, "
             f"gc objects {a['gc_objects']} -> {b['gc_objects']}"]
    shown = [name for name in b["heap"] if name in a["heap"] and name.split(" ", 1)[1] in _SHOWN]
    lines.append("  heap: " + ", ".join(
        f"{name} {a['heap'][name]} -> {b['heap'][name]}" if "arenas" in name
        else f"{name} {a['heap'][name] / 1024:,.0f} -> {b['heap'][name] / 1024:,.0f} KiB" for name in shown))
    stats = b["snapshot"].compare_to(a["snapshot"], "traceback") if a["snapshot"] and b["snapshot"] else []
    for stat in stats[:top]:
        frames = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in list(stat.traceback)[::-1][:5])
        lines.append(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  {frames}")
    grown = (b["types"] - a["types"]).most_common(top)
    lines.append("  objects by type (grown): " + ", ".join(f"{name} +{n}" for name, n in grown))
    changed = sorted(((name, a["tables"].get(name, 0), n) for name, n in b["tables"].items()
                      if n != a["tables"].get(name, 0)), key=lambda t: t[1] - t[2])
    lines.append("  tables (changed, grown first): " + ", ".join(f"{name} {m} -> {n}" for name, m, n in changed[:top]))
    return lines


def _later(signum, frame) -> None:
    """Dump between two events of the reactor (twistd's), not inside what the signal interrupted."""
    from twisted.internet import reactor

    reactor.callFromThread(dump)


def main() -> None:
    frames = int(os.environ.get(FRAMES_ENV, "10"))
    if frames:
        tracemalloc.start(frames)
    signal.signal(signal.SIGUSR2, _later)
    from twisted.scripts.twistd import run

    run()


if __name__ == "__main__":
    main()
