//! A harness that runs an SSM Command document's `aws:runShellScript`
//! step the way the SSM agent does, so `packaging/ssm/ircap-capture.yaml`
//! is tested as it will run on an instance:
//!
//! - parameters: the given values, else the defaults; a parameter without
//!   either, an undeclared one, or a value outside `allowedValues` /
//!   `allowedPattern` is refused (SSM refuses these at `send-command`);
//! - `{{ name }}` (any spacing) replaced by the value in every
//!   `runCommand` line and in `timeoutSeconds`;
//! - the lines joined with `\n` (plus a final `\n`) into `_script.sh`,
//!   mode 0750, in
//!   `<root>/var/lib/amazon/ssm/<instance>/document/orchestration/<command-id>/<step>/`;
//! - run as `sh -c <script path>` in that directory with
//!   `AWS_SSM_INSTANCE_ID` and `AWS_SSM_REGION_NAME` set, stdout and
//!   stderr written to `stdout` / `stderr` files beside the script, killed
//!   at `timeoutSeconds`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository's `packaging/ssm/` directory.
#[must_use]
pub fn ssm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/ssm")
}

/// Parses a YAML document into JSON values.
pub fn load_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The document as the `.json` file must hold it: 2-space indentation,
/// keys in document order, a final newline.
pub fn render_json(doc: &Value) -> String {
    let mut s = serde_json::to_string_pretty(doc).unwrap();
    s.push('\n');
    s
}

/// Values for every declared parameter: `given`, else the default.
///
/// # Errors
/// A message naming the parameter, the way `send-command` refuses it.
pub fn resolve_parameters(
    doc: &Value,
    given: &[(&str, &str)],
) -> Result<BTreeMap<String, String>, String> {
    let declared = doc["parameters"]
        .as_object()
        .ok_or("document has no parameters")?;
    for (name, _) in given {
        if !declared.contains_key(*name) {
            return Err(format!("parameter {name} is not declared"));
        }
    }
    let mut out = BTreeMap::new();
    for (name, spec) in declared {
        let value = match given.iter().find(|(n, _)| n == name) {
            Some((_, v)) => (*v).to_owned(),
            None => match &spec["default"] {
                Value::String(s) => s.clone(),
                Value::Null => return Err(format!("parameter {name} is required")),
                other => other.to_string(),
            },
        };
        if let Some(allowed) = spec["allowedValues"].as_array()
            && !allowed.iter().any(|a| a.as_str() == Some(value.as_str()))
        {
            return Err(format!(
                "parameter {name}: {value:?} is not an allowed value"
            ));
        }
        if let Some(pattern) = spec["allowedPattern"].as_str() {
            let re = regex::Regex::new(pattern).map_err(|e| format!("{name}: {e}"))?;
            if !re.is_match(&value) {
                return Err(format!(
                    "parameter {name}: {value:?} does not match {pattern}"
                ));
            }
        }
        out.insert(name.clone(), value);
    }
    Ok(out)
}

/// Replaces every `{{ name }}` (any spacing inside the braces) of a
/// declared parameter; an undeclared name is an error, as in SSM.
///
/// # Errors
/// The undeclared name.
pub fn substitute(text: &str, params: &BTreeMap<String, String>) -> Result<String, String> {
    let re = regex::Regex::new(r"\{\{\s*([A-Za-z0-9_.:-]+)\s*\}\}").unwrap();
    let mut missing = None;
    let out = re.replace_all(text, |c: &regex::Captures<'_>| {
        let name = &c[1];
        params.get(name).cloned().unwrap_or_else(|| {
            missing = Some(name.to_owned());
            String::new()
        })
    });
    match missing {
        Some(name) => Err(format!("{{{{ {name} }}}} is not a declared parameter")),
        None => Ok(out.into_owned()),
    }
}

/// One `aws:runShellScript` step with its parameters substituted.
#[derive(Debug, Clone)]
pub struct ShellStep {
    /// The step's `name`.
    pub name: String,
    /// The `runCommand` lines.
    pub lines: Vec<String>,
    /// `timeoutSeconds` (SSM's default 3600 when absent).
    pub timeout: Duration,
}

/// The document's single `aws:runShellScript` step, substituted.
///
/// # Errors
/// A parameter problem or a document that is not shaped as expected.
pub fn shell_step(doc: &Value, given: &[(&str, &str)]) -> Result<ShellStep, String> {
    let params = resolve_parameters(doc, given)?;
    let steps = doc["mainSteps"].as_array().ok_or("no mainSteps")?;
    let [step] = steps.as_slice() else {
        return Err(format!("expected one step, found {}", steps.len()));
    };
    if step["action"] != "aws:runShellScript" {
        return Err(format!("unexpected action {}", step["action"]));
    }
    let lines = step["inputs"]["runCommand"]
        .as_array()
        .ok_or("no runCommand")?
        .iter()
        .map(|l| {
            substitute(
                l.as_str().ok_or("runCommand line is not a string")?,
                &params,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let timeout = match &step["inputs"]["timeoutSeconds"] {
        Value::Null => 3600,
        Value::String(s) => substitute(s, &params)?
            .parse()
            .map_err(|e| format!("timeoutSeconds: {e}"))?,
        Value::Number(n) => n.as_u64().ok_or("timeoutSeconds")?,
        other => return Err(format!("timeoutSeconds: {other}")),
    };
    Ok(ShellStep {
        name: step["name"].as_str().unwrap_or("step").to_owned(),
        lines,
        timeout: Duration::from_secs(timeout),
    })
}

/// What the SSM agent reports for one invocation.
#[derive(Debug)]
pub struct Invocation {
    /// The script's exit code (`None`: killed at the timeout).
    pub exit_code: Option<i32>,
    /// Everything it wrote on stdout.
    pub stdout: String,
    /// Everything it wrote on stderr.
    pub stderr: String,
    /// The orchestration directory the script ran in.
    pub dir: PathBuf,
}

/// Writes the step's script where the SSM agent would and runs it with
/// `sh -c`, as instance `instance_id` running command `command_id`.
pub fn run_like_ssm_agent(
    root: &Path,
    instance_id: &str,
    command_id: &str,
    step: &ShellStep,
    env: &[(&str, &str)],
) -> Invocation {
    let dir = root
        .join("var/lib/amazon/ssm")
        .join(instance_id)
        .join("document/orchestration")
        .join(command_id)
        .join(&step.name);
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("_script.sh");
    std::fs::write(&script, step.lines.join("\n") + "\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o750)).unwrap();
    let stdout = std::fs::File::create(dir.join("stdout")).unwrap();
    let stderr = std::fs::File::create(dir.join("stderr")).unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(&dir)
        .env("AWS_SSM_INSTANCE_ID", instance_id)
        .env("AWS_SSM_REGION_NAME", "eu-west-1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + step.timeout;
    let exit_code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Invocation {
        exit_code,
        stdout: std::fs::read_to_string(dir.join("stdout")).unwrap(),
        stderr: std::fs::read_to_string(dir.join("stderr")).unwrap(),
        dir,
    }
}
