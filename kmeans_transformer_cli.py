"""
The `kmeans-transformer` console command's entry point. It parses the command line before the package runs its
`__init__` (which imports torch and transformers for the Auto registration, a few seconds), so that `--help` and
argument errors answer at once: the package module is created without being executed, the parser
(`kmeans_transformer.cli`, standard library only, with its registry snapshot `kmeans_transformer.command_options`) is
imported from it, and the package's `__init__` runs once the arguments are parsed, before the command.
`python -m kmeans_transformer.cli` runs the same command through the ordinary import.
"""

import importlib
import importlib.util
import sys


def main() -> int:
    if "kmeans_transformer" in sys.modules:  # imported already: nothing to defer
        from kmeans_transformer import cli

        return cli.main()
    spec = importlib.util.find_spec("kmeans_transformer")
    package = importlib.util.module_from_spec(spec)
    sys.modules["kmeans_transformer"] = package
    try:
        cli = importlib.import_module("kmeans_transformer.cli")
        args = cli.parse_arguments()
    except BaseException:
        for name in [name for name in sys.modules if name.partition(".")[0] == "kmeans_transformer"]:
            del sys.modules[name]
        raise
    spec.loader.exec_module(package)
    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
