//! Counts every EC2 HTTP attempt (retries included) and its latency, by action and outcome:
//! `kiln_ec2_calls_total{action,outcome}` and `kiln_ec2_call_seconds{action}` (the
//! `kiln.ec2.calls` figures).

use std::sync::Arc;
use std::time::Instant;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};

use crate::telemetry::prometheus::Registry;

pub const CALLS: &str = "kiln_ec2_calls_total";
pub const SECONDS: &str = "kiln_ec2_call_seconds";

#[derive(Debug, Clone)]
struct AttemptStarted(Instant);

impl Storable for AttemptStarted {
    type Storer = StoreReplace<Self>;
}

#[derive(Debug)]
pub struct CallCounter {
    registry: Arc<Registry>,
}

impl CallCounter {
    pub fn new(registry: Arc<Registry>) -> Self {
        registry.describe(
            CALLS,
            "EC2 API requests (each retry counts), by action and outcome",
        );
        registry.describe(SECONDS, "Latency of EC2 API requests, by action");
        Self { registry }
    }
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "kiln-ec2-call-counter"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(AttemptStarted(Instant::now()));
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let action = cfg
            .load::<Metadata>()
            .map(|m| m.name().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let outcome = match context.response().map(|r| r.status().as_u16()) {
            Some(s) if s < 400 => "ok".to_owned(),
            Some(s) => s.to_string(),
            None => "no_response".to_owned(),
        };
        self.registry
            .inc(CALLS, &[("action", &action), ("outcome", &outcome)]);
        if let Some(started) = cfg.load::<AttemptStarted>() {
            self.registry.observe(
                SECONDS,
                &[("action", &action)],
                started.0.elapsed().as_secs_f64(),
            );
        }
        Ok(())
    }
}
