"""Read points from tables and write tables, for the `kmeans-transformer cluster` command.

Inputs are `.csv`, `.parquet` and `.npy` files (a 2-D numeric array, whose columns are named `x0`, `x1`, ...) and
directories written by `datasets.Dataset.save_to_disk`. A `DatasetDict` directory holds one directory per split and
is refused with the names of its splits: give the split's own directory (`DIR/train`). Every problem with the input
is a `ValueError` with a one-line message that names the path and, where it applies, the column.

`FeatureColumns` is the one reader of feature columns: `read_points` (tables, converted to Arrow column by column)
and points mode (`points.py`, Arrow chunks of a dataset) choose, size and read their features with it, and problems
mode (`problems.py`) checks its columns with the same `require_columns`, `is_number_type` and `is_list_type`.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


INPUT_SUFFIXES = (".csv", ".parquet", ".npy")
OUTPUT_SUFFIXES = (".csv", ".parquet")
# What a parser raises on a file it cannot read; anything else is a bug and propagates.
_PARSER_ERRORS = (OSError, ValueError, TypeError, pa.ArrowException, pd.errors.ParserError)


def read_points(path, columns: list[str] | None = None) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """
    Read a table and the points to cluster from it: `(table, X, feature_names)`.

    `table` holds every column of the input; `X` is float64 `(n, d)`. Without `columns`, the features are all numeric
    columns (integers and floats, not booleans) in table order. With `columns`, exactly those, in that order; a named
    column whose cells are equally long lists of numbers (an embedding) gives one feature per entry, named
    `name[0]`, `name[1]`, ... The columns are chosen and read by `FeatureColumns`, as in points mode.
    """
    path = Path(path)
    table = _read_table(path)
    if len(table) == 0:
        raise ValueError(f"{path} has no rows.")
    arrays = {str(name): _arrow_column(table[name]) for name in table.columns}
    types = {name: array.type if isinstance(array, pa.Array) else array for name, array in arrays.items()}
    features = FeatureColumns.select(types, columns, str(path))
    arrow = pa.table({name: arrays[name] for name in features.names})
    features.resolve_widths(arrow)
    return table, features.values(arrow), features.feature_names


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


def _arrow_column(series: pd.Series) -> pa.Array | str:
    """
    A pandas column as an Arrow array if it can hold features: NumPy numbers as they are (a NaN stays a NaN), nullable
    numbers and lists through pyarrow's conversion. Any other column, or one pyarrow cannot convert, gives its type's
    name instead (it is then no feature).
    """
    dtype = series.dtype
    if isinstance(dtype, np.dtype) and _is_numeric(dtype):
        return pa.array(series.to_numpy())
    if not (_is_numeric(dtype) or _is_list_column(series)):
        return str(dtype)
    # a NaN stays a NaN, unless only pandas' conversion (which reads NaN as null) can read the column
    for from_pandas in (False, True):
        try:
            return pa.array(series, from_pandas=from_pandas)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            continue
    return f"{dtype} holding values of mixed types"


# ---------------------------------------------------------------------------------------------------------------------
# Feature columns: one reader for the tables of `read_points`, points mode's chunks and problems mode's checks.
# ---------------------------------------------------------------------------------------------------------------------


def is_number_type(kind) -> bool:
    """Whether `kind` is an Arrow integer or floating type (booleans, decimals and text are not numbers here)."""
    return isinstance(kind, pa.DataType) and (pa.types.is_integer(kind) or pa.types.is_floating(kind))


def is_list_type(kind) -> bool:
    """Whether `kind` is an Arrow list type: `list`, `large_list` or `fixed_size_list`."""
    return isinstance(kind, pa.DataType) and (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    )


def is_number_list_type(kind) -> bool:
    """Whether `kind` is an Arrow list of numbers (an embedding column)."""
    return is_list_type(kind) and is_number_type(kind.value_type)


def require_columns(available, names, source: str) -> None:
    """A `ValueError` naming the first of `names` that `source` lacks, and the columns it has."""
    available = list(available)
    for name in names:
        if name not in available:
            raise ValueError(f"{source} has no column {name!r}; available columns: {', '.join(available) or '(none)'}.")


def refuse_dataset_dict(dataset) -> None:
    """A `ValueError` for a `datasets` dictionary of splits, naming them, where one split (a dataset) is expected."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict | datasets.IterableDatasetDict):
        splits = list(dataset)
        example = f", e.g. dataset[{splits[0]!r}]" if splits else ""
        raise ValueError(
            f"Expected a dataset, got a {type(dataset).__name__} with splits {', '.join(splits) or '(none)'}; "
            f"pass one split{example}."
        )


