//! The metrics and health side of a running service: the [`Metrics`] every library reports
//! to, the readiness checks, the server certificate's expiry, and the metrics listener
//! (`[metrics]`), which runs among the other listeners.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dps_metrics::{Health, Metrics, MetricsLimits};

use crate::config::MetricsConfig;
use crate::listeners::Listeners;
use crate::DpsdError;

/// Name of the metrics listener in logs, errors and the `listener` label.
pub const METRICS_LISTENER: &str = "metrics";

/// The metrics and readiness of one service.
pub(crate) struct Observability {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) health: Health,
    /// Set once every listener is bound: until then `/readyz` says "listeners".
    bound: Arc<AtomicBool>,
}

impl Observability {
    /// The registry and the `store` and `listeners` readiness checks.
    pub(crate) fn new(store: &dps_store::Store) -> Result<Self, DpsdError> {
        let metrics = Arc::new(Metrics::new().map_err(DpsdError::Metrics)?);
        store.observe(metrics.store_observer());
        let health = Health::default();
        let s = store.clone();
        health.add_check("store", move || s.is_healthy());
        let bound = Arc::new(AtomicBool::new(false));
        let b = Arc::clone(&bound);
        health.add_check("listeners", move || b.load(Ordering::Acquire));
        Ok(Self {
            metrics,
            health,
            bound,
        })
    }

    /// Records the expiry of the certificate in `cert_pem` (a chain: its first) as the one
    /// `listeners` present. A certificate that does not parse here was already refused by
    /// rustls; it is only logged.
    pub(crate) fn certificate(&self, cert_pem: &Path, listeners: &[&str]) {
        let not_after = std::fs::read_to_string(cert_pem)
            .ok()
            .and_then(|text| {
                let first = text.find("-----END CERTIFICATE-----")?;
                let end = first + "-----END CERTIFICATE-----".len();
                dps_attest::ParsedCertificate::parse(text.get(..end)?).ok()
            })
            .map(|cert| cert.info().not_after_utc.unix());
        match not_after {
            Some(unix) => {
                for listener in listeners {
                    self.metrics.certificate_not_after(listener, unix);
                }
            }
            None => tracing::warn!(
                path = %cert_pem.display(),
                "cannot read the server certificate's expiry for the metrics"
            ),
        }
    }

    /// Binds the metrics listener (if enabled) and runs it among `listeners`; marks every
    /// listener bound. Returns where it listens.
    pub(crate) async fn start(
        &self,
        config: &MetricsConfig,
        listeners: &mut Listeners,
    ) -> Result<Option<SocketAddr>, DpsdError> {
        let addr = if config.enabled {
            let listener = crate::bind(config.listen).await?;
            let addr = crate::local_addr(&listener, config.listen)?;
            let counters = self
                .metrics
                .listener(METRICS_LISTENER)
                .map_err(DpsdError::Metrics)?;
            let serve = dps_metrics::serve(
                listener,
                Arc::clone(&self.metrics),
                self.health.clone(),
                MetricsLimits::default(),
                counters,
                listeners.until_stopped(),
            );
            listeners.spawn(METRICS_LISTENER, serve);
            Some(addr)
        } else {
            None
        };
        self.bound.store(true, Ordering::Release);
        Ok(addr)
    }
}
