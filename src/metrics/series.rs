//! `GET /api/v1/series`: points of one metric over a time range, one series per source, in
//! buckets of `resolution` seconds, aggregated (avg / sum / min / max / count); counters come
//! back as the increase per bucket. Reads 1-hour rollups, 1-minute rollups or raw points —
//! the coarsest whose step divides the resolution.

use time::OffsetDateTime;

use crate::db::metrics::{Bucket, Table};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Avg,
    Sum,
    Min,
    Max,
    Count,
}

impl Aggregate {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "avg" => Aggregate::Avg,
            "sum" => Aggregate::Sum,
            "min" => Aggregate::Min,
            "max" => Aggregate::Max,
            "count" => Aggregate::Count,
            _ => return None,
        })
    }
}

/// The steps a default resolution is chosen from.
const NICE: [i64; 17] = [
    1, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400,
];

/// The coarsest step that still gives at least 300 points over `span_s` seconds.
pub fn default_resolution(span_s: i64) -> i64 {
    NICE.iter()
        .rev()
        .copied()
        .find(|step| span_s / step >= 300)
        .unwrap_or(1)
}

/// Where a resolution is read from: the coarsest stored step that divides it.
pub fn table_for(resolution: i64) -> Table {
    if resolution % 3600 == 0 {
        Table::Rollup(3600)
    } else if resolution % 60 == 0 {
        Table::Rollup(60)
    } else {
        Table::Raw
    }
}

pub use crate::domain::measurement::like_of;

#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct Series {
    pub source: String,
    /// [unix seconds, value]
    pub points: Vec<(i64, f64)>,
}

/// Turns ordered buckets (by source, then time) into series: gauges aggregated, counters as
/// the increase since the previous bucket (a drop is a reset: the new value is the increase;
/// the first bucket counts from its own smallest value).
pub fn assemble(buckets: Vec<Bucket>, aggregate: Aggregate) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    let mut prev_last: Option<f64> = None;
    for b in buckets {
        if out.last().is_none_or(|s| s.source != b.source) {
            out.push(Series {
                source: b.source.clone(),
                points: Vec::new(),
            });
            prev_last = None;
        }
        let value = if b.kind == "counter" {
            let increase = match prev_last {
                Some(p) if b.last >= p => b.last - p,
                Some(_) => b.last,
                None => b.last - b.min,
            };
            prev_last = Some(b.last);
            increase
        } else {
            match aggregate {
                Aggregate::Avg => b.sum / b.count as f64,
                Aggregate::Sum => b.sum,
                Aggregate::Min => b.min,
                Aggregate::Max => b.max,
                Aggregate::Count => b.count as f64,
            }
        };
        out.last_mut()
            .expect("pushed above")
            .points
            .push((b.t, value));
    }
    out
}

/// Sources combined into one line, bucket by bucket (`max` over the servers: the worst
/// server's CPU). A bucket counts the sources that have a value in it; `avg` divides by them.
/// Named after what it is ("max of 5 sources"); no line at all when no source has a value.
pub fn combine(series: Vec<Series>, across: Aggregate) -> Vec<Series> {
    if series.is_empty() {
        return series;
    }
    let n = series.len();
    let mut at: std::collections::BTreeMap<i64, (f64, usize)> = std::collections::BTreeMap::new();
    for s in &series {
        for &(t, v) in &s.points {
            at.entry(t)
                .and_modify(|(acc, k)| {
                    *acc = match across {
                        Aggregate::Max => acc.max(v),
                        Aggregate::Min => acc.min(v),
                        Aggregate::Avg | Aggregate::Sum => *acc + v,
                        Aggregate::Count => *acc + 1.0,
                    };
                    *k += 1;
                })
                .or_insert((if across == Aggregate::Count { 1.0 } else { v }, 1));
        }
    }
    let name = match across {
        Aggregate::Max => "max",
        Aggregate::Min => "min",
        Aggregate::Avg => "avg",
        Aggregate::Sum => "sum",
        Aggregate::Count => "count",
    };
    vec![Series {
        source: format!("{name} of {n} source{}", if n == 1 { "" } else { "s" }),
        points: at
            .into_iter()
            .map(|(t, (acc, k))| {
                (
                    t,
                    if across == Aggregate::Avg {
                        acc / k as f64
                    } else {
                        acc
                    },
                )
            })
            .collect(),
    }]
}

