"""Tiled's Parquet adapter, reading with pyarrow: how the server reads compacted days.

Tiled's own :class:`~tiled.adapters.parquet.ParquetDatasetAdapter` reads through dask, which
splits a file larger than 256 MiB into partitions by row group (the index then restarts at
every group) and costs ~0.4 s of scheduling on a day of 864,000 rows that pyarrow reads in
0.04 s. This one reads each file whole, the requested columns only, as Tiled's SQL adapter
answers (a pandas frame with a plain index). Files, structure and catalog entries are
Tiled's own: a stock ``tiled serve`` of the same catalog reads them with its adapter.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tiled.adapters.array import ArrayAdapter
from tiled.adapters.parquet import ParquetDatasetAdapter
from tiled.structures.table import TableStructure

from .tiled_internals import asset_paths


class ParquetTable(ParquetDatasetAdapter):
    """A table stored as Parquet files (one per partition), read with pyarrow."""

    def __init__(self, data_uris: str | list[str], structure: TableStructure, *,
                 metadata: dict | None = None, specs: list | None = None):
        super().__init__(data_uris, structure, metadata=metadata, specs=specs)
        self.paths = asset_paths(data_uris)

    def read(self, fields: list[str] | None = None) -> pd.DataFrame:
        parts = [pq.read_table(path, columns=fields) for path in self.paths]
        return pa.concat_tables(parts).to_pandas()

    def read_partition(self, partition: int, fields: list[str] | None = None) -> pd.DataFrame:
        return pq.read_table(self.paths[partition], columns=fields).to_pandas()

    def get(self, key: str) -> ArrayAdapter | None:
        if key not in self.structure().columns:
            return None
        return ArrayAdapter.from_array(self.read([key])[key].to_numpy())
