"""Draw docs/figures/cluster.png: `kmeans-transformer cluster` on scikit-learn's bundled wine data, standardised."""

import sys
import tempfile
from pathlib import Path

from sklearn.datasets import load_wine
from sklearn.preprocessing import StandardScaler

from kmeans_transformer.cli import main


def write_wine_csv(path: Path) -> Path:
    """The 178 wines' 13 measurements, standardised, and their cultivar as a text column (not a feature)."""
    wine = load_wine(as_frame=True)
    table = wine.data.copy()
    table[:] = StandardScaler().fit_transform(table)
    table["cultivar"] = [wine.target_names[t] for t in wine.target]
    table.to_csv(path, index=False)
    return path


if __name__ == "__main__":
    figure = Path(__file__).parent / "figures" / "cluster.png"
    with tempfile.TemporaryDirectory() as scratch:
        table = write_wine_csv(Path(scratch) / "wine.csv")
        sys.exit(
            main(
                [
                    "cluster", str(table), "--n-clusters", "3", "--init", "random", "--n-init", "10",
                    "--seed", "0", "--output", str(Path(scratch) / "wine_clusters.csv"),
                    "--plot", str(figure), "--overwrite", "--no-progress",
                ]
            )
        )
