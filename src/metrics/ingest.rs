//! Librato's two ingest formats, validated the way Librato does: the legacy
//! `{"gauges": …, "counters": …}` of `POST /v1/metrics` and the tagged
//! `{"measurements": […]}` of `POST /v1/measurements`. Either the whole request is valid and
//! becomes [`Measurement`]s, or it is refused with a message that names the bad item (and
//! nothing of it is stored).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// At most this many measurements in one request.
pub const MAX_MEASUREMENTS: usize = 1000;
/// At most this many tags on one measurement.
pub const MAX_TAGS: usize = 50;
/// How far in the future a measurement's time may be (clock skew).
pub const MAX_FUTURE_S: i64 = 600;

pub use crate::domain::measurement::{Kind, Measurement, kind_clash};

/// Why a request was refused: a sentence naming the item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

type Result<T> = std::result::Result<T, Invalid>;

fn bad<T>(msg: String) -> Result<T> {
    Err(Invalid(msg))
}

fn valid_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '_')
}

/// Metric names and sources: 1 to 255 of `A-Za-z0-9.:-_`.
pub fn check_name(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > 255 || !s.chars().all(valid_name_char) {
        return bad(format!(
            "{what} {s:?} is invalid: use 1 to 255 characters of A-Z a-z 0-9 . : - _"
        ));
    }
    Ok(())
}

fn check_tag(at: &str, k: &str, v: &str) -> Result<()> {
    if k.is_empty() || k.len() > 64 || !k.chars().all(valid_name_char) {
        return bad(format!(
            "{at}: tag name {k:?} is invalid: use 1 to 64 characters of A-Z a-z 0-9 . : - _"
        ));
    }
    if v.is_empty()
        || v.len() > 255
        || !v
            .chars()
            .all(|c| valid_name_char(c) || matches!(c, '/' | '?' | ' '))
    {
        return bad(format!(
            "{at}: tag {k}'s value {v:?} is invalid: use 1 to 255 characters of A-Z a-z 0-9 . : - _ / ? and spaces"
        ));
    }
    Ok(())
}

fn number(at: &str, field: &str, v: &Value) -> Result<f64> {
    match v.as_f64() {
        Some(x) if x.is_finite() => Ok(x),
        _ => bad(format!("{at}: {field} must be a finite number, not {v}")),
    }
}

fn time_of(at: &str, v: Option<&Value>, default: i64, now: i64, oldest: i64) -> Result<i64> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(default);
    };
    let t = match v
        .as_i64()
        .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
    {
        Some(t) => t,
        None => return bad(format!("{at}: the time must be unix seconds, not {v}")),
    };
    if t > now + MAX_FUTURE_S || t < oldest {
        return bad(format!(
            "{at}: the time {t} is outside the accepted window (the last {} days up to {} minutes ahead)",
            (now - oldest) / 86_400,
            MAX_FUTURE_S / 60
        ));
    }
    Ok(t)
}

fn string(at: &str, field: &str, v: Option<&Value>) -> Result<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => bad(format!("{at}: {field} must be a string, not {other}")),
    }
}

/// The values of one measurement: a plain `value`, or a pre-aggregated count+sum (min, max
/// optional; `last` only in the tagged format).
fn values(at: &str, m: &Map<String, Value>, kind: Kind) -> Result<(i64, f64, f64, f64, f64)> {
    let has_count = m.contains_key("count");
    match (m.get("value"), has_count) {
        (Some(_), true) => bad(format!("{at}: give either value or count+sum, not both")),
        (Some(v), false) => {
            let x = number(at, "value", v)?;
            Ok((1, x, x, x, x))
        }
        (None, true) if kind == Kind::Gauge => {
            let count = match m["count"].as_i64() {
                Some(c) if c > 0 => c,
                _ => return bad(format!("{at}: count must be a whole number above 0")),
            };
            let sum = match m.get("sum") {
                Some(v) => number(at, "sum", v)?,
                None => return bad(format!("{at}: count needs sum")),
            };
            let mean = sum / count as f64;
            let min = m
                .get("min")
                .map(|v| number(at, "min", v))
                .transpose()?
                .unwrap_or(mean);
            let max = m
                .get("max")
                .map(|v| number(at, "max", v))
                .transpose()?
                .unwrap_or(mean);
            let last = m
                .get("last")
                .map(|v| number(at, "last", v))
                .transpose()?
                .unwrap_or(mean);
            if min > max {
                return bad(format!("{at}: min is above max"));
            }
            Ok((count, sum, min, max, last))
        }
        (None, true) => bad(format!("{at}: a counter takes a value, not count+sum")),
        (None, false) => bad(format!("{at}: value is missing")),
    }
}

