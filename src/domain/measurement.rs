//! Metrics as Kiln stores and charts them: a validated measurement (what ingest makes of a
//! Librato request, and what `db::metrics` stores) and a chart's series as stored.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// One validated measurement, as stored: an aggregate of `count` values.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub name: String,
    pub source: String,
    pub tags: BTreeMap<String, String>,
    pub kind: Kind,
    /// Unix seconds.
    pub time: i64,
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
}

/// The refusal of a measurement whose name+source exists as the other kind.
pub fn kind_clash(m: &Measurement, existing: &str) -> String {
    format!(
        "{}{} is a {existing}; it cannot also be sent as a {}",
        m.name,
        if m.source.is_empty() {
            String::new()
        } else {
            format!(" (source {})", m.source)
        },
        m.kind.as_str()
    )
}

/// One line (or one line per matching source) on a chart.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SeriesSpec {
    pub metric: String,
    /// A source glob (`*` matches any run of characters).
    pub source: String,
    pub aggregate: String,
    /// What the legend calls the line; empty: the source's name.
    #[serde(default)]
    pub label: String,
    /// Combine the sources the glob matches into one line, bucket by bucket: `max`, `min`,
    /// `avg` or `sum` over the sources ("the worst server's CPU"); empty: a line per source.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub across: String,
}

/// A `*` glob as a LIKE pattern (other LIKE characters taken literally).
pub fn like_of(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len() + 2);
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}
