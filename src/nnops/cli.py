"""The ``nnops`` command: one entry point, one subcommand per verb.

``nnops predict --input rows.csv --out predictions.csv`` and so on; ``nnops --help`` lists them.
Each subcommand lives in its verb module as ``main(argv, prog) -> int`` with its own parser, and
is imported only when it is run, so ``nnops --help`` starts without TensorFlow or MLflow.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module holding ``main(argv, prog)``, one-line help). Add new verbs here.
COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("nnops.predict", "score a CSV or npz batch with a model (path or MLflow URI)"),
    "validate-batch": (
        "nnops.validate_batch",
        "check a new CSV or npz batch against the training profile (schema, ranges, drift)",
    ),
    "tune": ("nnops.tune", "search train.* with Optuna, every trial in MLflow; apply the winner"),
    "reproduce": ("nnops.reproduce", "rerun the pipeline of a registered model and compare"),
    "promote": ("nnops.promote", "make a registered version @champion by hand, with a reason"),
    "warm": ("nnops.warm_server", "list or stop the warm servers that start stages fast"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return (
        "usage: nnops COMMAND [ARGS...]\n\n"
        "The nnops command line. Commands:\n" + "\n".join(lines) + "\n\n"
        "Run `nnops COMMAND --help` for a command's arguments."
    )


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``nnops COMMAND ...`` to the command's module; return its exit status.

    Args:
        argv: arguments, for tests; defaults to ``sys.argv[1:]``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"nnops: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest, prog=f"nnops {name}"))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
