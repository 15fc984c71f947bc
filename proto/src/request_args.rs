//! Which `ircap-agent capture` options a remote capture request may not
//! carry. Checked by the collector before a request is stored and again by
//! the agent before it runs one, from this one list.

/// Options a request may not carry: where a capture goes (in daemon mode it
/// always goes to the collector the agent is connected to, with the agent's
/// certificate), and options that would make the agent read a file or URL
/// the requester names instead of the host's own source.
pub const REFUSED_OPTIONS: &[&str] = &[
    "--physical-memory-source",
    "--imds-endpoint",
    "--output",
    "-o",
    "--collector",
    "--spool",
    "--ca",
    "--cert",
    "--key",
];

/// The first refused option among `args` (as written, without `=value`;
/// `-oDIR` counts as `-o`), if any.
#[must_use]
pub fn refused_option(args: &[String]) -> Option<&str> {
    args.iter().find_map(|arg| {
        let flag = arg.split('=').next().unwrap_or_default();
        let short_output = arg.starts_with("-o") && !arg.starts_with("--");
        (REFUSED_OPTIONS.contains(&flag) || short_output).then_some(flag)
    })
}
