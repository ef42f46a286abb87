//! Parquet datasets with polars: preprocessing, streaming batches, sharding. Filled by the data issue.
