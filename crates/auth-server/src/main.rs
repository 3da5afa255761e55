//! `auth-server`: the central key service, and its operators' CLI.
//!
//! ```text
//! auth-server serve [--bind 127.0.0.1:8080] [--data-dir ./data] [--log-format json]
//!                    [--metrics-bind 127.0.0.1:9465]
//! auth-server keys create --owner svc-a --scope stt --scope tts --rate 60/60s --expires 90d [--json]
//!                         [--credits 1000 --refill 1000/1d]
//! auth-server keys list [--json]
//! auth-server keys disable ID
//! auth-server keys rotate ID --overlap 24h
//! auth-server keys usage ID [--since 24h] [--json]
//! auth-server keys check KEY          # offline: our format and checksum? (exit 0 / 1)
//! auth-server services create --name stt [--json]
//! auth-server services list | disable ID | rotate ID --overlap 1h
//! auth-server backup FILE            # SQLite: a consistent copy, while serving
//! auth-server audit [--key ID] [--since 7d] [--limit 100] [--json]
//! ```
//!
//! Every write made here is recorded in the audit trail as `cli:<user>`
//! (the OS user from `USER` or `LOGNAME`).
//!
//! `DATABASE_URL` (PostgreSQL or SQLite) replaces the SQLite file in the
//! data directory.
//!
//! `--metrics-bind` (or `AUTH_SERVER_METRICS_BIND`) serves Prometheus
//! metrics at `GET /metrics` on a listener of their own, plain HTTP, never
//! on the API's port; off by default. It is unauthenticated (counts only,
//! never keys or digests): bind it to loopback or an internal interface.
#![forbid(unsafe_code)]
// One package, two targets: the binary uses what the library does not
// (clap, the log formats) and the other way round.
#![allow(unused_crate_dependencies)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use auth_core::RateLimitPolicy;
use auth_sqlx::{Credits, NewKey, Refill};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "auth-server", version, about = "The central API key service")]
struct Cli {
    /// Where the SQLite database and the admin key live.
    #[arg(long, global = true, default_value = "./data")]
    data_dir: PathBuf,
    /// A database URL (postgres://… or sqlite://…) instead of the data
    /// directory's SQLite file.
    /// (Its value, which may hold a password, is never shown in `--help`.)
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the HTTP API until SIGTERM or ctrl-c.
    Serve {
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: SocketAddr,
        /// Log format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Who may call the validate endpoint: `service-token` (services
        /// with a credential from `services create`) or `none` (anyone who
        /// reaches the port; for the seed services' clients, which send no
        /// credential — see docs/key-service.md for the risk).
        #[arg(long, value_enum, default_value = "service-token")]
        validate_auth: ValidateAuthArg,
        /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM); needs --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Also serve Prometheus metrics (`GET /metrics`, plain HTTP) on
        /// this address; off when not given. Unauthenticated — counts only,
        /// never keys or digests — so bind it to loopback or an internal
        /// interface, never a public one.
        #[arg(long, env = "AUTH_SERVER_METRICS_BIND")]
        metrics_bind: Option<SocketAddr>,
        /// GitHub's secret scanning public keys (the JSON of
        /// https://api.github.com/meta/public_keys/secret_scanning, saved to
        /// a file): enables POST /api/v1/secret-scanning/github. Re-read on
        /// SIGHUP (which cannot turn the route on: that takes a restart).
        #[arg(long, env = "AUTH_SERVER_SECRET_SCANNING_KEYS")]
        secret_scanning_keys: Option<PathBuf>,
        #[command(flatten)]
        webhooks: WebhookArgs,
    },
    /// Manages API clients' keys in the same database.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manages services' own credentials (for the validate endpoint only).
    Services {
        #[command(subcommand)]
        command: ServicesCommand,
    },
    /// Copies the SQLite database, consistently, while the server runs
    /// (never overwrites a file). PostgreSQL: use pg_dump.
    Backup {
        /// The file to write.
        to: PathBuf,
    },
    /// Manages webhook endpoints: key events (key.expiring, key.expired,
    /// key.disabled, key.rotated, key.leaked, credits.low), signed.
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
    },
    /// Prints the audit trail, newest first: every write to a key or a
    /// service credential (admin API, admin page, CLI), who made it and
    /// the fields before and after.
    Audit {
        /// Only the records of this key or service credential id.
        #[arg(long)]
        key: Option<String>,
        /// How far back, e.g. 24h, 7d (default: from the first record).
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        /// At most this many records (1 to 1000).
        #[arg(long, default_value_t = 100,
            value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// JSON (as `GET /api/v1/audit` answers) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// How this instance delivers webhooks (every instance on one database
/// may: each delivery is made by one).
#[derive(clap::Args)]
struct WebhookArgs {
    /// Do not deliver webhooks from this instance (events still queue, for
    /// the instances that do).
    #[arg(long, env = "AUTH_SERVER_NO_WEBHOOK_DELIVERY",
        value_parser = clap::builder::BoolishValueParser::new())]
    no_webhook_delivery: bool,
    /// How often due deliveries are looked for: 100ms to 1h.
    #[arg(long, env = "AUTH_SERVER_WEBHOOK_POLL", default_value = "1s",
        value_parser = bounded::<100, 3_600_000>)]
    webhook_poll: Duration,
    /// How often key.expiring, key.expired and credits.low are looked for:
    /// 1s to 1d.
    #[arg(long, env = "AUTH_SERVER_WEBHOOK_SCAN_EVERY", default_value = "60s",
        value_parser = bounded::<1000, 86_400_000>)]
    webhook_scan_every: Duration,
    /// One attempt's time limit: 1s to 5m.
    #[arg(long, env = "AUTH_SERVER_WEBHOOK_TIMEOUT", default_value = "10s",
        value_parser = bounded::<1000, 300_000>)]
    webhook_timeout: Duration,
    /// The wait after a first failed attempt (doubling after each): 100ms
    /// to 1d.
    #[arg(long, env = "AUTH_SERVER_WEBHOOK_RETRY_FIRST", default_value = "5s",
        value_parser = bounded::<100, 86_400_000>)]
    webhook_retry_first: Duration,
    /// The longest wait between attempts: 100ms to 1d.
    #[arg(long, env = "AUTH_SERVER_WEBHOOK_RETRY_MAX", default_value = "1h",
        value_parser = bounded::<100, 86_400_000>)]
    webhook_retry_max: Duration,
    /// No attempt after this long from the event: the delivery is marked
    /// failed. 1s to 30d.
    #[arg(long, env = "AUTH_SERVER_WEBHOOK_GIVE_UP_AFTER", default_value = "24h",
        value_parser = bounded::<1000, 2_592_000_000>)]
    webhook_give_up_after: Duration,
}

