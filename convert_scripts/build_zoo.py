"""Write the zoo: every variant at a few (k, d, T), each checkpoint validated and carded, and a README table.

    python convert_scripts/build_zoo.py --output zoo --owner OWNER
    python convert_scripts/build_zoo.py --output zoo-small --variants lloyd,spherical --sizes 4x2x5

The same as `kmeans-transformer zoo ...`; see `kmeans_transformer.zoo`. Push the result with the loop in
`zoo/README.md` (`kmeans-transformer push zoo/NAME --repo-id OWNER/NAME` per checkpoint).
"""

import sys

from kmeans_transformer.cli import main


if __name__ == "__main__":
    sys.exit(main(["zoo", *sys.argv[1:]]))
