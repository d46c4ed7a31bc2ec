"""Read points from tables and write tables, for the `kmeans-transformer cluster` command.

Inputs are `.csv`, `.parquet` and `.npy` files (a 2-D numeric array, whose columns are named `x0`, `x1`, ...) and
directories written by `datasets.Dataset.save_to_disk`. A `DatasetDict` directory holds one directory per split and
is refused with the names of its splits: give the split's own directory (`DIR/train`). Every problem with the input
is a `ValueError` with a one-line message that names the path and, where it applies, the column.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow


INPUT_SUFFIXES = (".csv", ".parquet", ".npy")
OUTPUT_SUFFIXES = (".csv", ".parquet")
# What a parser raises on a file it cannot read; anything else is a bug and propagates.
_PARSER_ERRORS = (OSError, ValueError, TypeError, pyarrow.ArrowException, pd.errors.ParserError)


def read_points(path, columns: list[str] | None = None) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """
    Read a table and the points to cluster from it: `(table, X, feature_names)`.

    `table` holds every column of the input; `X` is float64 `(n, d)`. Without `columns`, the features are all numeric
    columns (integers and floats, not booleans) in table order. With `columns`, exactly those, in that order; a named
    column whose cells are equally long lists of numbers (an embedding) gives one feature per entry, named
    `name[0]`, `name[1]`, ...
    """
    path = Path(path)
    table = _read_table(path)
    if len(table) == 0:
        raise ValueError(f"{path} has no rows.")
    names = {str(name): name for name in table.columns}
    if columns is None:
        selected = [name for name in table.columns if _is_numeric(table[name].dtype)]
        if not selected:
            lists = [str(name) for name in table.columns if _is_list_column(table[name])]
            hint = f"; list-valued columns must be selected by name: {', '.join(lists)}" if lists else ""
            raise ValueError(f"{path} has no numeric columns (columns: {', '.join(names)}){hint}.")
    else:
        if not columns:
            raise ValueError("No columns selected.")
        duplicates = sorted({name for name in columns if columns.count(name) > 1})
        if duplicates:
            raise ValueError(f"Column {duplicates[0]!r} is selected more than once.")
        missing = [name for name in columns if name not in names]
        if missing:
            raise ValueError(f"{path} has no column {missing[0]!r}; available columns: {', '.join(names)}.")
        selected = [names[name] for name in columns]
    blocks, feature_names = [], []
    for name in selected:
        block, block_names = _column_values(table[name], str(name), path)
        blocks.append(block)
        feature_names.extend(block_names)
    X = np.concatenate(blocks, axis=1)
    return table, X, feature_names


def write_table(table: pd.DataFrame, path, overwrite: bool = False) -> None:
    """
    Write `table` as `.csv` or `.parquet`, by `path`'s suffix; refuse an existing `path` unless `overwrite`. The index
    is written only when it carries information (it has a name or is not 0, 1, ..., n - 1). In a CSV, list-valued
    cells are written as JSON lists.
    """
    path = Path(path)
    check_output_path(path, OUTPUT_SUFFIXES, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        table = table.copy()
        for name in table.columns:
            if _is_list_column(table[name]):
                table[name] = table[name].map(lambda cell: None if cell is None else json.dumps(np.asarray(cell).tolist()))
        table.to_csv(path, index=_meaningful_index(table))
    else:
        table.to_parquet(path, index=_meaningful_index(table))


def check_output_path(
    path, suffixes: tuple[str, ...], overwrite: bool = False, what: str = "output", how: str = "pass --overwrite"
) -> Path:
    """Check that `path` ends in one of `suffixes` and, unless `overwrite`, does not exist yet (the error says `how`)."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"Cannot write {path}: the {what} must end in {' or '.join(suffixes)}.")
    if path.is_dir():
        raise FileExistsError(f"{path} is a directory.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; {how} to replace it.")
    return path


def _meaningful_index(table: pd.DataFrame) -> bool:
    index = table.index
    default = isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1
    return not default or any(name is not None for name in index.names)


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise ValueError(f"{path} does not exist.")
    if path.is_dir():
        return _read_dataset(path)
    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise ValueError(
            f"Cannot read {path}: unsupported file type {path.suffix or '(none)'!r}; expected "
            f"{', '.join(INPUT_SUFFIXES)} or a directory written by datasets' save_to_disk."
        )
    if suffix == ".npy":
        return _read_npy(path)
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty.") from None
    except _PARSER_ERRORS as error:
        raise ValueError(f"Cannot read {path} as {'CSV' if suffix == '.csv' else 'Parquet'}: {_one_line(error)}") from error


