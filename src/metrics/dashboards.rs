//! Dashboards: charts of series. The built-in "Fleet" dashboard mixes the console's own
//! figures with the agents' system figures; releases, rollbacks and posted annotations are
//! drawn on every chart as markers.

pub use crate::domain::measurement::SeriesSpec;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Chart {
    pub title: String,
    pub unit: String,
    /// Lines drawn on top of each other, the area under each filled (totals at a glance).
    pub stacked: bool,
    pub series: Vec<SeriesSpec>,
}

fn line(metric: &str, aggregate: &str, label: &str) -> SeriesSpec {
    SeriesSpec {
        metric: metric.into(),
        source: "*".into(),
        aggregate: aggregate.into(),
        label: label.into(),
        across: String::new(),
    }
}

fn chart(title: &str, unit: &str, series: Vec<SeriesSpec>) -> Chart {
    Chart {
        title: title.into(),
        unit: unit.into(),
        stacked: false,
        series,
    }
}

/// The default dashboard: app and server metrics side by side.
pub fn fleet() -> Vec<Chart> {
    vec![
        chart(
            "Jobs queued and running",
            "jobs",
            vec![
                line("kiln.jobs.queued", "max", "queued"),
                line("kiln.jobs.running", "max", "running"),
            ],
        ),
        chart(
            "Jobs finished",
            "jobs per interval",
            vec![
                line("kiln.jobs.succeeded", "sum", "succeeded"),
                line("kiln.jobs.failed", "sum", "failed"),
            ],
        ),
        chart(
            "Job duration",
            "seconds",
            vec![
                line("kiln.job.duration", "avg", "average"),
                line("kiln.job.duration", "max", "longest"),
            ],
        ),
        Chart {
            stacked: true,
            ..chart(
                "Servers by state and image",
                "servers",
                vec![line("kiln.servers", "max", "")],
            )
        },
        chart("CPU per server", "%", vec![line("system.cpu", "avg", "")]),
        chart(
            "Memory per server",
            "%",
            vec![line("system.mem", "avg", "")],
        ),
        chart(
            "Load per server",
            "load (1 min)",
            vec![line("system.load", "avg", "")],
        ),
        chart(
            "EC2 calls",
            "calls per interval",
            vec![line("kiln.ec2.calls", "sum", "")],
        ),
    ]
}

/// A server's own small graphs (its page, the last hour): CPU, memory and load.
pub fn server(id: &str) -> Vec<Chart> {
    let of = |metric: &str, label: &str| SeriesSpec {
        metric: metric.into(),
        source: id.into(),
        aggregate: "avg".into(),
        label: label.into(),
        across: String::new(),
    };
    vec![
        chart("CPU", "%", vec![of("system.cpu", "cpu")]),
        chart("Memory", "%", vec![of("system.mem", "memory")]),
        chart("Load", "load (1 min)", vec![of("system.load", "load")]),
    ]
}

/// Why a chart can have no data under `provider`, when every series is a metric that provider
/// never records (EC2 calls under `local`); empty when it can have data.
pub fn no_data_under(series: &[SeriesSpec], provider: &str) -> String {
    let only_ec2 = !series.is_empty() && series.iter().all(|s| s.metric.starts_with("kiln.ec2."));
    if provider != "aws" && only_ec2 {
        format!(
            "No data under the {provider} provider: Kiln makes EC2 calls only with KILN_PROVIDER=aws."
        )
    } else {
        String::new()
    }
}

/// The Overview's three small graphs (the last hour).
pub fn overview() -> Vec<Chart> {
    let fleet = fleet();
    [0usize, 3, 4].iter().map(|&i| fleet[i].clone()).collect()
}

/// The ranges a chart offers, in seconds.
pub const RANGES: [(&str, i64); 5] = [
    ("1h", 3600),
    ("6h", 6 * 3600),
    ("24h", 86_400),
    ("7d", 7 * 86_400),
    ("30d", 30 * 86_400),
];

/// The end of a chart window that ends now, in whole seconds: the next second, so an event of
/// this very second (a rollback that finished a moment ago) is inside the window.
pub fn window_end() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp() + 1
}

