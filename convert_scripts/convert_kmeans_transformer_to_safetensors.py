"""Write an analytic k-means transformer checkpoint, validated against the reference algorithm first.

    python convert_scripts/convert_kmeans_transformer_to_safetensors.py --n-clusters 8 --point-dim 2 \
        --num-iterations 10 --output checkpoints/lloyd-k8-d2-t10

The same as `kmeans-transformer convert ...`; see `kmeans_transformer.convert` for the steps (the validation is
`kmeans_transformer.validation`, the model card `kmeans_transformer.cards`).
"""

import sys

from kmeans_transformer.cli import main


if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
