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
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .files import PARTIAL_SUFFIX, check_new_path, replacing_file


INPUT_SUFFIXES = (".csv", ".parquet", ".npy")
OUTPUT_SUFFIXES = (".csv", ".parquet")
# What a parser raises on a file it cannot read; anything else is a bug and propagates.
_PARSER_ERRORS = (OSError, ValueError, TypeError, pa.ArrowException, pd.errors.ParserError)


def read_points(
    path, columns: list[str] | None = None, exclude: tuple[str, ...] = ()
) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """
    Read a table and the points to cluster from it: `(table, X, feature_names)`. `exclude`: columns that are not
    features (a weight column), left out of the default features and refused among `columns`.

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
    if columns is not None and set(columns) & set(exclude):
        raise ValueError(f"Column {sorted(set(columns) & set(exclude))[0]!r} cannot be both a feature and the weights.")
    if columns is None and exclude:
        require_columns(list(types), list(exclude), str(path))
        columns = [name for name in types if name not in exclude and is_number_type(types[name])]
        if not columns:
            raise ValueError(f"{path} has no numeric columns besides {', '.join(exclude)}.")
    features = FeatureColumns.select(types, columns, str(path))
    arrow = pa.table({name: arrays[name] for name in features.names})
    features.resolve_widths(arrow)
    return table, features.values(arrow), features.feature_names


def sample_weights(table: pd.DataFrame, name: str, source) -> np.ndarray:
    """
    The column `name` of `table` as float64 sample weights `(n,)`: numbers, finite, non-negative and not all 0
    (`ValueError` naming the column and the first bad row otherwise).
    """
    require_columns([str(column) for column in table.columns], [name], str(source))
    column = table[name]
    if column.dtype == bool or not pd.api.types.is_numeric_dtype(column):
        raise ValueError(f"The weight column {name!r} of {source} is not numeric (dtype {column.dtype}).")
    weights = column.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if bad.size:
        raise ValueError(
            f"The weight column {name!r} of {source} must hold finite numbers >= 0; row {bad[0]} holds "
            f"{weights[bad[0]]!r}."
        )
    if not weights.sum() > 0:
        raise ValueError(f"The weight column {name!r} of {source} sums to 0: no row would count.")
    return weights


def write_table(table: pd.DataFrame, path, overwrite: bool = False) -> None:
    """
    Write `table` as `.csv` or `.parquet`, by `path`'s suffix; refuse an existing `path` unless `overwrite`. The file
    is written under a temporary name next to `path` and renamed into place when complete (`files.replacing_file`),
    so an error or an interrupt leaves `path` as it was. The index is written only when it carries information (it
    has a name or is not 0, 1, ..., n - 1). In a CSV, list-valued cells are written as JSON lists.
    """
    path = check_output_path(path, OUTPUT_SUFFIXES, overwrite)
    with replacing_file(path, overwrite) as temporary:
        write_table_file(table, temporary, path.suffix)


def write_table_file(table: pd.DataFrame, file, suffix: str) -> None:
    """Write `table` to exactly `file` in the format of `suffix` (`.csv` or `.parquet`), no checks: `write_table`'s
    step inside `files.replacing_file`, for a caller that renames several outputs into place together."""
    if suffix.lower() == ".csv":
        table = table.copy()
        for name in table.columns:
            if _is_list_column(table[name]):
                table[name] = table[name].map(lambda cell: None if cell is None else json.dumps(np.asarray(cell).tolist()))
        table.to_csv(file, index=_meaningful_index(table))
    else:
        table.to_parquet(file, index=_meaningful_index(table))


# ---------------------------------------------------------------------------------------------------------------------
# Output paths, checked before any work (the rules are files.py's: a symbolic link counts as existing, an output is
# replaced only with `overwrite`); what is written then goes through `files.replacing_file` / `replacing_directory`.
# ---------------------------------------------------------------------------------------------------------------------


def check_output_path(
    path, suffixes: tuple[str, ...], overwrite: bool = False, what: str = "output", how: str = "pass --overwrite"
) -> Path:
    """
    Check an output file before any work: `path` ends in one of `suffixes`, is not a directory, does not exist unless
    `overwrite` (`files.check_new_path`: a symbolic link, even a dangling one, exists; the error says `how`), and its
    directory can be created and written.
    """
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"Cannot write {path}: the {what} must end in {' or '.join(suffixes)}.")
    if path.is_dir() and not path.is_symlink():
        raise FileExistsError(f"{path} is a directory.")
    check_new_path(path, overwrite, how)
    check_writable_parent(path)
    return path


def check_output_directory(
    path, overwrite: bool, is_previous: Callable[[Path], bool], kind: str, how: str = "pass --overwrite"
) -> Path:
    """
    Check an output directory before any work. Refused: a file; a symbolic link or a non-empty directory unless
    `overwrite`; with `overwrite`, a non-empty directory that `is_previous` does not recognise as a previous output of
    this `kind` (replacing it would delete whatever it holds); a directory that cannot be created. An empty directory
    is accepted.
    """
    path = Path(path)
    if path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} is a symbolic link; {how} to replace it.")
    elif path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a directory.")
        if any(path.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{path} is not empty; {how} to replace it.")
            if not is_previous(path):
                raise FileExistsError(
                    f"{path} is a non-empty directory that is not {kind}; refusing to replace it (and delete what it "
                    "holds): remove it yourself or choose another path."
                )
    check_writable_parent(path)
    return path


def check_writable_parent(path) -> None:
    """`path`'s directory exists or can be created, and can be written (an `OSError` otherwise)."""
    ancestor = Path(os.path.abspath(path)).parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(f"Cannot write {path}: {ancestor} is not a directory.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"Cannot write {path}: no permission to write in {ancestor}.")


def refuse_partial(path) -> None:
    """A `ValueError` for a temporary output name (`.NAME….partial`): an output being written, or one left by a killed
    run, never complete."""
    name = Path(path).name
    if name.startswith(".") and name.endswith(PARTIAL_SUFFIX):
        raise ValueError(
            f"{path} is an incomplete output (a temporary name, of a run in progress or one that was killed); it "
            "cannot be read. A leftover can be deleted."
        )


def _meaningful_index(table: pd.DataFrame) -> bool:
    index = table.index
    default = isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1
    return not default or any(name is not None for name in index.names)


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise ValueError(f"{path} does not exist.")
    refuse_partial(path)
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
            is_npy = handle.read(6) == b"\x93NUMPY"
            if is_npy:
                handle.seek(0)
                _check_npy_size(path, handle)
        array = np.load(path, allow_pickle=False) if is_npy else None
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


def _check_npy_size(path: Path, handle) -> None:
    """
    Refuse a .npy file whose header declares more data than the file holds (truncated, or a forged shape such as
    10^12 rows), before anything is allocated: the header's shape and dtype against the bytes after it.
    """
    from numpy.lib import format as npy_format

    version = npy_format.read_magic(handle)
    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
    if version not in readers:  # version 3 (UTF-8 field names): numpy's own checks apply
        return
    shape, _, dtype = readers[version](handle)
    if dtype.hasobject:
        raise ValueError(f"{path} holds Python objects, not numbers.")
    needed = math.prod(shape) * dtype.itemsize
    available = os.fstat(handle.fileno()).st_size - handle.tell()
    if needed > available:
        raise ValueError(
            f"{path} declares an array of shape {shape} of {dtype} ({needed:,} bytes of data) but holds {available:,} "
            "bytes: it is truncated or corrupt."
        )


def load_saved_dataset(path):
    """
    The `datasets.Dataset` that `save_to_disk` wrote in the directory `path`. A `DatasetDict` directory (its splits are
    named: give one split's directory) or any other directory is a one-line `ValueError`.
    """
    path = Path(path)
    refuse_partial(path)
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
        raise ValueError(
            f"{path} is a directory but not a dataset written by datasets' save_to_disk (or an incomplete one: "
            "state.json, which save_to_disk writes last, is missing)."
        )
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
