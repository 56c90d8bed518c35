//! The ids of series this process has seen, so that a request whose series all exist stores
//! its points in one statement (no transaction, no series lookups). Safe to keep: a series
//! row is never deleted and its id and kind never change. Filled only after the transaction
//! that created or read the series has committed.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::metrics::ingest::{Kind, Measurement, kind_clash};

/// Beyond this many series the cache starts over (memory stays bounded; misses only cost
/// the slower path).
const MAX_ENTRIES: usize = 200_000;

/// name -> source -> (id, kind): nested, so a lookup borrows the measurement's strings.
type Map = HashMap<String, HashMap<String, (i32, Kind)>>;

#[derive(Clone, Default)]
pub struct SeriesIds(Arc<RwLock<(Map, usize)>>);

/// What the cache knows of a request's series.
pub enum Known {
    /// Every series, with its id per measurement.
    All(Vec<i32>),
    /// At least one series is new to this process.
    Incomplete,
    /// A measurement's name+source exists as the other kind.
    Clash(String),
}

impl SeriesIds {
    pub fn lookup(&self, measurements: &[Measurement]) -> Known {
        let guard = self.0.read().unwrap_or_else(|e| e.into_inner());
        let mut ids = Vec::with_capacity(measurements.len());
        for m in measurements {
            let known = guard
                .0
                .get(m.name.as_str())
                .and_then(|sources| sources.get(m.source.as_str()));
            match known {
                Some(&(id, kind)) if kind == m.kind => ids.push(id),
                Some(&(_, kind)) => return Known::Clash(kind_clash(m, kind.as_str())),
                None => return Known::Incomplete,
            }
        }
        Known::All(ids)
    }

    /// Remembers the series of committed measurements (`ids[i]` is `measurements[i]`'s).
    pub fn learn(&self, measurements: &[Measurement], ids: &[i32]) {
        let mut guard = self.0.write().unwrap_or_else(|e| e.into_inner());
        let (map, entries) = &mut *guard;
        if *entries + measurements.len() > MAX_ENTRIES {
            map.clear();
            *entries = 0;
        }
        for (m, &id) in measurements.iter().zip(ids) {
            let sources = map.entry(m.name.clone()).or_default();
            if !sources.contains_key(m.source.as_str()) {
                sources.insert(m.source.clone(), (id, m.kind));
                *entries += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, kind: Kind) -> Measurement {
        Measurement {
            name: name.into(),
            source: "a".into(),
            tags: Default::default(),
            kind,
            time: 0,
            count: 1,
            sum: 1.0,
            min: 1.0,
            max: 1.0,
            last: 1.0,
        }
    }

    #[test]
    fn knows_only_what_it_learned_and_refuses_the_other_kind() {
        let ids = SeriesIds::default();
        let batch = [m("x", Kind::Gauge), m("y", Kind::Counter)];
        assert!(matches!(ids.lookup(&batch), Known::Incomplete));
        ids.learn(&batch, &[7, 8]);
        assert!(matches!(ids.lookup(&batch), Known::All(v) if v == [7, 8]));
        assert!(
            matches!(ids.lookup(&[m("x", Kind::Counter)]), Known::Clash(why) if why.contains("x (source a) is a gauge"))
        );
    }
}
