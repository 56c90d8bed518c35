//! Dashboards: charts of series. The built-in "Fleet" dashboard mixes the console's own
//! figures with the agents' system figures; releases, rollbacks and posted annotations are
//! drawn on every chart as markers.

/// One line (or one line per matching source) on a chart.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SeriesSpec {
    pub metric: &'static str,
    pub source: &'static str,
    pub aggregate: &'static str,
    pub label: &'static str,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Chart {
    pub title: &'static str,
    pub unit: &'static str,
    pub series: Vec<SeriesSpec>,
}

const fn line(metric: &'static str, aggregate: &'static str, label: &'static str) -> SeriesSpec {
    SeriesSpec {
        metric,
        source: "*",
        aggregate,
        label,
    }
}

/// The default dashboard: app and server metrics side by side.
pub fn fleet() -> Vec<Chart> {
    vec![
        Chart {
            title: "Jobs queued and running",
            unit: "jobs",
            series: vec![
                line("kiln.jobs.queued", "max", "queued"),
                line("kiln.jobs.running", "max", "running"),
            ],
        },
        Chart {
            title: "Jobs finished",
            unit: "jobs per interval",
            series: vec![
                line("kiln.jobs.succeeded", "sum", "succeeded"),
                line("kiln.jobs.failed", "sum", "failed"),
            ],
        },
        Chart {
            title: "Job duration",
            unit: "seconds",
            series: vec![
                line("kiln.job.duration", "avg", "average"),
                line("kiln.job.duration", "max", "longest"),
            ],
        },
        Chart {
            title: "Servers by state and image",
            unit: "servers",
            series: vec![line("kiln.servers", "max", "")],
        },
        Chart {
            title: "CPU per server",
            unit: "%",
            series: vec![line("system.cpu", "avg", "")],
        },
        Chart {
            title: "Memory per server",
            unit: "%",
            series: vec![line("system.mem", "avg", "")],
        },
        Chart {
            title: "Load per server",
            unit: "load (1 min)",
            series: vec![line("system.load", "avg", "")],
        },
        Chart {
            title: "EC2 calls",
            unit: "calls per interval",
            series: vec![line("kiln.ec2.calls", "sum", "")],
        },
    ]
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

pub fn range(name: &str) -> Option<i64> {
    RANGES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}
