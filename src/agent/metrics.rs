//! The server's figures sent with every heartbeat: CPU, memory, load and root-disk use.
//! A figure the platform cannot give is left out (None), never made up.

use sysinfo::{Disks, System};

use crate::agent::wire::SystemMetrics;

pub struct Sampler {
    system: Option<System>,
    disks: Option<Disks>,
}

impl Sampler {
    pub fn new() -> Self {
        let mut system = System::new().ok();
        // CPU use is a difference between two samples: take the first now.
        if let Some(s) = system.as_mut() {
            s.refresh_cpu_usage();
        }
        Self {
            system,
            disks: Disks::new_with_refreshed_list().ok(),
        }
    }

    pub fn sample(&mut self) -> SystemMetrics {
        let mut m = SystemMetrics {
            load1: System::load_average().ok().map(|l| l.one),
            ..Default::default()
        };
        if let Some(system) = self.system.as_mut() {
            system.refresh_cpu_usage();
            system.refresh_memory();
            m.cpu_percent = Some(f64::from(system.global_cpu_usage()));
            let total = system.total_memory();
            if total > 0 {
                m.mem_percent = Some(100.0 * system.used_memory() as f64 / total as f64);
            }
        }
        if let Some(disks) = self.disks.as_mut() {
            disks.refresh(true);
            m.disk_percent = disks
                .iter()
                .find(|d| d.mount_point() == std::path::Path::new("/"))
                .filter(|d| d.total_space() > 0)
                .map(|d| {
                    100.0 * (d.total_space() - d.available_space()) as f64 / d.total_space() as f64
                });
        }
        m
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}