/// The items of a legacy list, which may be an array or a map keyed by name.
fn items(kind: &str, v: Option<&Value>) -> Result<Vec<(String, Map<String, Value>)>> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(m) => Ok((format!("{kind}[{i}]"), m.clone())),
                other => bad(format!("{kind}[{i}] must be an object, not {other}")),
            })
            .collect(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(name, item)| match item {
                Value::Object(m) => {
                    let mut m = m.clone();
                    m.entry("name")
                        .or_insert_with(|| Value::String(name.clone()));
                    Ok((format!("{kind}.{name}"), m))
                }
                other => bad(format!("{kind}.{name} must be an object, not {other}")),
            })
            .collect(),
        Some(other) => bad(format!("{kind} must be a list or a map, not {other}")),
    }
}

fn count_check(n: usize) -> Result<()> {
    if n > MAX_MEASUREMENTS {
        return bad(format!(
            "{n} measurements in one request; at most {MAX_MEASUREMENTS}"
        ));
    }
    if n == 0 {
        return bad("the request has no measurements".into());
    }
    Ok(())
}

/// `POST /v1/metrics`. `now` and `oldest` bound the accepted times (unix seconds).
pub fn legacy(body: &Value, now: i64, oldest: i64) -> Result<Vec<Measurement>> {
    let Value::Object(top) = body else {
        return bad("the body must be a JSON object with gauges and/or counters".into());
    };
    let top_source = string("the request", "source", top.get("source"))?;
    let top_time = time_of("the request", top.get("measure_time"), now, now, oldest)?;
    let gauges = items("gauges", top.get("gauges"))?;
    let counters = items("counters", top.get("counters"))?;
    count_check(gauges.len() + counters.len())?;
    let mut out = Vec::with_capacity(gauges.len() + counters.len());
    for (kind, list) in [(Kind::Gauge, gauges), (Kind::Counter, counters)] {
        for (at, m) in list {
            let name = string(&at, "name", m.get("name"))?
                .ok_or_else(|| Invalid(format!("{at}: name is missing")))?;
            check_name(&format!("{at}: name"), &name)?;
            let source = string(&at, "source", m.get("source"))?
                .or_else(|| top_source.clone())
                .unwrap_or_default();
            if !source.is_empty() {
                check_name(&format!("{at}: source"), &source)?;
            }
            let time = time_of(&at, m.get("measure_time"), top_time, now, oldest)?;
            let (count, sum, min, max, last) = values(&at, &m, kind)?;
            out.push(Measurement {
                name,
                source,
                tags: BTreeMap::new(),
                kind,
                time,
                count,
                sum,
                min,
                max,
                last,
            });
        }
    }
    Ok(out)
}

fn tags_of(at: &str, v: Option<&Value>) -> Result<Option<BTreeMap<String, String>>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => {
            if m.len() > MAX_TAGS {
                return bad(format!("{at}: at most {MAX_TAGS} tags, not {}", m.len()));
            }
            let mut tags = BTreeMap::new();
            for (k, v) in m {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => return bad(format!("{at}: tag {k} must be a string, not {other}")),
                };
                check_tag(at, k, &v)?;
                tags.insert(k.clone(), v);
            }
            Ok(Some(tags))
        }
        Some(other) => bad(format!("{at}: tags must be an object, not {other}")),
    }
}

