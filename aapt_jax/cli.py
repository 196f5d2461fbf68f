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

import importlib.util
import re
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

from aapt_jax.train.loop import TrainingStopped

EXIT_STOPPED = 1
EXIT_REFUSED = 2
EXIT_INTERRUPTED = 75


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _config_override_error(error: BaseException, argv) -> str:
    """One line for an ml_collections override of a field that does not exist, naming the
    flag and the nearest field (ml_collections raises an AttributeError holding a repr)."""
    text = str(error).encode().decode("unicode_escape").replace("\n", " ")
    match = re.search(r"'(\w+)'", text)
    hint = re.search(r'Did you mean "(\w+)"', text)
    if not match:
        return one_line(error)
    bad = match.group(1)
    flag = next((a.split("=")[0] for a in argv if re.search(rf"\.{bad}(\.|=|$)", a.split("=")[0])), None)
    where = f"{flag}: " if flag else ""
    return f"{where}unknown config field {bad!r}" + (f"; did you mean {hint.group(1)!r}?" if hint else "")


def _flag_error(error: flags.Error) -> str:
    """One line for a flag that does not parse; a config file that raised while loading
    (its traceback is inside absl's message) is named with the exception's last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "Traceback (most recent call last):" not in lines:
        return one_line(error)
    flag = re.search(r"flag (--[\w.]+)", lines[0])
    return f"{flag.group(1) + ': ' if flag else ''}{lines[-1]}"


def _refuse_flags(parse, argv):
    """``parse()`` with the project's error contract for flags (one line, status 2)."""
    verbose = any(re.fullmatch(r"--verbosity=[1-9]\d*|-v=?[1-9]\d*", a) for a in argv)
    try:
        return parse()
    except flags.Error as e:
        message = _flag_error(e)
    except (AttributeError, KeyError) as e:  # a --config.* override of a field that does not exist
        message = _config_override_error(e, argv)
    if verbose:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_REFUSED)


def _parse_flags(argv):
    """absl's flag parsing with the project's error contract (one line, status 2)."""
    return _refuse_flags(lambda: flags.FLAGS(argv), argv)


def define_config(default: str, help_text: str = "Experiment config file, FILE.py[:STAGE].") -> flags.FlagHolder:
    """The ``--config=configs/X.py[:STAGE]`` flag every binary takes, with ``--config.a.b=value``
    overrides (ml_collections). Without ``--config`` on the command line, ml_collections
    loads the default file and applies the overrides while the flag is defined: an unknown
    field is refused there, in the same one line (status 2)."""
    return _refuse_flags(lambda: config_flags.DEFINE_config_file("config", default, help_text), sys.argv)


def config_per_stage(flag) -> tuple:
    """``(get_config, overrides)`` of a ``--config=FILE`` flag, for a binary that builds one
    config per stage (``launch.pipeline``): the file's ``get_config(stage)`` and the
    ``--config.a.b=value`` overrides as ``{'a.b': value}`` (already checked against the
    default stage's fields by the flag parser)."""
    path = config_flags.get_config_filename(flag)
    if ":" in path:
        raise ValueError(f"--config: every stage gets its own config; expected a file without :STAGE, got {path!r}")
    spec = importlib.util.spec_from_file_location("config_per_stage", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config, dict(config_flags.get_override_values(flag))


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

    app.run(guarded, flags_parser=_parse_flags)