impl WebhookArgs {
    fn options(&self) -> auth_server::WebhookOptions {
        auth_server::WebhookOptions {
            deliver: !self.no_webhook_delivery,
            poll: self.webhook_poll,
            scan_every: self.webhook_scan_every,
            timeout: self.webhook_timeout,
            retry: auth_sqlx::RetryPolicy {
                first: self.webhook_retry_first,
                max_delay: self.webhook_retry_max.max(self.webhook_retry_first),
                give_up_after: self.webhook_give_up_after,
            },
            ..auth_server::WebhookOptions::default()
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ValidateAuthArg {
    ServiceToken,
    None,
}

#[derive(Subcommand)]
enum ServicesCommand {
    /// Creates a service credential and prints it (once).
    Create {
        /// The service's name.
        #[arg(long)]
        name: String,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Lists service credentials (never the credentials themselves).
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Disables a service credential now.
    Disable {
        /// The credential's id.
        id: String,
    },
    /// Makes a new credential for the same service; the old one stays
    /// valid for the overlap.
    Rotate {
        /// The credential's id.
        id: String,
        /// How long the old credential stays valid, e.g. 1h.
        #[arg(long, value_parser = parse_duration, default_value = "1h")]
        overlap: Duration,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum WebhooksCommand {
    /// Registers an endpoint and prints its signing secret (once).
    Add {
        /// Where deliveries are POSTed (https, or http on a trusted
        /// network).
        url: String,
        /// An event to send (repeatable, or comma-separated): key.expiring,
        /// key.expired, key.disabled, key.rotated, key.leaked, credits.low.
        #[arg(long = "event", required = true, value_delimiter = ',')]
        events: Vec<String>,
        /// key.expiring: this many days before a key's expiry (1 to 365).
        #[arg(long, default_value_t = auth_sqlx::DEFAULT_EXPIRING_DAYS,
            value_parser = clap::value_parser!(u32).range(1..=365))]
        expiring_days: u32,
        /// credits.low: when a key's credits fall below this.
        #[arg(long, default_value_t = auth_sqlx::DEFAULT_CREDITS_BELOW,
            value_parser = clap::value_parser!(u64).range(1..=1_000_000_000_000))]
        credits_below: u64,
        /// A note for operators.
        #[arg(long, default_value = "")]
        description: String,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Lists endpoints (never their secrets).
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Deletes an endpoint and its deliveries.
    Remove {
        /// The endpoint's id (wh_…).
        id: String,
    },
    /// Gives an endpoint a new signing secret and prints it (once); the
    /// old one still signs (a second signature) for the overlap.
    RotateSecret {
        /// The endpoint's id (wh_…).
        id: String,
        /// How long the old secret still signs, e.g. 24h: 0s (at once: a
        /// leaked secret) to 7d.
        #[arg(long, value_parser = parse_overlap, default_value = "24h")]
        overlap: Duration,
        /// Change it even while an earlier change's overlap runs (the
        /// secret before that stops signing at once).
        #[arg(long)]
        force: bool,
    },
    /// Prints an endpoint's deliveries, newest first, with their status.
    Deliveries {
        /// The endpoint's id (wh_…).
        id: String,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 20,
            value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Creates a key and prints it (once).
    Create {
        /// The owner (the principal the key authenticates as).
        #[arg(long)]
        owner: String,
        /// A scope to grant (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A rate limit: REQUESTS/WINDOW, e.g. 60/60s, 1000/1h.
        #[arg(long, value_parser = parse_rate)]
        rate: Option<RateLimitPolicy>,
        /// Expiry from now, e.g. 90d, 12h.
        #[arg(long, value_parser = parse_duration)]
        expires: Option<Duration>,
        /// Usage credits (0 to 1000000000000): each validation spends its
        /// cost (1 by default); none left, the key is refused
        /// (`usage_exceeded`) until its next refill.
        #[arg(long, value_parser = parse_credits)]
        credits: Option<u64>,
        /// A refill of the credits: AMOUNT/EVERY, e.g. 1000/1d, 50000/30d
        /// (every 60s to 366d); sets what remains to AMOUNT, never adds.
        #[arg(long, value_parser = parse_refill, requires = "credits")]
        refill: Option<Refill>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Lists keys (never the keys themselves).
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Disables a key now.
    Disable {
        /// The key's id.
        id: String,
    },
    /// Makes a new key for the same owner; the old one stays valid for the
    /// overlap.
    Rotate {
        /// The key's id.
        id: String,
        /// How long the old key stays valid, e.g. 24h.
        #[arg(long, value_parser = parse_duration, default_value = "24h")]
        overlap: Duration,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Says whether KEY has our format and a valid checksum, offline (no
    /// database): exit status 0 if so, 1 if not. Prints its prefix only.
    /// `-` reads the key from stdin (keeps it out of shell history).
    Check {
        /// The key, or `-` for stdin.
        key: String,
    },
    /// Prints a key's decisions by hour and code (what the servers have
    /// written: each writes its counts every 10 s).
    Usage {
        /// The key's id.
        id: String,
        /// How far back, e.g. 24h, 7d.
        #[arg(long, value_parser = parse_duration, default_value = "24h")]
        since: Duration,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `90d`, `12h`, `30m`, `45s`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    // Whole seconds: keys' times are (a `500ms` expiry would be born
    // expired).
    let d = parse_span(text)?;
    if d.subsec_nanos() != 0 {
        return Err(format!("`{}`: the unit must be s, m, h or d", text.trim()));
    }
    Ok(d)
}

/// A webhook secret's overlap: `0s` (none) to `7d`.
fn parse_overlap(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let d = match trimmed.strip_prefix('0') {
        // `0s`, `0h`…: none (what `parse_duration` refuses elsewhere).
        Some("s" | "m" | "h" | "d") => Duration::ZERO,
        _ => parse_duration(trimmed)?,
    };
    if d > auth_sqlx::MAX_SECRET_OVERLAP {
        return Err(format!("`{trimmed}`: at most 7d"));
    }
    Ok(d)
}

/// A duration with any unit, `ms` too (the webhook settings').
fn parse_span(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}`: add a unit (ms, s, m, h or d), e.g. 90d"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected a number then a unit, e.g. 24h"))?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("`{text}`: the unit must be ms, s, m, h or d")),
    };
    if n == 0 {
        return Err(format!("`{text}`: must be more than zero"));
    }
    // Checked here, before anything is written: at most 100 years.
    n.checked_mul(millis)
        .map(Duration::from_millis)
        .filter(|d| *d <= auth_sqlx::MAX_LIFETIME)
        .ok_or_else(|| format!("`{text}`: at most 100 years"))
}

/// A duration from `LO` to `HI` milliseconds (the webhook settings').
fn bounded<const LO: u64, const HI: u64>(text: &str) -> Result<Duration, String> {
    let d = parse_span(text)?;
    let (lo, hi) = (Duration::from_millis(LO), Duration::from_millis(HI));
    if d < lo || d > hi {
        return Err(format!("`{text}`: must be {lo:?} to {hi:?}"));
    }
    Ok(d)
}

/// `60/60s`.
fn parse_rate(text: &str) -> Result<RateLimitPolicy, String> {
    let (requests, window) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}`: expected REQUESTS/WINDOW, e.g. 60/60s"))?;
    let requests: u32 = requests
        .trim()
        .parse()
        .ok()
        .filter(|r| *r > 0)
        .ok_or_else(|| format!("`{text}`: the request count must be a positive number"))?;
    Ok(RateLimitPolicy::new(requests, parse_duration(window)?))
}

/// A number of credits: 0 to 1000000000000.
fn parse_credits(text: &str) -> Result<u64, String> {
    text.trim()
        .parse()
        .ok()
        .filter(|n| *n <= auth_sqlx::MAX_CREDITS)
        .ok_or_else(|| format!("`{text}`: credits are 0 to {}", auth_sqlx::MAX_CREDITS))
}

/// `1000/1d`: checked here, before anything is written.
fn parse_refill(text: &str) -> Result<Refill, String> {
    let (amount, every) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}`: expected AMOUNT/EVERY, e.g. 1000/1d"))?;
    let amount = parse_credits(amount)
        .ok()
        .filter(|a| *a >= 1)
        .ok_or_else(|| {
            format!(
                "`{text}`: the amount must be 1 to {}",
                auth_sqlx::MAX_CREDITS
            )
        })?;
    let every = parse_duration(every)?;
    if !(auth_sqlx::MIN_REFILL_EVERY..=auth_sqlx::MAX_REFILL_EVERY).contains(&every) {
        return Err(format!("`{text}`: refill every 60s to 366d"));
    }
    Ok(Refill { amount, every })
}

fn ago(t: Option<SystemTime>) -> String {
    match t {
        None => "-".into(),
        Some(t) => {
            let s = t
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            s.to_string()
        }
    }
}

/// Text from the database as it may be shown on a terminal: control
/// characters (which would move the cursor or recolour the screen) escaped.
fn shown(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if auth_sqlx::is_hidden(c) {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

fn print_services(services: &[auth_sqlx::KeyInfo]) {
    println!(
        "{:<22} {:<16} {:<20} {:<11} {:<11} {:<8}",
        "ID", "PREFIX", "NAME", "EXPIRES", "LAST USED", "STATE"
    );
    for k in services {
        println!(
            "{:<22} {:<16} {:<20} {:<11} {:<11} {:<8}",
            k.id,
            k.prefix,
            shown(&k.owner),
            ago(k.expires_at),
            ago(k.last_used_at),
            if k.disabled_at.is_some() {
                "disabled"
            } else {
                "active"
            }
        );
    }
}

/// How the CLI shows one kind of credential (client keys, service
/// credentials): the same commands, their own table, JSON and words.
struct Shown {
    /// "key", "credential".
    noun: &'static str,
    /// In errors: "key", "service credential".
    what: &'static str,
    /// The JSON list's field.
    plural: &'static str,
    table: fn(&[auth_sqlx::KeyInfo]),
    info_json: fn(&auth_sqlx::KeyInfo) -> serde_json::Value,
    created_json: fn(&auth_sqlx::CreatedKey) -> serde_json::Value,
}

const KEYS: Shown = Shown {
    noun: "key",
    what: "key",
    plural: "keys",
    table: print_table,
    info_json: auth_server::info_json,
    created_json: auth_server::created_json,
};

const SERVICES: Shown = Shown {
    noun: "credential",
    what: "service credential",
    plural: "services",
    table: print_services,
    info_json: auth_server::service_json,
    created_json: auth_server::created_service_json,
};

impl Shown {
    /// A new credential: its row and, once, the secret after `label`.
    fn created(&self, created: &auth_sqlx::CreatedKey, json: bool, label: &str) {
        if json {
            println!("{}", (self.created_json)(created));
        } else {
            (self.table)(std::slice::from_ref(&created.info));
            println!("\n{label}: {}", created.key.expose());
        }
    }

    fn list(&self, list: &[auth_sqlx::KeyInfo], json: bool) {
        if json {
            let list: Vec<_> = list.iter().map(self.info_json).collect();
            println!("{}", serde_json::json!({ self.plural: list }));
        } else {
            (self.table)(list);
        }
    }

    fn missing(&self, id: &str) -> Box<dyn std::error::Error> {
        format!("no {} with id {id}", self.what).into()
    }

    fn disabled(&self, existed: bool, id: &str) -> Result<(), Box<dyn std::error::Error>> {
        if !existed {
            return Err(self.missing(id));
        }
        println!("disabled {id}");
        Ok(())
    }

    fn rotated(
        &self,
        created: Option<auth_sqlx::CreatedKey>,
        id: &str,
        overlap: Duration,
        json: bool,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let created = created.ok_or_else(|| self.missing(id))?;
        if json {
            println!("{}", (self.created_json)(&created));
        } else {
            (self.table)(std::slice::from_ref(&created.info));
            println!(
                "\nnew {} (shown once): {}\n{id} stays valid for {}s",
                self.noun,
                created.key.expose(),
                overlap.as_secs()
            );
        }
        Ok(())
    }
}

fn print_table(keys: &[auth_sqlx::KeyInfo]) {
    println!(
        "{:<22} {:<16} {:<14} {:<20} {:<10} {:<13} {:<11} {:<11} {:<8}",
        "ID", "PREFIX", "OWNER", "SCOPES", "RATE", "CREDITS", "EXPIRES", "LAST USED", "STATE"
    );
    let now = SystemTime::now();
    for k in keys {
        let rate = k.rate_limit.map_or_else(
            || "-".to_owned(),
            |p| format!("{}/{}s", p.requests, p.window.as_secs()),
        );
        let credits = k
            .credits
            .map_or_else(|| "-".to_owned(), |c| c.remaining_at(now).to_string());
        println!(
            "{:<22} {:<16} {:<14} {:<20} {:<10} {:<13} {:<11} {:<11} {:<8}",
            k.id,
            k.prefix,
            shown(&k.owner),
            if k.scopes.is_empty() {
                "-".to_owned()
            } else {
                k.scopes.join(",")
            },
            rate,
            credits,
            ago(k.expires_at),
            ago(k.last_used_at),
            if k.disabled_at.is_some() {
                "disabled"
            } else {
                "active"
            }
        );
    }
}

/// `2026-12-01 21:00` (UTC) for Unix seconds.
fn utc_hour(unix: u64) -> String {
    format!("{}:00", &utc_time(unix)[..13])
}

/// `2026-12-01 21:07:05` (UTC) for Unix seconds.
fn utc_time(unix: u64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(unix);
    auth_core::webhook::rfc3339(at)[..19].replace('T', " ")
}

/// A record's changes on one line: `field: from → to; …`, values as JSON.
fn changes_text(record: &auth_sqlx::AuditRecord) -> String {
    let text = record
        .changes
        .iter()
        .map(|(field, c)| format!("{field}: {} → {}", c.from, c.to))
        .collect::<Vec<_>>()
        .join("; ");
    if text.is_empty() {
        "-".to_owned()
    } else {
        text
    }
}

fn print_audit(records: &[auth_sqlx::AuditRecord]) {
    println!(
        "{:<19} {:<20} {:<8} {:<8} {:<22} CHANGES",
        "TIME (UTC)", "ACTOR", "ACTION", "RESOURCE", "ID"
    );
    for r in records {
        let unix =
            r.at.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
        // Everything from the database escaped: it reaches a terminal.
        println!(
            "{:<19} {:<20} {:<8} {:<8} {:<22} {}",
            utc_time(unix),
            shown(&r.actor),
            shown(&r.action),
            shown(&r.resource),
            shown(&r.key_id),
            shown(&changes_text(r))
        );
    }
    if records.is_empty() {
        println!("(no records)");
    }
}

fn print_usage(usage: &auth_sqlx::KeyUsage) {
    println!("{} ({})", usage.id, shown(&usage.owner));
    println!(
        "{:<17} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "HOUR (UTC)", "VALID", "DISABLED", "EXPIRED", "SCOPE", "RATE", "CREDITS", "TOTAL"
    );
    for b in &usage.buckets {
        let c = &b.counts;
        println!(
            "{:<17} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            utc_hour(b.hour),
            c.valid,
            c.disabled,
            c.expired,
            c.insufficient_scope,
            c.rate_limited,
            c.usage_exceeded,
            b.total()
        );
    }
    if usage.buckets.is_empty() {
        println!("(no decisions in this time)");
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    if let Command::Backup { to } = &cli.command {
        return backup(&cli, to).await;
    }
    if let Command::Keys {
        command: KeysCommand::Check { key },
    } = &cli.command
    {
        return check_key(key);
    }
    let store = auth_server::open_store(&cli.data_dir, cli.database_url.as_deref()).await?;
    // What the operator writes here is recorded as theirs.
    let as_cli = store.acting(auth_sqlx::Actor::cli());
    match cli.command {
        Command::Serve {
            bind,
            log_format,
            validate_auth,
            tls_cert,
            tls_key,
            metrics_bind,
            secret_scanning_keys,
            webhooks,
        } => {
            match log_format {
                LogFormat::Text => tracing_subscriber::fmt().with_target(false).init(),
                LogFormat::Json => tracing_subscriber::fmt().json().init(),
            }
            let options = auth_server::Options {
                validate_auth: match validate_auth {
                    ValidateAuthArg::ServiceToken => auth_server::ValidateAuth::ServiceToken,
                    ValidateAuthArg::None => auth_server::ValidateAuth::None,
                },
                secret_scanning: match secret_scanning_keys {
                    Some(path) => {
                        Some(std::sync::Arc::new(auth_server::ScanningKeys::load(&path)?))
                    }
                    None => None,
                },
                webhooks: webhooks.options(),
            };
            if let Some(keys) = &options.secret_scanning {
                tracing::info!(path = %keys.path().display(), keys = keys.key_ids().len(),
                    "secret scanning reports taken at {}", auth_server::GITHUB_PATH);
            }
            // Always: SIGHUP's default would end the process. Installed
            // here, before the server listens.
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(hup) => {
                    tokio::spawn(reload_on_sighup(hup, options.secret_scanning.clone()));
                }
                Err(e) => tracing::warn!(error = %e,
                    "no SIGHUP handler: restart to refresh the secret scanning keys"),
            }
            let app = auth_server::build(store.clone(), &cli.data_dir, options).await?;
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some(auth_server::Tls { cert, key }),
                _ => None,
            };
            let listener = std::net::TcpListener::bind(bind)?;
            let metrics_listener = match metrics_bind {
                Some(addr) => Some(
                    std::net::TcpListener::bind(addr)
                        .map_err(|e| format!("--metrics-bind {addr}: {e}"))?,
                ),
                None => None,
            };
            tracing::info!(address = %listener.local_addr()?,
                scheme = if tls.is_some() { "https" } else { "http" },
                admin_key = %auth_server::admin_key_path(&cli.data_dir).display(),
                "auth-server listening");
            // One signal stops both listeners.
            let (stop, stopped) = tokio::sync::watch::channel(());
            tokio::spawn(async move {
                shutdown().await;
                let _ = stop.send(());
            });
            let until_stopped = || {
                let mut stopped = stopped.clone();
                async move {
                    let _ = stopped.changed().await;
                }
            };
            let api = auth_server::serve(listener, app.api, tls.as_ref(), until_stopped());
            let served = match metrics_listener {
                Some(metrics_listener) => {
                    tracing::info!(address = %metrics_listener.local_addr()?,
                        "metrics listening (GET /metrics)");
                    let metrics =
                        auth_server::serve(metrics_listener, app.metrics, None, until_stopped());
                    tokio::try_join!(api, metrics).map(|_| ())
                }
                None => api.await,
            };
            // What was counted since the last flush is not lost, however
            // serving ended.
            if let Err(e) = store.flush_usage().await {
                tracing::warn!(error = %e, "could not write the last usage counts");
            }
            served?;
            tracing::info!("auth-server stopped");
        }
        Command::Keys { command } => match command {
            KeysCommand::Create {
                owner,
                scopes,
                rate,
                expires,
                credits,
                refill,
                json,
            } => {
                let expires_at = match expires {
                    Some(d) => Some(
                        SystemTime::now()
                            .checked_add(d)
                            .ok_or("--expires is too far ahead")?,
                    ),
                    None => None,
                };
                let created = as_cli
                    .create(NewKey {
                        owner,
                        scopes,
                        rate_limit: rate,
                        expires_at,
                        credits: credits.map(|remaining| Credits { remaining, refill }),
                    })
                    .await?;
                KEYS.created(&created, json, "key (shown once)");
            }
            KeysCommand::List { json } => KEYS.list(&store.list().await?, json),
            KeysCommand::Disable { id } => KEYS.disabled(as_cli.disable(&id).await?, &id)?,
            KeysCommand::Rotate { id, overlap, json } => {
                let created = as_cli.rotate(&id, overlap).await?;
                KEYS.rotated(created, &id, overlap, json)?;
            }
            KeysCommand::Check { .. } => unreachable!("handled before the store is opened"),
            KeysCommand::Usage { id, since, json } => {
                let from = SystemTime::now()
                    .checked_sub(since)
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                let usage = store
                    .key_usage(&id, from)
                    .await?
                    .ok_or_else(|| KEYS.missing(&id))?;
                if json {
                    println!("{}", auth_server::usage_json(&usage, from));
                } else {
                    print_usage(&usage);
                }
            }
        },
        Command::Services { command } => services(&as_cli.services(), command).await?,
        Command::Audit {
            key,
            since,
            limit,
            json,
        } => {
            let since = since.map(|back| {
                SystemTime::now()
                    .checked_sub(back)
                    .unwrap_or(SystemTime::UNIX_EPOCH)
            });
            let records = store
                .audit(auth_sqlx::AuditFilter {
                    key_id: key.as_deref().filter(|k| !k.is_empty()),
                    since,
                    limit,
                })
                .await?;
            if json {
                println!("{}", auth_server::audit_json(&records));
            } else {
                print_audit(&records);
            }
        }
        Command::Webhooks { command } => webhooks(&as_cli, command).await?,
        Command::Backup { .. } => unreachable!("handled before the store is opened"),
    }
    Ok(())
}

async fn webhooks(
    store: &auth_sqlx::SqlKeyStore,
    command: WebhooksCommand,
) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        WebhooksCommand::Add {
            url,
            events,
            expiring_days,
            credits_below,
            description,
            json,
        } => {
            let events = auth_server::parse_events(&events)?;
            let created = store
                .create_webhook(auth_sqlx::NewWebhook {
                    url,
                    events,
                    expiring_days,
                    credits_below,
                    description,
                })
                .await?;
            if json {
                println!("{}", auth_server::created_webhook_json(&created));
            } else {
                print_webhooks(std::slice::from_ref(&created.webhook));
                println!();
                println!("secret (shown once; receivers verify deliveries with it):");
                println!("{}", created.secret.reveal().as_str());
            }
        }
        WebhooksCommand::List { json } => {
            let list = store.webhooks().await?;
            if json {
                println!("{}", auth_server::webhooks_json(&list));
            } else {
                print_webhooks(&list);
            }
        }
        WebhooksCommand::Remove { id } => {
            if !store.delete_webhook(&id).await? {
                return Err(format!("no webhook with id {}", shown(&id)).into());
            }
            println!("removed {}", shown(&id));
        }
        WebhooksCommand::RotateSecret { id, overlap, force } => {
            let Some((secret, _)) = store.rotate_webhook_secret(&id, overlap, force).await? else {
                return Err(format!("no webhook with id {}", shown(&id)).into());
            };
            println!(
                "new secret for {} (shown once; the old one still signs for {}):",
                shown(&id),
                humantime(overlap)
            );
            println!("{}", secret.reveal().as_str());
        }
        WebhooksCommand::Deliveries { id, limit, json } => {
            if store.webhook(&id).await?.is_none() {
                return Err(format!("no webhook with id {}", shown(&id)).into());
            }
            let list = store.deliveries(&id, limit).await?;
            if json {
                println!("{}", auth_server::deliveries_json(&list));
            } else {
                print_deliveries(&list);
            }
        }
    }
    Ok(())
}

/// `90s`, `24h`: a whole duration in its largest exact unit.
fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".to_owned(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn print_webhooks(list: &[auth_sqlx::Webhook]) {
    println!("{:<20} {:<40} EVENTS", "ID", "URL");
    for w in list {
        let events: Vec<&str> = w.events.iter().map(|e| e.as_str()).collect();
        println!("{:<20} {:<40} {}", w.id, shown(&w.url), events.join(","));
    }
}

fn print_deliveries(list: &[auth_sqlx::Delivery]) {
    println!(
        "{:<19} {:<37} {:<13} {:<9} {:>8}  LAST",
        "QUEUED (UTC)", "ID", "EVENT", "STATUS", "ATTEMPTS"
    );
    for d in list {
        let queued = d
            .created_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |t| t.as_secs());
        println!(
            "{:<19} {:<37} {:<13} {:<9} {:>8}  {}",
            utc_time(queued),
            d.id,
            d.event,
            d.status.as_str(),
            d.attempts,
            d.last_error
                .as_deref()
                .map(shown)
                .or_else(|| d.last_status.map(|s| s.to_string()))
                .unwrap_or_else(|| "-".to_owned())
        );
    }
}

/// A consistent copy of the SQLite database at `to`: the database is
/// opened as it is — never created, never migrated (a mistyped
/// `--data-dir` is an error, and a newer binary leaves a running server's
/// schema alone) — and PostgreSQL is refused before connecting.
async fn backup(cli: &Cli, to: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let url = auth_server::database_url(&cli.data_dir, cli.database_url.as_deref());
    if !url.starts_with("sqlite:") {
        return Err("backups of PostgreSQL are made with its own tools (pg_dump)".into());
    }
    let existing = if url.contains("mode=") {
        url
    } else {
        format!("{url}{}mode=rw", if url.contains('?') { '&' } else { '?' })
    };
    let store = auth_sqlx::SqlKeyStore::connect(&existing)
        .await
        .map_err(|e| format!("no database to back up ({e})"))?;
    store.backup_to(to).await?;
    println!("backed up to {}", to.display());
    Ok(())
}

async fn services(
    services: &auth_sqlx::ServiceCredentials,
    command: ServicesCommand,
) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        ServicesCommand::Create { name, json } => {
            let created = services.create(&name).await?;
            SERVICES.created(
                &created,
                json,
                "credential (shown once; send it as X-Service-Token)",
            );
        }
        ServicesCommand::List { json } => SERVICES.list(&services.list().await?, json),
        ServicesCommand::Disable { id } => SERVICES.disabled(services.disable(&id).await?, &id)?,
        ServicesCommand::Rotate { id, overlap, json } => {
            let created = services.rotate(&id, overlap).await?;
            SERVICES.rotated(created, &id, overlap, json)?;
        }
    }
    Ok(())
}

/// `keys check`: offline, the key never printed back in full.
fn check_key(key: &str) -> Result<(), Box<dyn std::error::Error>> {
    let key = if key == "-" {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line
    } else {
        key.to_owned()
    };
    let verdict = auth_server::check_key(&key)?;
    println!("{verdict}");
    Ok(())
}

/// Re-reads GitHub's secret scanning keys on each SIGHUP (a file that no
/// longer parses leaves the keys in use as they were), off the async
/// threads. Without a keys file a SIGHUP is logged and ignored: it cannot
/// turn the route on (that takes a restart with --secret-scanning-keys).
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    keys: Option<std::sync::Arc<auth_server::ScanningKeys>>,
) {
    while hup.recv().await.is_some() {
        let Some(keys) = keys.clone() else {
            tracing::info!("SIGHUP: no secret scanning keys file configured, nothing to reload");
            continue;
        };
        match tokio::task::spawn_blocking(move || keys.reload()).await {
            Ok(Ok(n)) => tracing::info!(keys = n, "secret scanning keys re-read"),
            Ok(Err(e)) => tracing::warn!(error = %e, "secret scanning keys kept as they were"),
            Err(e) => tracing::warn!(error = %e, "secret scanning keys kept as they were"),
        }
    }
}

/// SIGTERM or ctrl-c.
async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("auth-server: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_are_shown_in_utc() {
        assert_eq!(utc_hour(0), "1970-01-01 00:00");
        assert_eq!(utc_hour(951_782_400 + 3 * 3600), "2000-02-29 03:00");
        assert_eq!(utc_hour(1_796_083_200), "2026-12-01 00:00");
        assert_eq!(utc_hour(253_402_297_200), "9999-12-31 23:00");
        assert_eq!(
            utc_time(951_782_400 + 3 * 3600 + 7 * 60 + 5),
            "2000-02-29 03:07:05"
        );
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let text = shown("a\u{0}b\u{1b}[31mc\u{7}d\u{9b}e\u{202e}f\u{200b}");
        assert!(!text.chars().any(auth_sqlx::is_hidden), "{text:?}");
        assert_eq!(
            text,
            "a\\u{0}b\\u{1b}[31mc\\u{7}d\\u{9b}e\\u{202e}f\\u{200b}"
        );
        assert_eq!(shown("svc-ä €"), "svc-ä €");
    }

    #[test]
    fn durations_are_bounded_before_anything_is_written() {
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86_400)
        );
        assert!(parse_duration("99999999999999d").is_err());
        assert!(parse_duration("36501d").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_rate("5/18446744073709551615s").is_err());
        // Milliseconds for the webhook settings only: keys' times are
        // whole seconds.
        assert!(parse_duration("500ms").is_err());
        assert!(parse_duration("1500ms").is_err());
        assert_eq!(parse_duration("2000ms"), Ok(Duration::from_secs(2)));
        assert!(parse_refill("1000/60500ms").is_err());
    }

    #[test]
    fn webhook_flags_parse() {
        let options = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
            match cli.command {
                Command::Serve { webhooks, .. } => Ok(webhooks.options()),
                _ => Err("not serve".to_owned()),
            }
        };
        assert!(options(&["auth-server", "serve"]).unwrap().deliver);
        let off = options(&["auth-server", "serve", "--no-webhook-delivery"]).unwrap();
        assert!(!off.deliver);
        let quick = options(&[
            "auth-server",
            "serve",
            "--webhook-poll",
            "250ms",
            "--webhook-retry-first",
            "2s",
            "--webhook-retry-max",
            "1s",
        ])
        .unwrap();
        assert_eq!(quick.poll, Duration::from_millis(250));
        // A maximum below the first wait is the first wait.
        assert_eq!(quick.retry.max_delay, Duration::from_secs(2));
        for bad in [
            &["auth-server", "serve", "--webhook-poll", "50ms"][..],
            &["auth-server", "serve", "--webhook-timeout", "10m"],
            &["auth-server", "serve", "--webhook-give-up-after", "31d"],
        ] {
            assert!(options(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn webhook_settings_are_bounded() {
        assert_eq!(
            bounded::<100, 3_600_000>("100ms"),
            Ok(Duration::from_millis(100))
        );
        for bad in ["99ms", "2h", "0s", "1x", "", "18446744073709551615d"] {
            assert!(bounded::<100, 3_600_000>(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_overlap("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_overlap("0h"), Ok(Duration::ZERO));
        assert_eq!(parse_overlap("24h"), Ok(Duration::from_secs(86_400)));
        for bad in ["8d", "0", "0x", "-1s", "10", "0ms"] {
            assert!(parse_overlap(bad).is_err(), "{bad}");
        }
        assert_eq!(humantime(Duration::from_secs(86_400)), "1d");
        assert_eq!(humantime(Duration::from_secs(90)), "90s");
    }

    #[test]
    fn credits_and_refills_are_bounded_before_anything_is_written() {
        assert_eq!(parse_credits("1000"), Ok(1000));
        assert_eq!(parse_credits("0"), Ok(0));
        assert_eq!(parse_credits("1000000000000"), Ok(1_000_000_000_000));
        for bad in ["1000000000001", "-1", "ten", ""] {
            assert!(parse_credits(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_refill("1000/1d"),
            Ok(Refill {
                amount: 1000,
                every: Duration::from_secs(86_400)
            })
        );
        assert!(parse_refill("1/60s").is_ok() && parse_refill("1/366d").is_ok());
        for bad in [
            "0/1d",
            "1000/59s",
            "1000/367d",
            "1000",
            "1000/1y",
            "1000000000001/1d",
        ] {
            assert!(parse_refill(bad).is_err(), "{bad}");
        }
    }
}
