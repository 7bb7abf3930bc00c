"""``nnops promote``: make a registered version ``@champion`` by hand, with the reason on record.

The register gate promotes only what passes it. When a person decides otherwise (the gate
refused a comparison it could not make fairly, or a version must be rolled back), this moves the
alias the way the gate does: under the same register lease, the record first (who, when, why, the
version it replaces), the alias last, so the champion history stays complete.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nnops.errors import NnopsError
from nnops.registry import MANUAL_TAG
from nnops.secrets import redact_text

__all__ = ["MANUAL_TAG", "main", "promote_by_hand"]


def promote_by_hand(client: Any, name: str, version: str, reason: str) -> str | None:
    """Make ``name`` version ``version`` the champion; return the version it replaces.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model name.
        version: the version to promote.
        reason: why, in the person's words (recorded as ``nnops.reason``).
    """
    from nnops.registry import CHAMPION, DECISION_TAG, TAG_PREFIX, alias_version, promote

    try:
        recorded = dict(client.get_model_version(name, version).tags or {})
    except Exception:
        raise NnopsError(f"{name!r} has no version {version} in this store") from None
    current = alias_version(client, name, CHAMPION)
    previous = str(current.version) if current is not None else None
    if previous == str(version):
        return previous
    when = datetime.now(UTC).isoformat(timespec="seconds")
    who = getpass.getuser()
    kept = {}  # the gate's own decision stays on record beside the person's
    for key in ("reason", "decided_at"):
        if recorded.get(TAG_PREFIX + key):
            kept[f"{TAG_PREFIX}gate_{key}"] = recorded[TAG_PREFIX + key]
    tags = {
        **kept,
        TAG_PREFIX + "promoted": "true",
        TAG_PREFIX + "promoted_at": when,
        TAG_PREFIX + "decided_at": when,
        TAG_PREFIX + "previous_champion": previous or "none",
        TAG_PREFIX + "reason": f"promoted by hand by {who}: {reason}",
        MANUAL_TAG: who,
        DECISION_TAG: "promoted",
    }
    promote(client, name, version, tags)
    return previous


def parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("version", help="the registered version to make @champion, e.g. 3")
    p.add_argument("--reason", required=True, help="why, recorded on the version (required)")
    p.add_argument("--model-name", help="the registered model (default: register.model_name)")
    p.add_argument("--tracking-uri", help="the MLflow store (default: as the pipeline uses)")
    return p


def main(argv: list[str] | None = None, prog: str = "nnops promote") -> int:
    """Run ``nnops promote``: 0 when the version is champion, 2 when refused.

    Args:
        argv: arguments, for tests; defaults to ``sys.argv[1:]``.
        prog: the program name used in messages.
    """
    from nnops.config import ConfigError, load_params
    from nnops.stage import start_command

    args = start_command(parser(prog), argv)
    try:
        if not args.reason.strip():
            raise NnopsError("--reason is empty; say why this version is promoted by hand")
        uri, name = args.tracking_uri, args.model_name
        params = load_params() if Path("params.yaml").is_file() else None
        if uri is None:
            from nnops.predict import default_tracking_uri

            uri = default_tracking_uri()
        if name is None:
            if params is None:
                raise NnopsError("no params.yaml here to read register.model_name from; pass "
                                 "--model-name")  # fmt: skip
            name = params.registry.model_name
        import mlflow

        from nnops.lease import register_lease
        from nnops.predict import check_store_exists
        from nnops.tracking import ensure_reachable

        check_store_exists(uri)
        ensure_reachable(uri, params.mlflow.connect_timeout_s if params else 10.0)
        client = mlflow.MlflowClient(uri)
        with register_lease(uri, name):
            previous = promote_by_hand(client, name, str(args.version), args.reason.strip())
    except (NnopsError, ConfigError) as exc:
        print(f"{prog}: error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the alias moves last, so all or nothing
        from nnops.stage import stopped

        return stopped(prog, exc, "if the alias had not moved yet, @champion is unchanged")
    if previous == str(args.version):
        print(f"{prog}: {name} version {args.version} is already @champion; nothing changed")
    else:
        was = f"was version {previous}" if previous else "the first champion"
        print(f"{prog}: {name} version {args.version} is now @champion ({was})")
        print(f"{prog}: reports/registry.json and the run report still describe the last "
              "pipeline run's gate; the registry and nnops predict use the new one")  # fmt: skip
    return 0
