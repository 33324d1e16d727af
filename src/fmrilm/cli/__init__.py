"""The `fmrilm` command. Stages register their subcommands; only `fmrilm.cli` imports it."""

from __future__ import annotations

import argparse
import importlib
import sys

# Stage modules that register subcommands: each has add_parser(subparsers) and run(args).
STAGES = (
    "fmrilm.cli.data",
    "fmrilm.cli.baselines",
    "fmrilm.cli.tokenizer",
    "fmrilm.cli.lm",
    "fmrilm.cli.study",
    "fmrilm.cli.predict",
)


def csv_list(text: str) -> list[str]:
    """argparse type: a comma-separated, non-empty list."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated, non-empty list")
    return items


def add_set_option(parser: argparse.ArgumentParser, help: str, dest: str = "overrides") -> None:
    """The repeatable ``--set KEY=VALUE`` option that :func:`apply_sets` applies."""
    parser.add_argument(
        "--set", dest=dest, action="append", default=[], metavar="KEY=VALUE", help=help
    )


def apply_sets(cfg: dict, items: list[str] | None, given: set[str] = frozenset()) -> dict:
    """Apply ``--set KEY=VALUE`` overrides (dotted keys, YAML values) to a nested dict in place.

    ``given`` names the keys that dedicated options already set (dotted for nested ones): a
    ``--set`` of the same key, or of one inside or above it, is refused rather than left to
    silently win or lose.
    """
    import yaml

    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        if any(key == g or key.startswith(g + ".") or g.startswith(key + ".") for g in given):
            raise ValueError(f"--set {item!r} and an option both set {key!r}: give it once")
        set_dotted(cfg, key, yaml.safe_load(raw) if raw != "" else "")
    return cfg


def set_dotted(cfg: dict, key: str, value) -> None:
    """``cfg["a"]["b"] = value`` for ``key="a.b"``, creating missing levels."""
    node = cfg
    *parents, leaf = key.split(".")
    for name in parents:
        node = node.setdefault(name, {})
        if not isinstance(node, dict):
            raise ValueError(f"config key {key!r}: {name!r} is not a mapping")
    node[leaf] = value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmrilm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in STAGES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a missing dependency, not a stage that is not there
                raise
            continue
        module.add_parser(subparsers)
    return parser


def _version() -> str:
    from fmrilm import __version__

    return f"fmrilm {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        print(f"fmrilm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
