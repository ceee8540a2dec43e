"""``python -m workers.generative [--settings flags]``: the generative worker without the CLI wrapper."""

from __future__ import annotations

import argparse
import sys

from pipeline.config import ConfigError, add_settings_arguments, settings_fields, settings_from_args
from pipeline.errors import UserError
from workers.generative.app import run_generative_worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.generative",
                                     description="Qwen3Guard-Gen worker: full-turn rulings on guard.in")
    add_settings_arguments(parser, [f.name for f in settings_fields()])
    try:
        return run_generative_worker(settings_from_args(parser.parse_args(argv)))
    except (UserError, ConfigError) as exc:
        print(f"generative worker: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