pub fn range(name: &str) -> Option<i64> {
    RANGES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// At most this many lines' specs on one chart (each may match many sources).
pub const MAX_SERIES: usize = 10;
/// At most this many charts on one dashboard: the page draws them all at once.
pub const MAX_CHARTS: i64 = 30;
pub const AGGREGATES: [&str; 5] = ["avg", "sum", "min", "max", "count"];
/// How a series may combine its sources ("": a line per source).
pub const ACROSS: [&str; 5] = ["", "max", "min", "avg", "sum"];

/// A dashboard's name as typed: trimmed, 1 to 80 characters.
pub fn dashboard_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    match name.chars().count() {
        0 => Err("A dashboard needs a name.".into()),
        n if n > 80 => Err(format!(
            "A dashboard's name has at most 80 characters; this one has {n}."
        )),
        _ => Ok(name.to_owned()),
    }
}

/// A chart's title (1 to 100 characters) and unit (up to 40; optional).
pub fn chart_labels(title: &str, unit: &str) -> Result<(String, String), String> {
    let (title, unit) = (title.trim(), unit.trim());
    if title.is_empty() {
        return Err("A chart needs a title.".into());
    }
    if title.chars().count() > 100 {
        return Err("A chart's title has at most 100 characters.".into());
    }
    if unit.chars().count() > 40 {
        return Err("A chart's unit has at most 40 characters.".into());
    }
    Ok((title.to_owned(), unit.to_owned()))
}

/// One series as typed on a form or sent by a script: a metric name as Librato allows it, a
/// source glob (empty: every source), an aggregation, an optional legend label.
pub fn series_spec(
    metric: &str,
    source: &str,
    aggregate: &str,
    label: &str,
    across: &str,
) -> Result<SeriesSpec, String> {
    let metric = metric.trim();
    crate::metrics::ingest::check_name("Metric", metric).map_err(|e| e.0)?;
    let source = match source.trim() {
        "" => "*",
        s => s,
    };
    if source.len() > 255 || source.chars().any(char::is_control) {
        return Err(format!(
            "Source {source:?} is invalid: a source or a glob with * of at most 255 characters."
        ));
    }
    let aggregate = aggregate.trim();
    if !AGGREGATES.contains(&aggregate) {
        return Err(format!(
            "Aggregation {aggregate:?} is not one of avg, sum, min, max, count."
        ));
    }
    let label = label.trim();
    if label.chars().count() > 60 {
        return Err("A series' label has at most 60 characters.".into());
    }
    let across = across.trim();
    if !ACROSS.contains(&across) {
        return Err(format!(
            "Across sources {across:?} is not one of max, min, avg, sum (or empty: a line per source)."
        ));
    }
    Ok(SeriesSpec {
        metric: metric.to_owned(),
        source: source.to_owned(),
        aggregate: aggregate.to_owned(),
        label: label.to_owned(),
        across: across.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_specs_are_checked_like_ingest() {
        let ok = series_spec(" kiln.jobs.queued ", "", "max", "queued", "").unwrap();
        assert_eq!(ok.source, "*");
        assert_eq!(ok.metric, "kiln.jobs.queued");
        assert!(
            series_spec("bad name", "*", "avg", "", "")
                .unwrap_err()
                .contains("Metric")
        );
        assert!(
            series_spec("a", "*", "median", "", "")
                .unwrap_err()
                .contains("median")
        );
        assert!(series_spec("a", "x\ny", "avg", "", "").is_err());
        assert!(series_spec("a", "*", "avg", &"l".repeat(61), "").is_err());
        assert!(series_spec("a", "*", "avg", "", "median").is_err());
        assert_eq!(
            series_spec("system.cpu", "i-*", "avg", "worst", " max ")
                .unwrap()
                .across,
            "max"
        );
        assert!(dashboard_name("  ").is_err());
        assert_eq!(dashboard_name(" Builds ").unwrap(), "Builds");
        assert!(chart_labels("", "").is_err());
    }

    #[test]
    fn the_fleet_dashboard_is_valid_input() {
        for chart in fleet() {
            chart_labels(&chart.title, &chart.unit).unwrap();
            assert!(chart.series.len() <= MAX_SERIES);
            for s in chart.series {
                assert_eq!(
                    series_spec(&s.metric, &s.source, &s.aggregate, &s.label, &s.across).unwrap(),
                    s
                );
            }
        }
    }
}
