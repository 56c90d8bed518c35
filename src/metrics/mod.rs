//! Librato-style metrics: ingest (the two Librato formats, validated in `ingest`), storage in
//! PostgreSQL (raw points + 1-minute and 1-hour rollups, kept by `rollup`, in tables
//! partitioned by time: `storage`), and series
//! queries (`series`) that pick the coarsest stored resolution that still fills the chart.

pub mod dashboard_edits;
pub mod dashboards;
pub mod ingest;
pub mod recorder;
pub mod rollup;
pub mod series;
pub mod series_ids;
pub mod storage;
