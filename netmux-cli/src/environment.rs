//! `netmux env`, `netmux intercept --env-file/--env-json` and `netmux
//! intercept … -- COMMAND`: a cluster container's environment (read by
//! netmuxd with the user's credentials) written out for a program run
//! here, or given to one run for as long as an intercept lasts, as
//! Telepresence's `--env-file` and `intercept -- cmd` and mirrord's
//! environment import do.
//!
//! Three forms: `dotenv` (Docker's `--env-file`: `NAME=value`, no quoting,
//! so a value with a line break cannot be written and is left out with a
//! note), `sh` (`export NAME='value'`, every value exact) and `json` (an
//! object, every value exact). A form that cannot carry a variable says
//! so; nothing is dropped silently.

use std::io::Write as _;
use std::path::Path;

use netmux_api::EnvironmentView;

/// An output form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `NAME=value` lines, as `docker run --env-file` and compose read them.
    Dotenv,
    /// `export NAME='value'` lines for `eval` in a POSIX shell.
    Sh,
    /// One JSON object.
    Json,
}

/// A POSIX shell variable name (`sh` cannot export `my.var`).
fn shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `view`'s variables in `format`, and a note per variable the form
/// cannot carry.
pub fn render(view: &EnvironmentView, format: Format) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut notes = Vec::new();
    match format {
        Format::Dotenv => {
            for (k, v) in &view.vars {
                if v.contains(['\n', '\r', '\0']) {
                    notes.push(format!(
                        "{k}: left out of the dotenv form (its value has a line break, which Docker's env files cannot carry); fix: use --env-json or `-o sh`"
                    ));
                    continue;
                }
                out.push_str(&format!("{k}={v}\n"));
            }
        }
        Format::Sh => {
            for (k, v) in &view.vars {
                if !shell_name(k) {
                    notes.push(format!(
                        "{k}: left out of the sh form (not a shell variable name); fix: use -o json"
                    ));
                    continue;
                }
                if v.contains('\0') {
                    notes.push(format!(
                        "{k}: left out of the sh form (its value holds a NUL byte)"
                    ));
                    continue;
                }
                out.push_str(&format!("export {k}='{}'\n", v.replace('\'', r"'\''")));
            }
        }
        Format::Json => {
            let map: serde_json::Map<String, serde_json::Value> = view
                .vars
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            // A map of strings always serialises.
            out = serde_json::to_string_pretty(&map).unwrap_or_default();
            out.push('\n');
        }
    }
    (out, notes)
}

/// Writes `text` to `path`, replacing what was there; a new file is
/// readable by its owner only (it may hold Secret values).
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// Where the variables came from, for stderr.
pub fn origin(view: &EnvironmentView) -> String {
    format!(
        "{} variable{} of container {} in pod {} ({})",
        view.vars.len(),
        if view.vars.len() == 1 { "" } else { "s" },
        view.container,
        view.pod,
        match view.service.contains(' ') {
            // `deployment apps/worker`: a workload named instead.
            true => view.service.clone(),
            false => format!("Service {}", view.service),
        }
    )
}

/// Whose environment to read, and which variables to keep.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    /// netmuxd's control socket.
    pub socket: &'a Path,
    /// Endpoint name.
    pub endpoint: &'a str,
    /// Service name or `namespace/name`.
    pub service: &'a str,
    /// Service port (`None`: its first).
    pub port: Option<u16>,
    /// The container by name, instead of the one serving the port.
    pub container: Option<&'a str>,
    /// Keep only names matching one of these (`+` is a wildcard, as in
    /// `netmux start`); empty: keep all.
    pub include: &'a [String],
    /// Then drop names matching one of these.
    pub exclude: &'a [String],
    /// `--mount DIR`: also the files of the container's volumes, written
    /// under DIR ([`crate::mounts`]).
    pub mount: Option<&'a Path>,
}

