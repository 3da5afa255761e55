//! Prometheus metrics of guards, caches and backends (feature `prometheus`).
//!
//! Read at scrape time from the counters the library keeps anyway: the hot
//! path pays nothing for being exported (cache hits and misses, which
//! nothing else needs, are counted only with this feature on; see
//! [`CacheStats`]). Built on [`prometheus_client`], the Prometheus project's
//! own client: a [`Registry`] is a value the service owns (no global
//! recorder to install first), and a [`Collector`] reads live values when
//! scraped, so gauges such as a circuit's state are never stale.
//!
//! One [`Metrics`] gathers every source — guards, caches, and the backends'
//! sources (auth-remote's `RemoteVerifier`, auth-redis's `RedisLimiter`)
//! — and writes each metric family once, whatever the number of sources.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `auth_guard_decisions_total` | counter | `keyring`, `decision` (`allowed`, `denied`, `passed`), `reason` |
//! | `auth_route_scope_denials_total` | counter | `keyring`, `reason` (`insufficient_scope`, `missing`): refused by a route's scope check after the guard let the request through |
//! | `auth_guard_report_only_total` | counter | `keyring`: refusals let through by report-only mode |
//! | `auth_guard_open_mode` | gauge | `keyring`: 1 while the guard lets everything through |
//! | `auth_cache_hits_total`, `auth_cache_misses_total` | counter | `cache` |
//!
//! Each request a guard decides is counted once in
//! `auth_guard_decisions_total`; a route's refusal after it, in
//! `auth_route_scope_denials_total`. Denial reasons: `missing`,
//! `malformed`, `invalid`, `insufficient_scope`, `rate_limited`,
//! `usage_exceeded`, `unavailable`, `not_ready` (report-only refusals are
//! counted here too, by the reason that would have applied). Pass reasons:
//! `public_path`, `preflight`, `open`. Allowed: `valid`.
//!
//! ```
//! use auth_core::prometheus::{Metrics, prometheus_client::registry::Registry};
//! use auth_core::{Guard, PlainRequest, StaticKey};
//!
//! let guard = Guard::builder(StaticKey::new("s3cret").unwrap()).build().unwrap();
//! let mut registry = Registry::default();
//! Metrics::register(&mut registry).guard(&guard);
//!
//! guard.check(&PlainRequest::get("/items")).now();
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
//! assert!(text.contains(
//!     r#"auth_guard_decisions_total{keyring="default",decision="denied",reason="missing"} 1"#
//! ));
//! ```

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
pub use prometheus_client;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::cache::CacheStats;
use crate::{DecisionCounts, Guard, Mode};

/// Something that has metrics to export: it adds its current values to
/// [`Samples`] at each scrape. Implemented by the backends' verifiers and
/// limiters; a service's own sources can implement it too.
///
/// Family names must not be registered in the same registry by other
/// means (each family is written once by [`Metrics`], not across
/// collectors).
pub trait MetricSource: Send + Sync + 'static {
    /// Adds this source's current values.
    fn collect(&self, samples: &mut Samples);

    /// The address of the state this source reads, when clones share it:
    /// a second source with the same identity (a clone registered twice)
    /// is not added, so that nothing is counted twice.
    fn identity(&self) -> Option<usize> {
        None
    }
}

/// A metric's labels: name and value pairs.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Value {
    Counter(u64),
    Gauge(f64),
}

struct Family {
    /// Without `_total`: the encoder adds it to counters.
    name: &'static str,
    help: &'static str,
    /// Set by the first sample: samples of the other kind are dropped (a
    /// gauge under a counter's `TYPE` would make the scrape invalid).
    counter: bool,
    samples: Vec<(Labels, Value)>,
}

/// The values of one scrape, grouped by metric family so that each family
/// is written once.
#[derive(Default)]
pub struct Samples {
    families: Vec<Family>,
}

