"""
Rewrite `kmeans_transformer/command_options.py`, the snapshot of the registries that the `kmeans-transformer` command
parses with (`kmeans_transformer.cli.command_line_options`), after a variant, a parameter, a zoo size, a task family
or an evaluation setting changed: `python scripts/write_command_options.py`. tests/test_cli.py fails until it is run.
"""

import pprint
from pathlib import Path

from kmeans_transformer.cli import command_line_options
from kmeans_transformer.files import replacing_file


HEADER = '''"""
What the command line's parser reads from the package's registries, as plain data, so that `kmeans-transformer --help`
and argument errors import neither torch nor transformers. Written by `python scripts/write_command_options.py` from
`kmeans_transformer.cli.command_line_options()`; a test checks that it still equals it. Do not edit by hand.
"""

'''


def main():
    path = Path(__file__).resolve().parent.parent / "kmeans_transformer" / "command_options.py"
    text = HEADER + "OPTIONS = " + pprint.pformat(command_line_options(), width=120, sort_dicts=False) + "\n"
    with replacing_file(path, overwrite=True) as temporary:
        Path(temporary).write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