impl Source<'_> {
    /// Whether variable `name` is kept.
    fn keeps(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| netmux_api::matches(p, name)))
            && !self.exclude.iter().any(|p| netmux_api::matches(p, name))
    }

    /// Asks netmuxd for the environment and keeps what is asked for
    /// (notes about variables dropped here go too).
    pub async fn fetch(&self) -> Result<EnvironmentView, String> {
        let request = netmux_api::Request::Environment {
            endpoint: self.endpoint.to_owned(),
            service: self.service.to_owned(),
            port: self.port,
            container: self.container.map(str::to_owned),
            mounts: self.mount.is_some(),
        };
        let response = netmux_api::call(self.socket, &request)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(e) = response.error {
            return Err(e);
        }
        match response.ok {
            Some(netmux_api::Reply::Environment(mut view)) => {
                self.trim(&mut view);
                Ok(view)
            }
            other => Err(format!(
                "netmuxd answered {other:?} to an environment request; is it the same version as this CLI?"
            )),
        }
    }

    /// `--mount`: writes the volume files of `view` under the directory
    /// and adds [`crate::mounts::ROOT_VAR`] naming it (None without
    /// `--mount`).
    pub fn write_mounts(
        &self,
        view: &mut EnvironmentView,
    ) -> Result<Option<crate::mounts::Snapshot>, String> {
        let Some(root) = self.mount else {
            return Ok(None);
        };
        let (snapshot, notes) = crate::mounts::write(root, &view.mounts, crate::mounts::owner())?;
        eprintln!("{}", snapshot.describe(view.mounts.len()));
        view.notes.extend(notes);
        let dir = snapshot.root.display().to_string();
        view.vars.retain(|(k, _)| k != crate::mounts::ROOT_VAR);
        view.vars.push((crate::mounts::ROOT_VAR.to_owned(), dir));
        Ok(Some(snapshot))
    }

    /// Drops the variables not kept, and the notes that name only them.
    fn trim(&self, view: &mut EnvironmentView) {
        view.vars.retain(|(k, _)| self.keeps(k));
        view.notes.retain(|n| {
            // A note about variables starts with their names
            // (`DB_PASSWORD: …`, `A, B, C…: …`): kept if any of them is.
            let Some((head, _)) = n.split_once(": ") else {
                return true;
            };
            let names: Vec<&str> = head.split(", ").map(|x| x.trim_end_matches('…')).collect();
            !names.iter().all(|x| netmux_api::env_var_name(x))
                || names.iter().any(|x| self.keeps(x))
        });
    }
}

/// Prints each note of `view` and of the forms written, on stderr.
fn print_notes(view: &EnvironmentView, more: &[String]) {
    for n in view.notes.iter().chain(more) {
        eprintln!("note: {n}");
    }
}

/// What `netmux intercept` wrote before asking for the intercept: removed
/// if it is refused, and, for `-- COMMAND`, the volume files when the
/// command exits.
#[derive(Debug, Default)]
pub struct Written {
    /// `--env-file` / `--env-json`.
    files: Vec<std::path::PathBuf>,
    /// `--mount`.
    snapshot: Option<crate::mounts::Snapshot>,
}

impl Written {
    /// For an intercept without a command: says that the volume files
    /// stay.
    pub fn kept(&self) {
        if let Some(s) = &self.snapshot {
            s.kept();
        }
    }

    /// Removes everything written.
    pub fn remove(&self) {
        for p in &self.files {
            if std::fs::remove_file(p).is_ok() {
                eprintln!("removed {}", p.display());
            }
        }
        if let Some(s) = &self.snapshot {
            s.remove();
        }
    }
}

/// `netmux intercept --env-file F --env-json J --mount DIR`: writes the
/// volume files of `view` (read before the intercept is asked for; a
/// failure here asks for nothing), then the environment files (which name
/// the snapshot in `NETMUX_ROOT`).
pub fn write_for_intercept(
    source: &Source<'_>,
    view: Option<&mut Result<EnvironmentView, String>>,
    dotenv: Option<&Path>,
    json: Option<&Path>,
) -> Result<Written, String> {
    let mut written = Written::default();
    if source.mount.is_none() && dotenv.is_none() && json.is_none() {
        return Ok(written);
    }
    let view = match view {
        Some(Ok(v)) => v,
        Some(Err(e)) => return Err(e.clone()),
        None => return Err("the environment was not read".into()),
    };
    written.snapshot = source.write_mounts(view)?;
    let mut notes = Vec::new();
    for (path, format) in [(dotenv, Format::Dotenv), (json, Format::Json)] {
        let Some(path) = path else { continue };
        let (text, more) = render(view, format);
        notes.extend(more);
        if let Err(e) = write_private(path, &text) {
            written.remove();
            return Err(format!(
                "cannot write the environment to {}: {e}; fix: a path in a directory you may write",
                path.display()
            ));
        }
        eprintln!("wrote {} to {}", origin(view), path.display());
        written.files.push(path.to_owned());
    }
    print_notes(view, &notes);
    Ok(written)
}

