//! Small formatting helpers for templates: relative times with the absolute time on hover.

use time::OffsetDateTime;
use time::macros::format_description;

pub struct When {
    pub relative: String,
    pub absolute: String,
}

pub fn when(t: OffsetDateTime) -> When {
    when_at(t, OffsetDateTime::now_utc())
}

pub fn when_opt(t: Option<OffsetDateTime>) -> Option<When> {
    t.map(when)
}

fn when_at(t: OffsetDateTime, now: OffsetDateTime) -> When {
    let fmt = format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    let absolute = t
        .to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_default();
    let secs = (now - t).whole_seconds();
    let relative = match secs {
        // Deadlines (a rollout batch's health timeout) are in the future.
        s if s <= -86_400 => format!("in {} d", -s / 86_400),
        s if s <= -3600 => format!("in {} h", -s / 3600),
        s if s <= -60 => format!("in {} min", -s / 60),
        s if s <= -10 => format!("in {} s", -s),
        s if s < 10 => "just now".to_owned(),
        s if s < 60 => format!("{s} s ago"),
        s if s < 3600 => format!("{} min ago", s / 60),
        s if s < 86_400 => format!("{} h ago", s / 3600),
        s => format!("{} d ago", s / 86_400),
    };
    When { relative, absolute }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn relative_times() {
        let now = datetime!(2026-11-26 12:00:00 UTC);
        assert_eq!(when_at(now, now).relative, "just now");
        assert_eq!(
            when_at(datetime!(2026-11-26 11:59:30 UTC), now).relative,
            "30 s ago"
        );
        assert_eq!(
            when_at(datetime!(2026-11-26 11:00:00 UTC), now).relative,
            "1 h ago"
        );
        assert_eq!(
            when_at(datetime!(2026-11-24 12:00:00 UTC), now).relative,
            "2 d ago"
        );
        assert_eq!(
            when_at(datetime!(2026-11-26 12:05:00 UTC), now).relative,
            "in 5 min"
        );
        assert_eq!(when_at(now, now).absolute, "2026-11-26 12:00:00 UTC");
    }
}
