//! The command-line side of `findings`, `diff` and `report`: arguments,
//! turning a capture id into a pulled directory, printing, exit codes
//! (0 done, 1 a capture could not be read or fetched, 2 bad usage).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use crate::analyst::{self, ServerSettings};
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
    /// Compare B with the host's baseline: among the captures beside B,
    /// one labelled baseline=true, else the host's earliest.
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
    let (Some(url), Some(ca), Some(cert), Some(key)) =
        (&fetch.server, &fetch.ca, &fetch.cert, &fetch.key)
    else {
        return Err(format!(
            "{what} is not a directory; to pull it give --server, --ca, --cert and --key (or IRCAP_SERVER, ...)"
        ));
    };
    let settings = ServerSettings {
        url: url.clone(),
        ca: ca.clone(),
        cert: cert.clone(),
        key: key.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime
        .block_on(async {
            let mut client = analyst::connect(&settings)?;
            analyst::pull(&mut client, what, &fetch.pull_dir).await
        })
        .map_err(|e| e.to_string())
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
    let a = match a.map(|a| resolve(a, &args.fetch)).transpose() {
        Ok(d) => d,
        Err(e) => return fail(&e),
    };
    let d = match super::run::diff_dirs(a.as_deref(), &b, args.baseline) {
        Ok(d) => d,
        Err(e) => return fail(&e.to_string()),
    };
    if !d.same_host {
        tracing::warn!("The two captures claim different hosts");
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let _ = writeln!(out, "{}", crate::render::json(&d).unwrap_or_default());
    } else {
        let _ = writeln!(out, "A {}  ->  B {}", escape(&d.a), escape(&d.b));
        let _ = write!(out, "{}", super::diff::table(&d));
    }
    ExitCode::SUCCESS
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
