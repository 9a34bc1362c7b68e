"""sweep's harness: spec -> tasks -> executor -> store -> collect.

This package knows nothing of any experiment family; families plug in through
:mod:`launch.experiment` (the ``sweep.experiments`` entry-point group).
"""
