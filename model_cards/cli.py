"""The ``KIND FOLDER --repo-id ...`` command line shared by ``geollava-card`` and ``geollava-push``."""

import sys

from transformers import HfArgumentParser


def parse_kind_folder_args(dataclass_type, argv: list[str] | None, *, prog: str, usage: str, description: str):
    """Parse ``KIND FOLDER --flags`` into ``dataclass_type`` (the two positionals become ``--kind``/``--folder``).

    Args:
        dataclass_type: A dataclass with ``kind`` and ``folder`` fields.
        argv: The arguments; ``None`` reads ``sys.argv[1:]``.
        prog: The command's name (for ``--help`` and errors).
        usage: The usage line.
        description: The ``--help`` description.

    Returns:
        The parsed dataclass.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    positional = []
    while argv and not argv[0].startswith("-") and len(positional) < 2:
        positional.append(argv.pop(0))
    argv = [a for name, v in zip(("--kind", "--folder"), positional, strict=False) for a in (name, v)] + argv
    parser = HfArgumentParser(dataclass_type, prog=prog, usage=usage, description=description)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return args
