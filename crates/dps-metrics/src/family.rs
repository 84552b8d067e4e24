//! Metric families built at scrape time from counters the libraries keep, and the
//! descriptors the registry checks them against.

use prometheus::core::Desc;
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use crate::MetricsError;

/// One family being filled.
pub(crate) struct Family(MetricFamily);

impl Family {
    pub(crate) fn counter(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::COUNTER)
    }

    pub(crate) fn gauge(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::GAUGE)
    }

    fn new(name: &str, help: &str, kind: MetricType) -> Self {
        let mut mf = MetricFamily::default();
        mf.set_name(name.to_owned());
        mf.set_help(help.to_owned());
        mf.set_field_type(kind);
        Self(mf)
    }

    /// Adds one sample with these labels (the encoder wants them sorted by name).
    #[allow(clippy::cast_precision_loss)] // counts far below 2^53
    pub(crate) fn sample(mut self, labels: &[(&str, &str)], value: u64) -> Self {
        let mut pairs: Vec<LabelPair> = labels
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name((*name).to_owned());
                pair.set_value((*value).to_owned());
                pair
            })
            .collect();
        pairs.sort_by(|a, b| a.name().cmp(b.name()));
        let mut metric = Metric::from_label(pairs);
        if self.0.get_field_type() == MetricType::COUNTER {
            let mut c = Counter::default();
            c.set_value(value as f64);
            metric.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value as f64);
            metric.set_gauge(g);
        }
        self.0.mut_metric().push(metric);
        self
    }

    pub(crate) fn done(self) -> MetricFamily {
        self.0
    }
}

/// The descriptor of a family with `labels`, fixed to `constant` (name and value) for this
/// collector, so several collectors (one per listener) can fill the same family.
pub(crate) fn desc(
    name: &str,
    help: &str,
    labels: &[&str],
    constant: Option<(&str, &str)>,
) -> Result<Desc, MetricsError> {
    let constant = constant
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Desc::new(
        name.to_owned(),
        help.to_owned(),
        labels.iter().map(|l| (*l).to_owned()).collect(),
        constant,
    )
    .map_err(MetricsError::Register)
}
