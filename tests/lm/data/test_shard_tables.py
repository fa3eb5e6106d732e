"""ShardWriter.write_table / reject_table: the same bytes and counts as writing row by row."""

import pyarrow as pa

from lm.data.shards import Stage, read_manifest
from lm.data.sinks import ROW_GROUP_ROWS

SCHEMA = pa.schema([("id", pa.string()), ("n", pa.int64())])


def _rows(k: int) -> list[dict]:
    return [{"id": f"d{i}", "n": i} for i in range(k)]


def test_tables_write_the_bytes_rows_write(tmp_path):
    rows = _rows(2 * ROW_GROUP_ROWS + 77)
    reasons = ["odd" if r["n"] % 2 else "even" for r in rows[:300]]
    by_row = Stage(tmp_path / "a", "s", version="1", config={})
    with by_row.open_shard(0, schema=SCHEMA) as w:
        for r in rows:
            w.count_in()
            w.write(r)
        for r, why in zip(rows[:300], reasons):
            w.reject(r, why)
    by_table = Stage(tmp_path / "b", "s", version="1", config={})
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    with by_table.open_shard(0, schema=SCHEMA) as w:
        w.count_in(len(rows))
        for start, size in [(0, 5), (5, ROW_GROUP_ROWS), (5 + ROW_GROUP_ROWS, 1), (6 + ROW_GROUP_ROWS, len(rows))]:
            w.write_table(table.slice(start, size))  # chunks that straddle row groups
        w.reject_table(table.slice(0, 200), pa.array(reasons[:200]))
        w.reject_table(table.slice(200, 100), pa.array(reasons[200:]))
    a, b = read_manifest(by_row.commit(num_shards=1)), read_manifest(by_table.commit(num_shards=1))
    assert a["counts"] == b["counts"] and b["counts"]["rejected"] == {"even": 150, "odd": 150}
    for name in ("part-00000.parquet", "rejects-00000.parquet"):
        assert (by_row.path / name).read_bytes() == (by_table.path / name).read_bytes(), name


def test_one_reason_for_a_whole_table(tmp_path):
    st = Stage(tmp_path, "s", version="1", config={})
    with st.open_shard(0, schema=SCHEMA) as w:
        w.count_in(3)
        w.reject_table(pa.Table.from_pylist(_rows(3), schema=SCHEMA), "near_duplicate")
        w.write_table(pa.Table.from_pylist([], schema=SCHEMA))
    assert read_manifest(st.commit(num_shards=1))["counts"]["rejected"] == {"near_duplicate": 3}
