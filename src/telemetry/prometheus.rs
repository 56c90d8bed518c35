//! A small registry of the console's own figures, rendered in Prometheus's text format at
//! `GET /metrics`. Counters and summaries (count + sum) keyed by name and labels; that is all
//! the console needs, and it keeps a dependency out.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

type Key = (String, Vec<(String, String)>);

#[derive(Debug, Default)]
pub struct Registry {
    counters: Mutex<BTreeMap<Key, f64>>,
    summaries: Mutex<BTreeMap<Key, (u64, f64)>>,
    help: Mutex<BTreeMap<String, String>>,
}

fn key(name: &str, labels: &[(&str, &str)]) -> Key {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    (name.to_owned(), labels)
}

impl Registry {
    pub fn describe(&self, name: &str, help: &str) {
        self.help
            .lock()
            .unwrap()
            .insert(name.to_owned(), help.to_owned());
    }

    pub fn inc(&self, name: &str, labels: &[(&str, &str)]) {
        *self
            .counters
            .lock()
            .unwrap()
            .entry(key(name, labels))
            .or_default() += 1.0;
    }

    /// Records one observation (a latency in seconds) into `name_count` and `name_sum`.
    pub fn observe(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        let mut summaries = self.summaries.lock().unwrap();
        let entry = summaries.entry(key(name, labels)).or_default();
        entry.0 += 1;
        entry.1 += value;
    }

    /// The sum of a counter over every label set that includes `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.counters
            .lock()
            .unwrap()
            .iter()
            .filter(|((n, ls), _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// A summary's (count, sum) over every label set.
    pub fn summary(&self, name: &str) -> (u64, f64) {
        self.summaries
            .lock()
            .unwrap()
            .iter()
            .filter(|((n, _), _)| n == name)
            .fold((0, 0.0), |(c, s), (_, (dc, ds))| (c + dc, s + ds))
    }

    pub fn render(&self) -> String {
        let help = self.help.lock().unwrap().clone();
        let mut out = String::new();
        let mut typed = std::collections::BTreeSet::new();
        let header = |out: &mut String,
                      typed: &mut std::collections::BTreeSet<String>,
                      name: &str,
                      kind: &str| {
            if typed.insert(name.to_owned()) {
                if let Some(h) = help.get(name) {
                    let _ = writeln!(out, "# HELP {name} {h}");
                }
                let _ = writeln!(out, "# TYPE {name} {kind}");
            }
        };
        for ((name, labels), value) in self.counters.lock().unwrap().iter() {
            header(&mut out, &mut typed, name, "counter");
            let _ = writeln!(out, "{name}{} {value}", render_labels(labels));
        }
        for ((name, labels), (count, sum)) in self.summaries.lock().unwrap().iter() {
            header(&mut out, &mut typed, name, "summary");
            let _ = writeln!(out, "{name}_count{} {count}", render_labels(labels));
            let _ = writeln!(out, "{name}_sum{} {sum}", render_labels(labels));
        }
        out
    }
}

fn render_labels(labels: &[(String, String)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_summaries() {
        let r = Registry::default();
        r.describe("kiln_ec2_calls_total", "EC2 API calls");
        r.inc(
            "kiln_ec2_calls_total",
            &[("action", "RunInstances"), ("outcome", "ok")],
        );
        r.inc(
            "kiln_ec2_calls_total",
            &[("action", "RunInstances"), ("outcome", "ok")],
        );
        r.observe("kiln_ec2_call_seconds", &[("action", "RunInstances")], 0.5);
        let text = r.render();
        assert!(
            text.contains("# TYPE kiln_ec2_calls_total counter"),
            "{text}"
        );
        assert!(
            text.contains("kiln_ec2_calls_total{action=\"RunInstances\",outcome=\"ok\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("kiln_ec2_call_seconds_count{action=\"RunInstances\"} 1"),
            "{text}"
        );
        assert_eq!(
            r.counter("kiln_ec2_calls_total", &[("action", "RunInstances")]),
            2.0
        );
    }
}