impl Samples {
    /// Adds a sample to its family. A series already there (two guards
    /// of one keyring, two verifiers) is merged, never written twice: a
    /// scrape with a repeated series loses one of them. Counters add up;
    /// gauges keep the larger value (a circuit open in either is open).
    fn add(&mut self, name: &'static str, help: &'static str, labels: Labels, value: Value) {
        let counter = matches!(value, Value::Counter(_));
        let family = match self.families.iter_mut().position(|f| f.name == name) {
            Some(i) => &mut self.families[i],
            None => {
                self.families.push(Family {
                    name,
                    help,
                    counter,
                    samples: Vec::new(),
                });
                self.families.last_mut().expect("just pushed")
            }
        };
        if family.counter != counter {
            debug_assert!(false, "{name}: a counter and a gauge under one name");
            return;
        }
        match family.samples.iter_mut().find(|(l, _)| *l == labels) {
            Some((_, held)) => {
                *held = match (*held, value) {
                    (Value::Counter(a), Value::Counter(b)) => Value::Counter(a.saturating_add(b)),
                    (Value::Gauge(a), Value::Gauge(b)) => Value::Gauge(a.max(b)),
                    (held, _) => held,
                };
            }
            None => family.samples.push((labels, value)),
        }
    }

    /// A counter: `name` without the `_total` that is added on export.
    pub fn counter(&mut self, name: &'static str, help: &'static str, labels: Labels, value: u64) {
        self.add(name, help, labels, Value::Counter(value));
    }

    /// A gauge.
    pub fn gauge(&mut self, name: &'static str, help: &'static str, labels: Labels, value: f64) {
        self.add(name, help, labels, Value::Gauge(value));
    }

    /// A cache's hits and misses, labelled `cache="<name>"`.
    pub fn cache(&mut self, name: &str, stats: &CacheStats) {
        let labels = || vec![("cache", name.to_owned())];
        self.counter(
            "auth_cache_hits",
            "Lookups answered from the cache.",
            labels(),
            stats.hits(),
        );
        self.counter(
            "auth_cache_misses",
            "Lookups the cache could not answer.",
            labels(),
            stats.misses(),
        );
    }

    /// Whether any sample was added under `name` (without `_total`).
    pub fn has(&self, name: &str) -> bool {
        self.families.iter().any(|f| f.name == name)
    }
}

/// Every source of one registry: register once, then add guards, caches
/// and backends — at start or later (each scrape reads the sources of the
/// moment).
///
/// Cheap to clone; clones share their sources.
#[derive(Clone, Default)]
pub struct Metrics {
    sources: Arc<Mutex<Vec<Arc<dyn MetricSource>>>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("sources", &self.sources.lock().len())
            .finish()
    }
}

impl Metrics {
    /// A collector registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register_collector(Box::new(metrics.clone()));
        metrics
    }

    /// Exports `source` from now on — unless a source with the same
    /// [`identity`](MetricSource::identity) is exported already (a clone
    /// of it: counted once).
    pub fn add(&self, source: impl MetricSource) -> &Self {
        let mut sources = self.sources.lock();
        let id = source.identity();
        if id.is_none() || sources.iter().all(|s| s.identity() != id) {
            sources.push(Arc::new(source));
        }
        drop(sources);
        self
    }

    /// Exports a guard's decisions, labelled with its keyring (guards that
    /// share a keyring add up; a clone of a guard already exported is not
    /// added again).
    pub fn guard(&self, guard: &Guard) -> &Self {
        self.add(guard.clone())
    }

    /// Exports a cache's hits and misses, labelled `cache="<name>"`
    /// (e.g. [`Cached::stats`](crate::Cached::stats)).
    pub fn cache(&self, name: &str, stats: &Arc<CacheStats>) -> &Self {
        self.add(NamedCache {
            name: name.to_owned(),
            stats: Arc::clone(stats),
        })
    }

    /// This scrape's values.
    pub fn samples(&self) -> Samples {
        let sources = self.sources.lock().clone();
        let mut samples = Samples::default();
        for source in &sources {
            source.collect(&mut samples);
        }
        samples
    }
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for family in self.samples().families {
            let kind = if family.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, kind)?;
            for (labels, value) in &family.samples {
                let mut sample = metric.encode_family(labels)?;
                match *value {
                    Value::Counter(v) => sample.encode_counter::<NoLabelSet, _, u64>(&v, None)?,
                    Value::Gauge(v) => sample.encode_gauge(&v)?,
                }
            }
        }
        Ok(())
    }
}

