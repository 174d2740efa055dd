"""Keep the garbage collector's full passes short in a process that holds a model.

A loaded classifier tracks about 850,000 Python objects (transformers' and
the tokenizer's, the language identifier's, the bundle's), nearly all made
at start-up and kept for the process's life. CPython's full collection
walks every tracked object with the interpreter lock held, about 0.4 s on 2
cores, so every thread stops: under load such passes came every few
seconds and were the slow tail of the classifier's refusals (p99 300-450 ms
against a 50 ms target; docs/benchmarks.md). :func:`gc.freeze` moves what
start-up made into a permanent generation that collections skip; garbage
made later is collected as before.

What stays frozen is never collected: a cycle among start-up objects that
later becomes garbage (a bundle replaced by a reload) stays in memory. The
classifier, the steer service and the sidecar (about 50,000 objects, 10 ms
a full collection) freeze once, after loading; a reload's new objects are
few.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> int:
    """Collect what start-up left as garbage, then freeze the rest; how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