class FeatureColumns:
    """
    The feature columns of a table and how to read them: which columns (`select`), how many coordinates each gives
    (`resolve_widths`) and the points, checked (`values`). A feature column holds numbers (integers or floats, not
    booleans: one coordinate) or lists of numbers (an embedding: one coordinate per entry, every row as long).

    Column types are Arrow types; a column without one (a pandas column that Arrow cannot hold as numbers) is
    described by a string and is no feature. Every problem is a one-line `ValueError` naming `source` and the column,
    and for a bad value the first row that has one.
    """

    def __init__(self, names: list[str], types: dict, source: str):
        self.names, self.source = names, source
        kinds = [types[name] for name in names]
        self.is_list = [is_list_type(kind) for kind in kinds]
        self.widths = [
            kind.list_size if pa.types.is_fixed_size_list(kind) else (None if is_list else 1)
            for kind, is_list in zip(kinds, self.is_list, strict=True)
        ]

    @classmethod
    def select(cls, types: dict, columns, source: str) -> "FeatureColumns":
        """
        The features among the columns `types` (name -> Arrow type, in table order) of `source`: `columns` (a name or
        a list of names, in that order), or by default every number column in table order.
        """
        available = list(types)
        if columns is None:
            names = [name for name in available if is_number_type(types[name])]
            if not names:
                lists = [name for name in available if is_number_list_type(types[name])]
                hint = f"; list-valued columns must be selected by name: {', '.join(lists)}" if lists else ""
                raise ValueError(f"{source} has no numeric columns (columns: {', '.join(available)}){hint}.")
            return cls(names, types, source)
        names = [columns] if isinstance(columns, str) else list(columns)
        if not names:
            raise ValueError("No columns selected.")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"Column {duplicates[0]!r} is selected more than once.")
        require_columns(available, names, source)
        for name in names:
            if not (is_number_type(types[name]) or is_number_list_type(types[name])):
                raise ValueError(
                    f"Column {name!r} of {source} is not numeric (type {types[name]}); features are integer and "
                    "float columns and columns of equally long lists of numbers."
                )
        return cls(names, types, source)

    @property
    def dim(self) -> int:
        """The number of coordinates (after `resolve_widths`)."""
        return sum(self.widths)

    @property
    def feature_names(self) -> list[str]:
        """One name per coordinate: the column's, or `name[i]` for entry `i` of a list column."""
        return [
            name if not is_list else f"{name}[{i}]"
            for name, is_list, width in zip(self.names, self.is_list, self.widths, strict=True)
            for i in range(width)
        ]

    def resolve_widths(self, head: pa.Table) -> None:
        """The width of each variable-length list column: the length of its first list in `head` (the first rows)."""
        for position, name in enumerate(self.names):
            if self.widths[position] is None:
                lengths = pc.list_value_length(head.column(name)).drop_null()
                if len(lengths) == 0:
                    raise ValueError(f"Column {name!r} of {self.source} has missing values in its first rows.")
                if lengths[0].as_py() == 0:
                    raise ValueError(f"Column {name!r} of {self.source} holds empty lists.")
                self.widths[position] = lengths[0].as_py()

    def values(self, table: pa.Table, indices: np.ndarray | None = None) -> np.ndarray:
        """
        The points of `table` as float64 `(rows, dim)`. `indices`: the rows' global indices (a chunk of a larger
        dataset), or None for a whole table. A missing value or entry, a list of another length, or a NaN or infinite
        value is a `ValueError` naming its first row and the chunk's rows (or how many rows of the table have one).
        """
        blocks = [
            self._block(table.column(name), name, is_list, width, indices)
            for name, is_list, width in zip(self.names, self.is_list, self.widths, strict=True)
        ]
        values = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
        return values if values.flags.writeable else values.copy()  # zero-copy Arrow buffers are read-only

    def _block(self, column, name: str, is_list: bool, width: int, indices) -> np.ndarray:
        """One column's `(rows, width)` float64 values, checked."""
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        rows = len(column)
        self._refuse(name, column.is_null().to_numpy(zero_copy_only=False), indices, "has a missing value")
        if is_list:
            lengths = np.asarray(pc.list_value_length(column).to_numpy(zero_copy_only=False))
            wrong = lengths != width
            if wrong.any():
                length = lengths[np.flatnonzero(wrong)[0]]
                problem = f"holds lists of different lengths: a list of length {length}"
                self._refuse(name, wrong, indices, problem, f"; every row needs {width} entries")
            flat = pc.list_flatten(column)
            missing = flat.is_null().to_numpy(zero_copy_only=False).reshape(rows, width).any(axis=1)
            self._refuse(name, missing, indices, "has a missing entry")
            block = flat.to_numpy(zero_copy_only=False).astype(np.float64, copy=False).reshape(rows, width)
        else:
            block = column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)[:, None]
        self._refuse(name, ~np.isfinite(block).all(axis=1), indices, "has a NaN or infinite value")
        return block

    def _refuse(self, name: str, bad: np.ndarray, indices, problem: str, rule: str = "") -> None:
        """The one-line error for the first row of `bad`, if any: `Column ... {problem} in row R (where){rule}.`"""
        if not bad.any():
            return
        first = int(np.flatnonzero(bad)[0])
        if indices is None:
            row, where = first, f"{int(bad.sum())} of {len(bad)} rows have one"
        else:
            row, where = int(indices[first]), f"chunk of rows {indices[0]}-{indices[-1]}"
        raise ValueError(f"Column {name!r} of {self.source} {problem} in row {row} ({where}){rule}.")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if text else type(error).__name__