/// A cache's stats under a name.
struct NamedCache {
    name: String,
    stats: Arc<CacheStats>,
}

impl MetricSource for NamedCache {
    fn collect(&self, samples: &mut Samples) {
        samples.cache(&self.name, &self.stats);
    }

    fn identity(&self) -> Option<usize> {
        Some(Arc::as_ptr(&self.stats) as usize)
    }
}

impl MetricSource for Guard {
    fn identity(&self) -> Option<usize> {
        Some(self.shared_address())
    }

    fn collect(&self, samples: &mut Samples) {
        let c: DecisionCounts = self.counts();
        let keyring = self.keyring().to_owned();
        let rows: [(&str, &str, u64); 12] = [
            ("allowed", "valid", c.allowed),
            ("denied", "missing", c.missing),
            ("denied", "malformed", c.malformed),
            ("denied", "invalid", c.invalid),
            ("denied", "insufficient_scope", c.forbidden),
            ("denied", "rate_limited", c.limited),
            ("denied", "usage_exceeded", c.usage_exceeded),
            ("denied", "unavailable", c.unavailable),
            ("denied", "not_ready", c.not_ready),
            ("passed", "public_path", c.passed_public_path),
            ("passed", "preflight", c.passed_preflight),
            ("passed", "open", c.passed_open),
        ];
        for (decision, reason, value) in rows {
            samples.counter(
                "auth_guard_decisions",
                "Requests decided by a guard, by decision and reason.",
                vec![
                    ("keyring", keyring.clone()),
                    ("decision", decision.to_owned()),
                    ("reason", reason.to_owned()),
                ],
                value,
            );
        }
        for (reason, value) in [
            ("insufficient_scope", c.route_forbidden),
            ("missing", c.route_missing),
        ] {
            samples.counter(
                "auth_route_scope_denials",
                "Requests a guard let through that a route's scope check refused.",
                vec![("keyring", keyring.clone()), ("reason", reason.to_owned())],
                value,
            );
        }
        samples.counter(
            "auth_guard_report_only",
            "Refusals let through by report-only mode (also counted where they would have applied).",
            vec![("keyring", keyring.clone())],
            c.report_only,
        );
        samples.gauge(
            "auth_guard_open_mode",
            "1 while the guard lets every request through unauthenticated.",
            vec![("keyring", keyring)],
            if self.mode() == Mode::Open { 1.0 } else { 0.0 },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PlainRequest, StaticKey};

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn each_family_is_written_once_with_every_sources_samples() {
        let a = Guard::builder(StaticKey::new("key-a").unwrap())
            .keyring("a")
            .build()
            .unwrap();
        let b = Guard::builder(StaticKey::new("key-b").unwrap())
            .keyring("b")
            .build()
            .unwrap();
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.guard(&a).guard(&b);
        a.check(&PlainRequest::get("/x").header("x-api-key", "key-a"))
            .now();
        b.check(&PlainRequest::get("/x").header("x-api-key", "nope"))
            .now();
        b.check(&PlainRequest::get("/health")).now();
        let text = scrape(&registry);
        assert_eq!(
            text.matches("# TYPE auth_guard_decisions counter").count(),
            1,
            "{text}"
        );
        for line in [
            r#"auth_guard_decisions_total{keyring="a",decision="allowed",reason="valid"} 1"#,
            r#"auth_guard_decisions_total{keyring="b",decision="denied",reason="invalid"} 1"#,
            r#"auth_guard_decisions_total{keyring="b",decision="passed",reason="public_path"} 1"#,
            r#"auth_guard_decisions_total{keyring="a",decision="denied",reason="invalid"} 0"#,
            r#"auth_guard_open_mode{keyring="a"} 0.0"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // No key, nor anything of one, in the export.
        assert!(!text.contains("key-a") && !text.contains("nope"));
    }

    #[test]
    fn a_series_is_written_once_however_many_sources_share_it() {
        let a = Guard::builder(StaticKey::new("key-a").unwrap())
            .build()
            .unwrap();
        let b = Guard::builder(StaticKey::new("key-b").unwrap())
            .build()
            .unwrap();
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        // Two guards of one keyring add up; a clone is the guard itself.
        metrics.guard(&a).guard(&b).guard(&a.clone());
        a.check(&PlainRequest::get("/x")).now();
        b.check(&PlainRequest::get("/x")).now();
        let text = scrape(&registry);
        let series =
            r#"auth_guard_decisions_total{keyring="default",decision="denied",reason="missing"}"#;
        assert_eq!(text.matches(series).count(), 1, "{text}");
        assert!(text.contains(&format!("{series} 2")), "{text}");
        assert_eq!(text.matches("auth_guard_open_mode{").count(), 1, "{text}");
    }

    struct Mixed;

    impl MetricSource for Mixed {
        fn collect(&self, samples: &mut Samples) {
            samples.counter("mixed", "help", Vec::new(), 1);
            samples.gauge("mixed", "help", vec![("x", "y".to_owned())], 2.0);
        }
    }

    #[test]
    #[cfg_attr(debug_assertions, should_panic(expected = "a counter and a gauge"))]
    fn a_family_has_one_kind() {
        let mut samples = Samples::default();
        Mixed.collect(&mut samples);
        assert_eq!(samples.families[0].samples.len(), 1);
    }

    #[test]
    fn open_mode_and_report_only_are_visible() {
        let g = Guard::builder(StaticKey::new("k").unwrap())
            .build()
            .unwrap();
        let mut registry = Registry::default();
        Metrics::register(&mut registry).guard(&g);
        g.set_mode(Mode::ReportOnly);
        g.check(&PlainRequest::get("/x")).now();
        g.set_mode(Mode::Open);
        g.check(&PlainRequest::get("/x")).now();
        let text = scrape(&registry);
        for line in [
            r#"auth_guard_report_only_total{keyring="default"} 1"#,
            r#"auth_guard_decisions_total{keyring="default",decision="denied",reason="missing"} 1"#,
            r#"auth_guard_decisions_total{keyring="default",decision="passed",reason="open"} 1"#,
            r#"auth_guard_open_mode{keyring="default"} 1.0"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn a_caches_hits_and_misses_are_counted_and_exported() {
        use crate::{Cached, Credential, KeySet, Principal, Verifier, VerifyContext};
        let keys = KeySet::new().with_key("k", Principal::new("svc")).unwrap();
        let cached = Cached::new(keys, crate::CacheConfig::default());
        let ctx = VerifyContext::default();
        // A miss (asks the key set), then three hits.
        for _ in 0..4 {
            assert!(
                cached
                    .verify(&Credential::new("k"), &ctx)
                    .now()
                    .unwrap()
                    .is_ok()
            );
        }
        let mut registry = Registry::default();
        Metrics::register(&mut registry).cache("keys", cached.stats());
        let text = scrape(&registry);
        assert!(
            text.contains(r#"auth_cache_hits_total{cache="keys"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"auth_cache_misses_total{cache="keys"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn hits_counted_on_many_threads_add_up() {
        let stats = Arc::new(CacheStats::default());
        std::thread::scope(|s| {
            for _ in 0..20 {
                let stats = &stats;
                s.spawn(move || {
                    for _ in 0..1000 {
                        stats.hit();
                    }
                    stats.miss();
                });
            }
        });
        assert_eq!((stats.hits(), stats.misses()), (20_000, 20));
    }
}
