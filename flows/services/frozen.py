"""Imported last by the warm fork server (:mod:`flows.services.warm`): freeze the heap its imports made.

Every flow run is forked from the fork server and inherits the ~265,000 objects (that the collector
tracks) its imports made. Without this, the first full garbage collection in a run traverses all of
them -- ~0.2 s in the middle of whatever step it falls in, and a write to every page they sit on,
which the child then copies.
``gc.freeze()`` moves them to a generation the collector never visits (what Python's documentation
advises for a process that forks without exec); each run collects only what it makes itself.
"""

import gc

gc.freeze()