/// A tagged measurement's source: its `source` or `host` tag, else its tags as `k=v,…`.
pub fn source_of(tags: &BTreeMap<String, String>) -> String {
    if let Some(s) = tags.get("source").or_else(|| tags.get("host")) {
        return s.clone();
    }
    tags.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `POST /v1/measurements`: gauges only (Librato's tagged API has no counters).
pub fn tagged(body: &Value, now: i64, oldest: i64) -> Result<Vec<Measurement>> {
    let Value::Object(top) = body else {
        return bad("the body must be a JSON object with measurements".into());
    };
    let top_time = time_of("the request", top.get("time"), now, now, oldest)?;
    let top_tags = tags_of("the request", top.get("tags"))?.unwrap_or_default();
    let list = match top.get("measurements") {
        Some(Value::Array(l)) => l,
        Some(other) => return bad(format!("measurements must be a list, not {other}")),
        None => return bad("measurements is missing".into()),
    };
    count_check(list.len())?;
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let at = format!("measurements[{i}]");
        let Value::Object(m) = item else {
            return bad(format!("{at} must be an object, not {item}"));
        };
        let name = string(&at, "name", m.get("name"))?
            .ok_or_else(|| Invalid(format!("{at}: name is missing")))?;
        check_name(&format!("{at}: name"), &name)?;
        // Librato: a measurement's own tags replace the request's; they are never merged.
        let tags = tags_of(&at, m.get("tags"))?.unwrap_or_else(|| top_tags.clone());
        let time = time_of(&at, m.get("time"), top_time, now, oldest)?;
        let (count, sum, min, max, last) = values(&at, m, Kind::Gauge)?;
        out.push(Measurement {
            name,
            source: source_of(&tags),
            tags,
            kind: Kind::Gauge,
            time,
            count,
            sum,
            min,
            max,
            last,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;
    const OLDEST: i64 = NOW - 7 * 86_400;

    #[test]
    fn legacy_lists_maps_top_level_source_and_time() {
        let got = legacy(
            &json!({"source": "web1", "measure_time": NOW - 5,
                    "gauges": [{"name": "cpu", "value": 0.5}, {"name": "lat", "count": 4, "sum": 10.0, "min": 1, "max": 4}],
                    "counters": {"requests": {"value": 7, "source": "web2"}}}),
            NOW,
            OLDEST,
        )
        .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(
            (got[0].source.as_str(), got[0].time, got[0].sum),
            ("web1", NOW - 5, 0.5)
        );
        assert_eq!(
            (got[1].count, got[1].sum, got[1].min, got[1].max),
            (4, 10.0, 1.0, 4.0)
        );
        assert_eq!(
            (got[2].name.as_str(), got[2].source.as_str(), got[2].kind),
            ("requests", "web2", Kind::Counter)
        );
    }

    #[test]
    fn tagged_sources_and_tag_inheritance() {
        let got = tagged(
            &json!({"tags": {"region": "eu"}, "measurements": [
                {"name": "a", "value": 1},
                {"name": "b", "value": 2, "tags": {"host": "h1", "az": "b"}},
                {"name": "c", "value": 3, "tags": {"az": "c", "app": "x"}}]}),
            NOW,
            OLDEST,
        )
        .unwrap();
        assert_eq!(got[0].source, "region=eu");
        assert_eq!(got[1].source, "h1");
        assert_eq!(
            got[2].source, "app=x,az=c",
            "own tags replace the request's"
        );
    }

    #[test]
    fn bad_measurements_are_named() {
        // Each refusal names the item and what is wrong with it.
        let cases = [
            (
                json!({"gauges": [{"name": "cpu$", "value": 1}]}),
                "gauges[0]",
                "name",
            ),
            (
                json!({"gauges": [{"name": "x".repeat(256), "value": 1}]}),
                "gauges[0]",
                "255",
            ),
            (
                json!({"gauges": [{"name": "cpu", "value": "high"}]}),
                "gauges[0]",
                "value",
            ),
            (json!({"gauges": [{"name": "cpu"}]}), "gauges[0]", "value"),
            (
                json!({"gauges": [{"name": "cpu", "value": 1, "measure_time": NOW + 3600}]}),
                "gauges[0]",
                "time",
            ),
            (
                json!({"gauges": [{"name": "cpu", "value": 1, "measure_time": OLDEST - 1}]}),
                "gauges[0]",
                "time",
            ),
            (
                json!({"gauges": [{"name": "cpu", "count": 2}]}),
                "gauges[0]",
                "sum",
            ),
            (
                json!({"counters": [{"name": "c", "count": 2, "sum": 3}]}),
                "counters[0]",
                "value",
            ),
            (json!({"gauges": 3}), "gauges", "gauges"),
            (json!({}), "", "measurement"),
        ];
        for (case, item, says) in cases {
            let err = legacy(&case, NOW, OLDEST).unwrap_err();
            assert!(
                err.0.starts_with(item) && err.0.contains(says),
                "{case}: {:?} does not name {item} and {says}",
                err.0
            );
        }
        let many: Vec<Value> = (0..1001)
            .map(|i| json!({"name": format!("m{i}"), "value": 1}))
            .collect();
        let err = legacy(&json!({"gauges": many}), NOW, OLDEST).unwrap_err();
        assert!(err.0.contains("1001"), "{err:?}");
        let err = tagged(&json!({"measurements": [{"name": "a", "value": 1}, {"name": "b", "value": 1, "tags": {"k": ""}}]}), NOW, OLDEST).unwrap_err();
        assert!(err.0.starts_with("measurements[1]"), "{err:?}");
        // JSON has no NaN; a value that is not a finite number is refused.
        let err = number("gauges[0]", "value", &json!(null)).unwrap_err();
        assert!(err.0.contains("value must be a finite number"), "{err:?}");
    }
}
