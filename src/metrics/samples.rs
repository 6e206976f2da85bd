//! Values read at scrape time (`Metrics::collect`), encoded through `prometheus-client`.

use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    Count(u64),
    Float(f64),
}

/// One value read at scrape time. Samples of one name are one family (one HELP and TYPE).
#[derive(Debug, Clone)]
pub struct Sample {
    /// As exported: a counter's ends with `_total`.
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: Vec<(&'static str, String)>,
    value: Value,
}

impl Sample {
    pub fn gauge(name: &'static str, help: &'static str, value: f64) -> Sample {
        Sample {
            name,
            help,
            kind: Kind::Gauge,
            labels: Vec::new(),
            value: Value::Float(value),
        }
    }

    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Sample {
        Sample {
            kind: Kind::Counter,
            value: Value::Count(value),
            ..Sample::gauge(name, help, 0.0)
        }
    }

    /// A counter of a continuous quantity (CPU seconds).
    pub fn counter_f64(name: &'static str, help: &'static str, value: f64) -> Sample {
        Sample {
            kind: Kind::Counter,
            ..Sample::gauge(name, help, value)
        }
    }

    pub fn with_label(mut self, key: &'static str, value: impl Into<String>) -> Sample {
        self.labels.push((key, value.into()));
        self
    }

    fn encode_value(&self, mut m: MetricEncoder) -> Result<(), std::fmt::Error> {
        let none = None::<&Exemplar<NoLabelSet, u64>>;
        match (self.kind, self.value) {
            (Kind::Counter, Value::Count(n)) => m.encode_counter(&n, none),
            (Kind::Counter, Value::Float(f)) => {
                m.encode_counter(&f, None::<&Exemplar<NoLabelSet, f64>>)
            }
            (Kind::Gauge, Value::Count(n)) => m.encode_gauge(&n),
            (Kind::Gauge, Value::Float(f)) => m.encode_gauge(&f),
        }
    }
}

/// Encodes `samples`, one family per name (samples of a name kept in their order).
pub(super) fn encode(
    mut samples: Vec<Sample>,
    mut encoder: DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    samples.sort_by_key(|s| s.name);
    let mut rest = samples.as_slice();
    while let Some(first) = rest.first() {
        let n = rest.iter().take_while(|s| s.name == first.name).count();
        let (family, tail) = rest.split_at(n);
        rest = tail;
        let (name, kind) = match first.kind {
            Kind::Counter => (
                first.name.strip_suffix("_total").unwrap_or(first.name),
                MetricType::Counter,
            ),
            Kind::Gauge => (first.name, MetricType::Gauge),
        };
        let mut m = encoder.encode_descriptor(name, first.help, None, kind)?;
        for s in family {
            if s.labels.is_empty() {
                s.encode_value(m.encode_family(&Vec::<(&str, String)>::new())?)?;
            } else {
                s.encode_value(m.encode_family(&s.labels)?)?;
            }
        }
    }
    Ok(())
}