/// What a caller asks for, validated.
#[derive(Debug, Clone)]
pub struct Query {
    pub metric: String,
    pub source_like: String,
    pub from: OffsetDateTime,
    pub to: OffsetDateTime,
    pub resolution: i64,
    pub aggregate: Aggregate,
    /// Combine the sources into one line ([`combine`]).
    pub across: Option<Aggregate>,
}

pub async fn run(pool: &sqlx::PgPool, q: &Query) -> sqlx::Result<Vec<Series>> {
    let buckets = crate::db::metrics::buckets(
        pool,
        &q.metric,
        &q.source_like,
        q.from,
        q.to,
        q.resolution,
        table_for(q.resolution),
    )
    .await?;
    let series = assemble(buckets, q.aggregate);
    Ok(match q.across {
        Some(across) => combine(series, across),
        None => series,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_combine_bucket_by_bucket() {
        let s = |source: &str, points: &[(i64, f64)]| Series {
            source: source.into(),
            points: points.to_vec(),
        };
        let servers = || {
            vec![
                s("i-1", &[(0, 10.0), (60, 90.0)]),
                s("i-2", &[(0, 30.0), (60, 20.0), (120, 50.0)]),
            ]
        };
        let one = |across| {
            let out = combine(servers(), across);
            assert_eq!(out.len(), 1);
            assert_eq!(
                out[0].source,
                format!(
                    "{} of 2 sources",
                    match across {
                        Aggregate::Max => "max",
                        Aggregate::Min => "min",
                        Aggregate::Avg => "avg",
                        Aggregate::Sum => "sum",
                        Aggregate::Count => "count",
                    }
                )
            );
            out[0].points.clone()
        };
        assert_eq!(
            one(Aggregate::Max),
            vec![(0, 30.0), (60, 90.0), (120, 50.0)]
        );
        assert_eq!(
            one(Aggregate::Min),
            vec![(0, 10.0), (60, 20.0), (120, 50.0)]
        );
        assert_eq!(
            one(Aggregate::Sum),
            vec![(0, 40.0), (60, 110.0), (120, 50.0)]
        );
        // A bucket where one source reported averages over that one.
        assert_eq!(
            one(Aggregate::Avg),
            vec![(0, 20.0), (60, 55.0), (120, 50.0)]
        );
        assert_eq!(one(Aggregate::Count), vec![(0, 2.0), (60, 2.0), (120, 1.0)]);
        assert!(combine(Vec::new(), Aggregate::Max).is_empty());
    }

    /// A bucket; `mml` is [min, max, last].
    fn bucket(source: &str, kind: &str, t: i64, count: i64, sum: f64, mml: [f64; 3]) -> Bucket {
        Bucket {
            source: source.into(),
            kind: kind.into(),
            t,
            count,
            sum,
            min: mml[0],
            max: mml[1],
            last: mml[2],
        }
    }

    #[test]
    fn resolutions() {
        assert_eq!(default_resolution(3600), 10);
        assert_eq!(default_resolution(6 * 3600), 60);
        assert_eq!(default_resolution(86_400), 120);
        assert_eq!(default_resolution(30 * 86_400), 7200);
        assert_eq!(default_resolution(60), 1);
        assert_eq!(table_for(120), Table::Rollup(60));
        assert_eq!(table_for(7200), Table::Rollup(3600));
        assert_eq!(table_for(10), Table::Raw);
        assert_eq!(like_of("web-*.a_b%"), "web-%.a\\_b\\%");
    }

    #[test]
    fn gauges_aggregate_and_counters_increase() {
        let g = assemble(
            vec![
                bucket("a", "gauge", 0, 2, 10.0, [4.0, 6.0, 6.0]),
                bucket("b", "gauge", 0, 1, 3.0, [3.0, 3.0, 3.0]),
            ],
            Aggregate::Avg,
        );
        assert_eq!(g[0].points, vec![(0, 5.0)]);
        assert_eq!(g[1].source, "b");
        let c = assemble(
            vec![
                bucket("a", "counter", 0, 2, 0.0, [10.0, 15.0, 15.0]),
                bucket("a", "counter", 60, 1, 0.0, [22.0, 22.0, 22.0]),
                bucket("a", "counter", 120, 1, 0.0, [4.0, 4.0, 4.0]),
            ],
            Aggregate::Avg,
        );
        assert_eq!(c[0].points, vec![(0, 5.0), (60, 7.0), (120, 4.0)]);
    }
}