def _read_npy(path: Path) -> pd.DataFrame:
    try:
        with open(path, "rb") as handle:
            header = handle.read(6)
        array = np.load(path, allow_pickle=False) if header == b"\x93NUMPY" else None
    except _PARSER_ERRORS as error:
        raise ValueError(f"Cannot read {path} as a NumPy array: {_one_line(error)}") from error
    if array is None:
        raise ValueError(f"Cannot read {path}: not a .npy file (no NumPy header).")
    if not isinstance(array, np.ndarray) or array.ndim != 2 or array.dtype.kind not in "iuf":
        shape = getattr(array, "shape", None)
        raise ValueError(f"{path} must hold a 2-D array of integers or floats, not shape {shape} of {array.dtype}.")
    if array.shape[1] == 0:
        raise ValueError(f"{path} has no columns.")
    return pd.DataFrame(array, columns=[f"x{i}" for i in range(array.shape[1])])


def load_saved_dataset(path):
    """
    The `datasets.Dataset` that `save_to_disk` wrote in the directory `path`. A `DatasetDict` directory (its splits are
    named: give one split's directory) or any other directory is a one-line `ValueError`.
    """
    path = Path(path)
    if (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            splits = sorted(child.name for child in path.iterdir() if child.is_dir())
        raise ValueError(
            f"{path} holds a DatasetDict with splits {', '.join(splits)}; give one split's directory, "
            f"e.g. {path / splits[0]}." if splits else f"{path} holds a DatasetDict without splits."
        )
    if not (path / "state.json").is_file():
        raise ValueError(f"{path} is a directory but not a dataset written by datasets' save_to_disk.")
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except _PARSER_ERRORS as error:
        raise ValueError(f"Cannot read the dataset in {path}: {_one_line(error)}") from error


def _read_dataset(path: Path) -> pd.DataFrame:
    return load_saved_dataset(path).to_pandas()


def _is_numeric(dtype) -> bool:
    return (
        pd.api.types.is_numeric_dtype(dtype)
        and not pd.api.types.is_bool_dtype(dtype)
        and not pd.api.types.is_complex_dtype(dtype)
    )


def _is_list_column(series: pd.Series) -> bool:
    if series.dtype != object:
        return False
    cells = series.dropna()
    return len(cells) > 0 and isinstance(cells.iloc[0], (list, tuple, np.ndarray))


def _column_values(series: pd.Series, name: str, path: Path) -> tuple[np.ndarray, list[str]]:
    """One column's values as float64 `(n, width)` and the feature names of its `width` coordinates."""
    if _is_numeric(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)[:, None]
        feature_names = [name]
    elif _is_list_column(series):
        values = _list_values(series, name, path)
        feature_names = [f"{name}[{i}]" for i in range(values.shape[1])]
    else:
        raise ValueError(f"Column {name!r} of {path} is not numeric (dtype {series.dtype}).")
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise ValueError(f"Column {name!r} of {path} has NaN, infinite or missing values in {int(bad.sum())} of {len(bad)} rows.")
    return values, feature_names


def _list_values(series: pd.Series, name: str, path: Path) -> np.ndarray:
    rows, lengths = [], set()
    for position, cell in enumerate(series.to_numpy()):
        if cell is None or (not isinstance(cell, (list, tuple, np.ndarray)) and pd.isna(cell)):
            missing = int(series.isna().sum())
            raise ValueError(f"Column {name!r} of {path} has NaN, infinite or missing values in {missing} of {len(series)} rows.")
        try:
            row = np.asarray(cell)
        except ValueError:  # nested lists of different lengths
            row = np.asarray(cell, dtype=object)
        if row.ndim != 1 or row.dtype.kind not in "iuf":
            raise ValueError(
                f"Column {name!r} of {path} must hold flat lists of numbers; row {position} holds {_describe(row)}."
            )
        rows.append(row)
        lengths.add(len(row))
        if len(lengths) > 1:
            raise ValueError(
                f"Column {name!r} of {path} holds lists of different lengths ({', '.join(map(str, sorted(lengths)))}); "
                "every row needs the same number of entries."
            )
    if lengths == {0}:
        raise ValueError(f"Column {name!r} of {path} holds empty lists.")
    return np.stack(rows).astype(np.float64)


def _describe(row: np.ndarray) -> str:
    if row.ndim != 1:
        return f"an array of shape {row.shape}"
    return f"values of type {row.dtype}"


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if text else type(error).__name__
