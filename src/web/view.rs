//! Small formatting helpers for templates: relative times with the absolute time on hover.

use std::fmt;

use time::OffsetDateTime;

/// A time as pages show it. Both parts are written straight into the page when it renders
/// (no strings built per row: the Images page shows a thousand of them).
pub struct When {
    pub relative: Relative,
    pub absolute: Absolute,
}

/// "5 min ago", "in 2 h", "just now".
pub struct Relative {
    /// Seconds from the time to now (negative: in the future).
    secs: i64,
}

/// "2026-11-26 12:00:00 UTC".
pub struct Absolute(OffsetDateTime);

pub fn when(t: OffsetDateTime) -> When {
    when_at(t, OffsetDateTime::now_utc())
}

pub fn when_opt(t: Option<OffsetDateTime>) -> Option<When> {
    t.map(when)
}

impl When {
    /// The time has come (or passed).
    pub fn is_past(&self) -> bool {
        self.relative.secs >= 0
    }
}

fn when_at(t: OffsetDateTime, now: OffsetDateTime) -> When {
    When {
        relative: Relative {
            secs: (now - t).whole_seconds(),
        },
        absolute: Absolute(t.to_offset(time::UtcOffset::UTC)),
    }
}

impl fmt::Display for Relative {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.secs {
            // Deadlines (a rollout batch's health timeout) are in the future.
            s if s <= -86_400 => write!(f, "in {} d", -s / 86_400),
            s if s <= -3600 => write!(f, "in {} h", -s / 3600),
            s if s <= -60 => write!(f, "in {} min", -s / 60),
            s if s <= -10 => write!(f, "in {} s", -s),
            s if s < 10 => f.write_str("just now"),
            s if s < 60 => write!(f, "{s} s ago"),
            s if s < 3600 => write!(f, "{} min ago", s / 60),
            s if s < 86_400 => write!(f, "{} h ago", s / 3600),
            s => write!(f, "{} d ago", s / 86_400),
        }
    }
}

impl fmt::Display for Absolute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        if !(0..=9999).contains(&t.year()) {
            return write!(
                f,
                "{}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
        }
        // Digits into a fixed buffer, one write: a page of 1,000 rows writes 2,000 times.
        let mut out = *b"0000-00-00 00:00:00 UTC";
        let mut put = |at: usize, value: u32, width: usize| {
            let mut v = value;
            for i in (at..at + width).rev() {
                out[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, t.year() as u32, 4);
        put(5, u8::from(t.month()).into(), 2);
        put(8, t.day().into(), 2);
        put(11, t.hour().into(), 2);
        put(14, t.minute().into(), 2);
        put(17, t.second().into(), 2);
        // Only ASCII digits went in.
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl Absolute {
    pub fn time(&self) -> OffsetDateTime {
        self.0
    }

    /// The time for a `datetime` attribute ("2026-11-26T12:00:00Z"): app.js reads it to show
    /// the time in the viewer's own time zone.
    pub fn iso(&self) -> String {
        let t = self.0;
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }

    /// "12:00 UTC": what a page says before app.js puts the time in the viewer's zone.
    pub fn clock(&self) -> String {
        format!("{:02}:{:02} UTC", self.0.hour(), self.0.minute())
    }
}

/// "3 min 20 s", "2 h 5 min", "45 s": how long something took or has been going.
pub fn duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => match s % 60 {
            0 => format!("{} min", s / 60),
            r => format!("{} min {r} s", s / 60),
        },
        s if s < 86_400 => match (s % 3600) / 60 {
            0 => format!("{} h", s / 3600),
            m => format!("{} h {m} min", s / 3600),
        },
        s => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// An image as people name it: "name vN" (or the name alone, or the id when it has no name).
pub fn image_label(id: &str, name: &str, version: &str) -> String {
    match (name.is_empty(), version.is_empty()) {
        (true, _) => id.to_owned(),
        (false, true) => name.to_owned(),
        (false, false) => format!("{name} v{version}"),
    }
}

// Digits, letters, spaces, '-' and ':' only: askama writes them without escaping.
impl askama::filters::HtmlSafe for Relative {}
impl askama::filters::HtmlSafe for Absolute {}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn relative_times() {
        let now = datetime!(2026-11-26 12:00:00 UTC);
        assert_eq!(when_at(now, now).relative.to_string(), "just now");
        assert_eq!(
            when_at(datetime!(2026-11-26 11:59:30 UTC), now)
                .relative
                .to_string(),
            "30 s ago"
        );
        assert_eq!(
            when_at(datetime!(2026-11-26 11:00:00 UTC), now)
                .relative
                .to_string(),
            "1 h ago"
        );
        assert_eq!(
            when_at(datetime!(2026-11-24 12:00:00 UTC), now)
                .relative
                .to_string(),
            "2 d ago"
        );
        assert_eq!(
            when_at(datetime!(2026-11-26 12:05:00 UTC), now)
                .relative
                .to_string(),
            "in 5 min"
        );
        assert_eq!(
            when_at(now, now).absolute.to_string(),
            "2026-11-26 12:00:00 UTC"
        );
        assert_eq!(
            when_at(datetime!(0987-01-02 03:04:05 UTC), now)
                .absolute
                .to_string(),
            "0987-01-02 03:04:05 UTC"
        );
        assert_eq!(
            when_at(datetime!(2026-11-26 23:59:59.999 +02:00), now)
                .absolute
                .to_string(),
            "2026-11-26 21:59:59 UTC"
        );
        let t = when_at(datetime!(2026-11-26 09:05:07 +01:00), now);
        assert_eq!(t.absolute.iso(), "2026-11-26T08:05:07Z");
        assert_eq!(t.absolute.clock(), "08:05 UTC");
    }

    #[test]
    fn durations_and_image_labels() {
        assert_eq!(duration(-3), "0 s");
        assert_eq!(duration(45), "45 s");
        assert_eq!(duration(200), "3 min 20 s");
        assert_eq!(duration(7500), "2 h 5 min");
        assert_eq!(duration(90_000), "1 d 1 h");
        assert_eq!(image_label("ami-1", "worker", "7"), "worker v7");
        assert_eq!(image_label("ami-1", "worker", ""), "worker");
        assert_eq!(image_label("ami-1", "", "7"), "ami-1");
    }
}
