"""What every binary in ``launch/`` does with errors and exit statuses.

``run(main)`` replaces ``absl.app.run(main)``. A ``ValueError`` (the project's contract for
bad input: a config field, a flag, a file, named with what was expected and what was given)
becomes one line on stderr and exit status 2; a run stopped for a reason a person must look
at (``TrainingStopped``: a non-finite loss, diverging logits) one line and status 1. The
traceback is printed too with ``--verbosity=1`` (or higher).

Exit statuses:
  0   done
  1   training stopped (non-finite loss or state, diverged discriminator); last good checkpoint kept
  2   refused: bad config, flag or input file (nothing was trained or overwritten)
  75  interrupted by SIGTERM after saving a checkpoint: rerun the same command to resume
      (``EX_TEMPFAIL`` of sysexits.h, which batch schedulers treat as "requeue")
"""

from __future__ import annotations

import sys
import traceback

from absl import app, flags

from aapt_jax.train.loop import TrainingStopped

EXIT_STOPPED = 1
EXIT_REFUSED = 2
EXIT_INTERRUPTED = 75


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def run(main) -> None:
    """``absl.app.run(main)`` with the project's error contract (see the module docstring)."""

    def guarded(argv):
        # Read before main runs: mains lower absl's logging verbosity to quiet orbax.
        verbose = flags.FLAGS.verbosity >= 1
        try:
            return main(argv)
        except (ValueError, TrainingStopped) as e:
            if verbose:
                traceback.print_exc()
            refused = isinstance(e, ValueError)
            hint = "" if verbose else " (--verbosity=1 shows the traceback)"
            print(f"{'error' if refused else 'stopped'}: {one_line(e)}{hint}", file=sys.stderr, flush=True)
            return EXIT_REFUSED if refused else EXIT_STOPPED

    app.run(guarded)
