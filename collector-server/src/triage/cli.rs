//! The command-line side of `findings`, `diff` and `report`: arguments,
//! turning a capture id into a pulled directory, printing, exit codes
//! (0 done, 1 a capture could not be read or fetched, 2 bad usage).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use ircap_proto::manifest::Manifest;

use super::baseline::{Among, Choice, Rule};
use crate::analyst::{self, AnalystClient, ServerSettings};
use crate::render::escape;

/// Where to fetch a capture given by id (all four, or none: then only
/// capture directories are accepted).
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Collector URL, https://HOST:PORT (to pull a capture given by id).
    #[arg(long, env = "IRCAP_SERVER")]
    pub server: Option<String>,
    /// CA certificate the collector's certificate must chain to.
    #[arg(long, env = "IRCAP_CA")]
    pub ca: Option<PathBuf>,
    /// Analyst certificate.
    #[arg(long, env = "IRCAP_CERT")]
    pub cert: Option<PathBuf>,
    /// Analyst key.
    #[arg(long, env = "IRCAP_KEY")]
    pub key: Option<PathBuf>,
    /// Where a capture given by id is pulled to (or found, when already
    /// pulled).
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub pull_dir: PathBuf,
}

/// `findings ID_OR_DIR`.
#[derive(Debug, Args)]
pub struct FindingsArgs {
    /// A capture directory, or a capture id (found in --pull-dir, else
    /// pulled there from the collector).
    pub capture: String,
    /// JSON Lines, one finding per line, instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

/// `diff A B`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The earlier capture (directory or id); left out with --baseline.
    #[arg(required_unless_present = "baseline")]
    pub a: Option<String>,
    /// The later capture (directory or id).
    pub b: Option<String>,
    /// Compare B with the host's baseline: the earliest of its captures
    /// labelled baseline=true, else its earliest capture, among those that
    /// began before B. Looked for on the collector (captures of B's agent
    /// identity, the chosen one pulled into --pull-dir) when --server,
    /// --ca, --cert and --key are given, else among the capture
    /// directories beside B.
    #[arg(long)]
    pub baseline: bool,
    /// One JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

/// `report ID_OR_DIR --html FILE`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A capture directory, or a capture id (as for `findings`).
    pub capture: String,
    /// The HTML file to write.
    #[arg(long, value_name = "FILE")]
    pub html: PathBuf,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

/// The collector settings, when all four were given.
fn settings(fetch: &FetchArgs) -> Option<ServerSettings> {
    let (Some(url), Some(ca), Some(cert), Some(key)) =
        (&fetch.server, &fetch.ca, &fetch.cert, &fetch.key)
    else {
        return None;
    };
    Some(ServerSettings {
        url: url.clone(),
        ca: ca.clone(),
        cert: cert.clone(),
        key: key.clone(),
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Capture `id` in `pull_dir`: there already, else pulled (and verified).
async fn local_or_pull(
    client: &mut AnalystClient,
    id: &str,
    pull_dir: &Path,
) -> Result<PathBuf, analyst::AnalystError> {
    let local = pull_dir.join(id);
    if local.is_dir() {
        return Ok(local);
    }
    client.pull(id, pull_dir).await
}

/// The directory of capture `what`: itself when it is one, else the
/// capture of that id in `--pull-dir`, pulled (and verified) when absent.
fn resolve(what: &str, fetch: &FetchArgs) -> Result<PathBuf, String> {
    let path = Path::new(what);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    ircap_proto::ArtifactName::parse(what)
        .ok()
        .filter(|_| !what.contains('/'))
        .ok_or_else(|| format!("{what:?} is neither a capture directory nor a capture id"))?;
    let local = fetch.pull_dir.join(what);
    if local.is_dir() {
        return Ok(local);
    }
    let Some(settings) = settings(fetch) else {
        return Err(format!(
            "{what} is not a directory; to pull it give --server, --ca, --cert and --key (or IRCAP_SERVER, ...)"
        ));
    };
    runtime()?
        .block_on(async {
            let mut client = AnalystClient::connect(&settings, None, None)?;
            local_or_pull(&mut client, what, &fetch.pull_dir).await
        })
        .map_err(|e| e.explain(&settings.url))
}

/// `diff --baseline B` with a collector: B's host's baseline among the
/// collector's captures of B's agent identity, pulled into `--pull-dir`
/// (verified) unless already there.
fn baseline_on_collector(
    b: &Path,
    settings: &ServerSettings,
    pull_dir: &Path,
) -> Result<(PathBuf, Rule), String> {
    let mb = Manifest::read(&b.join(ircap_proto::artifact_name::MANIFEST_FILE))
        .map_err(|e| e.to_string())?;
    let found = runtime()?
        .block_on(async {
            let mut client = AnalystClient::connect(settings, None, None)?;
            match super::baseline::on_collector(&mut client, &mb).await? {
                Some((id, rule)) => Ok(Some((
                    local_or_pull(&mut client, &id, pull_dir).await?,
                    rule,
                ))),
                None => Ok::<_, analyst::AnalystError>(None),
            }
        })
        .map_err(|e| e.explain(&settings.url))?;
    found.ok_or_else(|| {
        super::run::DiffError::NoBaseline(b.display().to_string(), "on the collector").to_string()
    })
}

fn fail(message: &str) -> ExitCode {
    tracing::error!("{}", escape(message));
    ExitCode::from(1)
}

/// Runs `findings`.
#[must_use]
pub fn findings(args: &FindingsArgs) -> ExitCode {
    let dir = match resolve(&args.capture, &args.fetch) {
        Ok(d) => d,
        Err(e) => return fail(&e),
    };
    let (e, found, path) = match super::run::findings_of_dir(&dir) {
        Ok(x) => x,
        Err(err) => return fail(&err.to_string()),
    };
    for p in &e.problems {
        tracing::warn!("{}", escape(p));
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        for f in &found {
            let _ = writeln!(out, "{}", crate::render::json(f).unwrap_or_default());
        }
    } else {
        let _ = write!(out, "{}", super::table(&found));
    }
    tracing::info!(
        findings = found.len(),
        by_severity = %super::counts_text(&super::counts(&found)),
        file = %escape(&path.display().to_string()),
        "Findings written"
    );
    ExitCode::SUCCESS
}

/// Runs `diff`.
#[must_use]
pub fn diff(args: &DiffArgs) -> ExitCode {
    // With --baseline a single capture is B, whichever slot it landed in.
    let (a, b) = match (&args.a, &args.b, args.baseline) {
        (Some(b), None, true) | (None, Some(b), true) => (None, b),
        (Some(a), Some(b), false) => (Some(a), b),
        _ => {
            tracing::error!("give two captures, or one with --baseline");
            return ExitCode::from(2);
        }
    };
    let b = match resolve(b, &args.fetch) {
        Ok(d) => d,
        Err(e) => return fail(&e),
    };
    let picked = if args.baseline {
        match settings(&args.fetch) {
            Some(s) => baseline_on_collector(&b, &s, &args.fetch.pull_dir)
                .map(|(p, rule)| (p, Some((rule, Among::Collector)))),
            None => super::run::baseline_beside(&b)
                .map(|(p, rule)| (p, Some((rule, Among::Beside))))
                .map_err(|e| e.to_string()),
        }
    } else {
        a.map_or_else(
            || Err("no capture A".to_owned()),
            |a| resolve(a, &args.fetch).map(|p| (p, None)),
        )
    };
    let (a, choice) = match picked {
        Ok(x) => x,
        Err(e) => return fail(&e),
    };
    let mut d = match super::run::diff_dirs(&a, &b) {
        Ok(d) => d,
        Err(e) => return fail(&e.to_string()),
    };
    d.baseline = choice.map(|(rule, among)| Choice { rule, among });
    if let Some(c) = d.baseline {
        tracing::info!(
            baseline = %escape(&d.a),
            rule = ?c.rule,
            among = ?c.among,
            "Baseline chosen"
        );
    }
    if !d.same_host {
        tracing::warn!("The two captures claim different hosts");
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let _ = writeln!(out, "{}", crate::render::json(&d).unwrap_or_default());
    } else {
        let how = match d.baseline {
            Some(Choice {
                rule: Rule::Labelled,
                among,
            }) => {
                format!(" (baseline: labelled baseline=true, {})", among_text(among))
            }
            Some(Choice {
                rule: Rule::Earliest,
                among,
            }) => {
                format!(
                    " (baseline: the host's earliest, none labelled, {})",
                    among_text(among)
                )
            }
            None => String::new(),
        };
        let _ = writeln!(out, "A {}{how}  ->  B {}", escape(&d.a), escape(&d.b));
        let _ = write!(out, "{}", super::diff::table(&d));
    }
    ExitCode::SUCCESS
}

fn among_text(among: Among) -> &'static str {
    match among {
        Among::Beside => "beside B",
        Among::Collector => "on the collector",
    }
}

/// Runs `report`.
#[must_use]
pub fn report(args: &ReportArgs) -> ExitCode {
    let dir = match resolve(&args.capture, &args.fetch) {
        Ok(d) => d,
        Err(e) => return fail(&e),
    };
    match super::run::report_of_dir(&dir, &args.html) {
        Ok(n) => {
            tracing::info!(findings = n, file = %escape(&args.html.display().to_string()), "Report written");
            crate::render::json(
                &serde_json::json!({"report": args.html.display().to_string(), "findings": n}),
            )
            .map(|j| writeln!(std::io::stdout().lock(), "{j}"));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}