/// `netmux env`: prints the environment in `format`, or runs `command`
/// with it added to this process's environment (exit status passed on).
pub async fn run(
    source: &Source<'_>,
    format: Format,
    command: &[String],
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let fetched = source.fetch().await.and_then(|mut view| {
        let snapshot = source.write_mounts(&mut view)?;
        Ok((view, snapshot))
    });
    let (view, snapshot) = match fetched {
        Ok(v) => v,
        Err(e) => {
            eprintln!("netmux: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some((program, args)) = command.split_first() else {
        let (text, notes) = render(&view, format);
        print!("{text}");
        print_notes(&view, &notes);
        if let Some(s) = &snapshot {
            s.kept();
        }
        return ExitCode::SUCCESS;
    };
    print_notes(&view, &[]);
    let code = run_command(program, args, &view.vars).await;
    // A snapshot for the command (it may hold Secrets) goes with it.
    if let Some(s) = snapshot {
        s.remove();
    }
    code
}

/// Runs `program` with `vars` added to this process's environment and
/// returns its exit status (128 + the signal if one killed it, 127 if it
/// cannot start). This process outlives it, so the caller can clean up:
/// Ctrl-C reaches the command through the terminal and is waited out here;
/// SIGTERM (an IDE's stop button, `kill`) and SIGHUP (the terminal
/// closed) are passed on to it.
pub async fn run_command(
    program: &str,
    args: &[String],
    vars: &[(String, String)],
) -> std::process::ExitCode {
    use std::process::ExitCode;
    use tokio::signal::unix::{signal, SignalKind};
    // Taken before the command starts, so no signal can end this process
    // first (None: no handler could be installed; the default stands).
    let mut interrupt = signal(SignalKind::interrupt()).ok();
    let mut terminate = signal(SignalKind::terminate()).ok();
    let mut hangup = signal(SignalKind::hangup()).ok();
    let mut child = match tokio::process::Command::new(program)
        .args(args)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("netmux: cannot run {program:?}: {e}");
            return ExitCode::from(127);
        }
    };
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            // The terminal sent it to the command too: wait for it.
            _ = recv(&mut interrupt) => continue,
            _ = recv(&mut terminate) => pass_on(&child, nix::sys::signal::Signal::SIGTERM),
            _ = recv(&mut hangup) => pass_on(&child, nix::sys::signal::Signal::SIGHUP),
        }
    };
    match status {
        Ok(status) => match status.code() {
            Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            None => {
                use std::os::unix::process::ExitStatusExt as _;
                let signal = status.signal().and_then(|s| u8::try_from(s).ok());
                ExitCode::from(128u8.saturating_add(signal.unwrap_or(0)))
            }
        },
        Err(e) => {
            eprintln!("netmux: waiting for {program:?}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The next delivery of a signal handled here (never, without a handler).
async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal.as_mut() {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Sends `sig` to the command (gone already: nothing to do).
fn pass_on(child: &tokio::process::Child, sig: nix::sys::signal::Signal) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// Sends `request` and returns the message of its `Done` reply.
async fn ask(socket: &Path, request: &netmux_api::Request) -> Result<String, String> {
    let response = netmux_api::call(socket, request)
        .await
        .map_err(|e| e.to_string())?;
    match (response.error, response.ok) {
        (Some(e), _) => Err(e),
        (None, Some(netmux_api::Reply::Done { message })) => Ok(message),
        (None, other) => Err(format!(
            "netmuxd answered {other:?}; is it the same version as this CLI?"
        )),
    }
}

/// `netmux intercept EP SVC … -- COMMAND`: intercepts, runs the command
/// with the workload's environment (when it can be read; a note says why
/// not otherwise), and ends the intercept when the command exits, by
/// itself or on Ctrl-C. Returns the command's exit status. `view` is the
/// environment as read before; `written` is what [`write_for_intercept`]
/// wrote: removed if the intercept is refused; its volume files are
/// removed when the command exits.
pub async fn intercept_and_run(
    socket: &Path,
    intercept: &netmux_api::Request,
    view: Option<Result<EnvironmentView, String>>,
    written: &Written,
    command: &[String],
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let netmux_api::Request::Intercept {
        endpoint,
        service,
        port,
        ..
    } = intercept
    else {
        return ExitCode::FAILURE;
    };
    let Some((program, args)) = command.split_first() else {
        return ExitCode::FAILURE;
    };
    let vars = match view {
        Some(Ok(view)) => {
            // Printed already when files were written.
            if written.files.is_empty() && written.snapshot.is_none() {
                print_notes(&view, &[]);
            }
            eprintln!("{program} gets the {}", origin(&view));
            view.vars
        }
        Some(Err(e)) => {
            eprintln!("note: {program} runs without the workload's environment: {e}");
            Vec::new()
        }
        None => Vec::new(),
    };
    // A Ctrl-C while the intercept is asked for must not leave it held
    // with nothing running: it is noted, and the intercept ended.
    let mut interrupt =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    let asked = ask(socket, intercept);
    tokio::pin!(asked);
    let mut interrupted = false;
    let asked = loop {
        tokio::select! {
            r = &mut asked => break r,
            _ = recv(&mut interrupt) => interrupted = true,
        }
    };
    match asked {
        Ok(message) => eprintln!("{message}"),
        Err(e) => {
            eprintln!("netmux: {e}");
            written.remove();
            return ExitCode::FAILURE;
        }
    }
    let leave = netmux_api::Request::Leave {
        endpoint: endpoint.clone(),
        service: service.clone(),
        port: *port,
    };
    if interrupted {
        match ask(socket, &leave).await {
            Ok(message) => eprintln!("interrupted before {program} started: {message}"),
            Err(e) => eprintln!(
                "netmux: interrupted, and the intercept could not be ended: {e}; fix: `netmux leave {endpoint} {service}`"
            ),
        }
        if let Some(s) = &written.snapshot {
            s.remove();
        }
        return ExitCode::from(130);
    }
    let code = run_command(program, args, &vars).await;
    match ask(socket, &leave).await {
        Ok(message) => eprintln!("{program} exited: {message}"),
        Err(e) => eprintln!(
            "netmux: {program} exited but the intercept could not be ended: {e}; fix: `netmux leave {endpoint} {service}`"
        ),
    }
    if let Some(s) = &written.snapshot {
        s.remove();
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(vars: &[(&str, &str)]) -> EnvironmentView {
        EnvironmentView {
            service: "apps/web".into(),
            pod: "web-0".into(),
            container: "app".into(),
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            notes: vec![],
            mounts: vec![],
        }
    }

    #[test]
    fn each_form_writes_what_it_can_and_names_the_rest() {
        let v = view(&[
            ("A", "plain"),
            ("QUOTE", "it's $HOME"),
            ("MULTI", "line1\nline2"),
            ("my.dotted", "x"),
        ]);
        let (dotenv, notes) = render(&v, Format::Dotenv);
        assert_eq!(dotenv, "A=plain\nQUOTE=it's $HOME\nmy.dotted=x\n");
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].starts_with("MULTI: left out of the dotenv form"),
            "{notes:?}"
        );

        let (sh, notes) = render(&v, Format::Sh);
        assert_eq!(
            sh,
            "export A='plain'\nexport QUOTE='it'\\''s $HOME'\nexport MULTI='line1\nline2'\n"
        );
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].starts_with("my.dotted: left out of the sh form"),
            "{notes:?}"
        );

        let (json, notes) = render(&v, Format::Json);
        assert!(notes.is_empty());
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["MULTI"], "line1\nline2");
        assert_eq!(back["my.dotted"], "x");
        assert_eq!(back.as_object().unwrap().len(), 4);
    }

    #[test]
    fn include_and_exclude_keep_variables_and_their_notes() {
        let (include, exclude) = (vec!["DB_+".to_owned()], vec!["DB_PASSWORD".to_owned()]);
        let source = Source {
            socket: Path::new("/nowhere"),
            endpoint: "ep",
            service: "web",
            port: None,
            container: None,
            include: &include,
            exclude: &exclude,
            mount: None,
        };
        let mut v = view(&[("DB_HOST", "db"), ("DB_PASSWORD", "x"), ("LOG", "debug")]);
        v.notes = vec![
            "DB_PASSWORD: left out: secret db: forbidden".into(),
            "DB_USER: left out: secret db: forbidden".into(),
            "KUBERNETES_SERVICE_HOST, KUBERNETES_PORT…: left out: not read".into(),
            "envFrom configmap web-config: left out `a b`: not valid variable names".into(),
        ];
        source.trim(&mut v);
        assert_eq!(v.vars, [("DB_HOST".to_owned(), "db".to_owned())]);
        assert_eq!(
            v.notes,
            [
                "DB_USER: left out: secret db: forbidden",
                "envFrom configmap web-config: left out `a b`: not valid variable names"
            ]
        );
        let none: Vec<String> = Vec::new();
        let all = Source {
            include: &none,
            exclude: &none,
            ..source
        };
        assert!(all.keeps("ANYTHING") && all.keeps("my.key"));
    }

    #[test]
    fn the_sh_form_round_trips_through_a_shell() {
        let v = view(&[("Q", "a'b\"c $(x) `y` \\n"), ("E", "")]);
        let (sh, _) = render(&v, Format::Sh);
        let script = format!("{sh}printf '%s|%s' \"$Q\" \"$E\"");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a'b\"c $(x) `y` \\n|");
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.env");
        std::fs::write(&p, "old and longer\n").unwrap();
        write_private(&p, "A=1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "A=1\n");
        let new = dir.path().join("y.env");
        write_private(&new, "B=2\n").unwrap();
        let mode = std::fs::metadata(&new).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
