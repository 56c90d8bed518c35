//! Autoscaling and recycling settings: one document, read and written whole, validated as a
//! whole (min <= max <= the fleet's cap, shares and utilisations in 0–1, durations in range,
//! a well-formed window), each refusal naming its field.

use serde::{Deserialize, Serialize};

use super::ValidationError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScalingSettings {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "defaults::min")]
    pub min: u32,
    #[serde(default = "defaults::max")]
    pub max: u32,
    /// None: what the agents report.
    #[serde(default)]
    pub slots_per_server: Option<u32>,
    #[serde(default = "defaults::target")]
    pub target_utilization: f64,
    #[serde(default = "defaults::scale_in")]
    pub scale_in_utilization: f64,
    #[serde(default = "defaults::latency")]
    pub max_queue_latency_s: u32,
    #[serde(default = "defaults::delay")]
    pub scale_in_delay_s: u32,
    #[serde(default = "defaults::cooldown")]
    pub cooldown_s: u32,
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub recycle: Recycle,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recycle {
    /// None: servers are not recycled.
    #[serde(default)]
    pub max_age_s: Option<u32>,
    #[serde(default = "defaults::share")]
    pub max_share: f64,
    #[serde(default)]
    pub window: Option<Window>,
}

impl Default for Recycle {
    fn default() -> Self {
        Recycle {
            max_age_s: None,
            max_share: defaults::share(),
            window: None,
        }
    }
}

pub use super::window::Window;

mod defaults {
    pub fn min() -> u32 {
        1
    }
    pub fn max() -> u32 {
        10
    }
    pub fn target() -> f64 {
        0.75
    }
    pub fn scale_in() -> f64 {
        0.3
    }
    pub fn latency() -> u32 {
        30
    }
    pub fn delay() -> u32 {
        600
    }
    pub fn cooldown() -> u32 {
        600
    }
    pub fn share() -> f64 {
        0.1
    }
}

impl Default for ScalingSettings {
    fn default() -> Self {
        ScalingSettings {
            enabled: false,
            min: defaults::min(),
            max: defaults::max(),
            slots_per_server: None,
            target_utilization: defaults::target(),
            scale_in_utilization: defaults::scale_in(),
            max_queue_latency_s: defaults::latency(),
            scale_in_delay_s: defaults::delay(),
            cooldown_s: defaults::cooldown(),
            paused: false,
            recycle: Recycle::default(),
        }
    }
}

fn bad<T>(m: impl Into<String>) -> Result<T, ValidationError> {
    Err(ValidationError::new(m))
}

impl ScalingSettings {
    /// Checks the settings as a whole; `cap` is the fleet's cap (KILN_MAX_SERVERS).
    pub fn validate(&self, cap: u32) -> Result<(), ValidationError> {
        if self.max < 1 || self.max > cap {
            return bad(format!(
                "max: between 1 and the fleet's cap of {cap} (KILN_MAX_SERVERS)."
            ));
        }
        if self.min > self.max {
            return bad(format!("min: at most max ({}).", self.max));
        }
        if let Some(s) = self.slots_per_server
            && !(1..=64).contains(&s)
        {
            return bad("slots_per_server: between 1 and 64 (or null: what the agents report).");
        }
        let fraction = |f: f64| f.is_finite() && f > 0.0 && f <= 1.0;
        if !fraction(self.target_utilization) {
            return bad("target_utilization: a fraction above 0, at most 1.");
        }
        if !(self.scale_in_utilization.is_finite()
            && self.scale_in_utilization >= 0.0
            && self.scale_in_utilization < self.target_utilization)
        {
            return bad("scale_in_utilization: a fraction from 0, below target_utilization.");
        }
        if !(1..=3600).contains(&self.max_queue_latency_s) {
            return bad("max_queue_latency_s: between 1 and 3600 seconds.");
        }
        if self.scale_in_delay_s > 86_400 || self.cooldown_s > 86_400 {
            return bad("scale_in_delay_s: at most 86400 seconds (cooldown_s too).");
        }
        if let Some(age) = self.recycle.max_age_s
            && !(3600..=365 * 86_400).contains(&age)
        {
            return bad("recycle.max_age_s: from 3600 seconds (an hour) up to a year, or null.");
        }
        if !fraction(self.recycle.max_share) {
            return bad("recycle.max_share: a fraction above 0, at most 1.");
        }
        if let Some(w) = &self.recycle.window {
            w.validate("recycle.window")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_every_bad_field_is_named() {
        assert!(ScalingSettings::default().validate(500).is_ok());
        let refusal = |f: &dyn Fn(&mut ScalingSettings)| {
            let mut s = ScalingSettings::default();
            f(&mut s);
            s.validate(500).unwrap_err().0
        };
        assert!(refusal(&|s| s.max = 501).starts_with("max:"));
        assert!(refusal(&|s| s.min = 11).starts_with("min:"));
        assert!(refusal(&|s| s.target_utilization = 1.5).starts_with("target_utilization"));
        assert!(refusal(&|s| s.target_utilization = f64::NAN).starts_with("target_utilization"));
        assert!(refusal(&|s| s.scale_in_utilization = 0.8).starts_with("scale_in_utilization"));
        assert!(refusal(&|s| s.slots_per_server = Some(0)).starts_with("slots_per_server"));
        assert!(refusal(&|s| s.recycle.max_age_s = Some(60)).starts_with("recycle.max_age_s"));
        assert!(refusal(&|s| s.recycle.max_share = 0.0).starts_with("recycle.max_share"));
        let window = |days: &[&str], from: &str, until: &str| Window {
            days: days.iter().map(|d| (*d).to_owned()).collect(),
            from: from.into(),
            until: until.into(),
        };
        assert!(
            refusal(&|s| s.recycle.window = Some(window(&["monday"], "01:00", "02:00")))
                .starts_with("recycle.window.days")
        );
        assert!(
            refusal(&|s| s.recycle.window = Some(window(&["mon"], "25:00", "02:00")))
                .starts_with("recycle.window.from")
        );
    }
}
