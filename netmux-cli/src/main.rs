//! `netmux`: the command-line client of netmuxd.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use netmux_api::{self as api, Reply, Request, Row};
use netmux_daemon::config::{Config, DEFAULT_CONFIG, DEFAULT_SOCKET};

use netmux_cli::cli as sys;
use netmux_daemon::system::hosts::HostsFile;

/// netmux command line client.
#[derive(Parser, Debug)]
#[command(version, about, propagate_version = true)]
struct Cli {
    /// netmuxd's control socket.
    #[arg(long, global = true, env = "NETMUX_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Daemon configuration (used by `cleanup` when the daemon is not running).
    #[arg(long, global = true, env = "NETMUX_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Lists endpoints and their services.
    #[command(visible_aliases = ["ls", "l"])]
    List {
        /// Only rows whose name or endpoint contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Connects to an endpoint.
    #[command(visible_aliases = ["con", "c"])]
    Connect {
        /// Endpoint name.
        endpoint: String,
        /// Kubernetes endpoints: the kubeconfig to use instead of the
        /// configured one, `$KUBECONFIG` or `~/.kube/config`.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Kubernetes endpoints: the context to use instead of the
        /// configured or current one.
        #[arg(long)]
        context: Option<String>,
        /// Kubernetes endpoints: present the netmux token in this file
        /// instead of the kubeconfig's (client-certificate users; see
        /// docs/kubernetes.md). Read as you.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Disconnects from an endpoint.
    #[command(visible_aliases = ["dis", "d"])]
    Disconnect {
        /// Endpoint name.
        endpoint: String,
    },
    /// Starts services (`+` is a wildcard: `netmux start EP +` starts all).
    #[command(visible_aliases = ["on", "+"])]
    Start {
        /// Endpoint name.
        endpoint: String,
        /// Service name, namespace/name, or pattern with `+`.
        service: String,
        /// Also claim the C2L services a `+` pattern matches (cluster
        /// traffic to this machine); a C2L service named exactly is
        /// always claimed.
        #[arg(long)]
        c2l: bool,
    },
    /// Stops services.
    #[command(visible_aliases = ["off", "-"])]
    Stop {
        /// Endpoint name.
        endpoint: String,
        /// Service name, namespace/name, or pattern with `+`.
        service: String,
    },
    /// Publishes a local service to the cluster (C2L reverse tunnel).
    Expose {
        /// Endpoint name.
        endpoint: String,
        /// Service name in the cluster.
        #[arg(value_parser = service_name_arg)]
        name: String,
        /// Local target, HOST:PORT, or PORT for 127.0.0.1:PORT.
        #[arg(long, value_parser = host_port_arg)]
        local: String,
        /// Port cluster workloads connect to.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        remote_port: u16,
    },
    /// Withdraws a service published with `expose`.
    Unexpose {
        /// Endpoint name.
        endpoint: String,
        /// Service name.
        name: String,
    },
    /// Intercepts a cluster Service: its traffic comes to this machine,
    /// all of it (global) or the HTTP requests with a header (personal);
    /// docs/intercept.md.
    #[command(group(clap::ArgGroup::new("env_use")
        .args(["env_file", "env_json", "mount", "command"])
        .multiple(true)))]
    Intercept {
        /// Endpoint name.
        endpoint: String,
        /// Service name or namespace/name; with --replace also a workload
        /// no Service fronts, KIND/NAME or NAMESPACE/KIND/NAME
        /// (deploy/worker, sts/reader): it is stopped, no traffic comes.
        service: String,
        /// Service port (needed when it has several).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
        /// Where its traffic goes here, HOST:PORT, or PORT for
        /// 127.0.0.1:PORT (not for a workload stopped with --replace).
        #[arg(long, value_parser = host_port_arg, required_unless_present = "replace")]
        to: Option<String>,
        /// NAME=VALUE: a personal intercept, only HTTP requests carrying
        /// this header come here; the others go on to the Service's pods.
        #[arg(long, value_parser = header_arg)]
        header: Option<String>,
        /// Mirror: a copy of each HTTP request (of those with --header,
        /// if given) comes here and its answer is discarded; the requests
        /// themselves go on to the pods.
        #[arg(long)]
        mirror: bool,
        /// Replace the workload: a global intercept during which the
        /// Deployments and StatefulSets running the Service's pods are
        /// scaled to zero (queue consumers, schedulers stop too), and
        /// scaled back when it ends. Needs `patch` on their scale.
        #[arg(long, conflicts_with_all = ["header", "mirror"])]
        replace: bool,
        /// Also write the intercepted container's environment to this
        /// file first, as `NAME=value` lines (see `netmux env`).
        #[arg(long)]
        env_file: Option<PathBuf>,
        /// Also write the intercepted container's environment to this
        /// file first, as a JSON object (every value exact).
        #[arg(long)]
        env_json: Option<PathBuf>,
        /// Also write the files of the intercepted container's
        /// ConfigMap, Secret, downwardAPI and projected volumes under this
        /// new (or empty) directory, at their mount paths; COMMAND finds it
        /// in $NETMUX_ROOT and the files go when it exits.
        #[arg(long, value_name = "DIR", value_parser = netmux_cli::mounts::dir_arg)]
        mount: Option<PathBuf>,
        /// The container whose environment --env-file, --env-json,
        /// --mount and COMMAND get (default: the one serving the
        /// intercepted port); the intercept itself is of the Service port.
        #[arg(long, requires = "env_use")]
        container: Option<String>,
        /// Of the environment, keep only variables matching this (`+` is
        /// a wildcard; repeatable).
        #[arg(long, requires = "env_use")]
        env_include: Vec<String>,
        /// Of the environment, leave out variables matching this (`+` is
        /// a wildcard; repeatable), e.g. `KUBERNETES_+`.
        #[arg(long, requires = "env_use")]
        env_exclude: Vec<String>,
        /// Run this command (with the intercepted container's
        /// environment) and end the intercept when it exits:
        /// `netmux intercept EP SVC --to 8080 -- ./my-service`.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Prints the environment of the container behind a cluster Service
    /// (its env, ConfigMaps and Secrets, read with your own credentials),
    /// or runs a command with it: `netmux env EP SVC -- ./my-service`.
    Env {
        /// Endpoint name (a Kubernetes endpoint).
        endpoint: String,
        /// Service name or namespace/name; or a workload no Service
        /// fronts, KIND/NAME or NAMESPACE/KIND/NAME (deploy, sts, ds, pod).
        service: String,
        /// Service port whose container is meant (default: its first).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
        /// The container by name (default: the one serving the port, else
        /// the pod's first).
        #[arg(long)]
        container: Option<String>,
        /// Output form.
        #[arg(long, short, value_enum, default_value = "dotenv")]
        output: netmux_cli::environment::Format,
        /// Keep only variables matching this (`+` is a wildcard, as in
        /// `netmux start`; repeatable).
        #[arg(long)]
        include: Vec<String>,
        /// Leave out variables matching this (`+` is a wildcard;
        /// repeatable), e.g. `--exclude KUBERNETES_+` for a program that
        /// takes those for a sign it runs in a pod.
        #[arg(long)]
        exclude: Vec<String>,
        /// Also write the files of its ConfigMap, Secret, downwardAPI and
        /// projected volumes under this new (or empty) directory, at their
        /// mount paths (owner only); $NETMUX_ROOT names it. With COMMAND
        /// they go when it exits.
        #[arg(long, value_name = "DIR", value_parser = netmux_cli::mounts::dir_arg)]
        mount: Option<PathBuf>,
        /// Run this command with the environment added, instead of
        /// printing it.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Ends an intercept; the Service is restored as it was.
    #[command(visible_aliases = ["unintercept"])]
    Leave {
        /// Endpoint name.
        endpoint: String,
        /// Service name or namespace/name.
        service: String,
        /// Only the intercept of this port.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
    },
    /// Shows the daemon's status.
    Status {
        /// Output format.
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Stops the daemon.
    Exit,
    /// Removes every trace of netmux (works even if the daemon crashed).
    Cleanup {
        /// Instead: restore the intercepted Services of a namespace with
        /// your kubeconfig, when no netmux-server is left to do it
        /// (docs/intercept.md).
        #[arg(long)]
        intercepts: bool,
        /// With --intercepts: the namespace (default: the context's).
        #[arg(long, requires = "intercepts")]
        namespace: Option<String>,
        /// With --intercepts: netmux-server's namespace, where the stop
        /// Leases of workloads stopped with no Service in front keep their
        /// counts.
        #[arg(long, requires = "intercepts", default_value = "netmux")]
        server_namespace: String,
        /// With --intercepts: the kubeconfig to use.
        #[arg(long, requires = "intercepts")]
        kubeconfig: Option<PathBuf>,
        /// With --intercepts: the context to use.
        #[arg(long, requires = "intercepts")]
        context: Option<String>,
    },
    /// Re-reads the daemon's config; unchanged endpoints keep their tunnels.
    Reload,
    /// Installs netmux as a system service (binaries, unit, user, config).
    Install(sys::InstallArgs),
    /// Removes what `install` installed (after `cleanup`).
    Uninstall(sys::UninstallArgs),
    /// Checks the workstation and explains each problem with its fix.
    Doctor(sys::DoctorArgs),
    /// Shows netmuxd's logs (journald).
    Logs(sys::LogsArgs),
    /// Prints a shell completion script.
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
    /// Prints the man page (generated from these definitions).
    Man(sys::ManArgs),
    /// Internal: resolves a kubeconfig as the user `sudo netmux connect`
    /// runs for (JSON in on stdin, out on stdout).
    #[command(name = "__kube-credentials", hide = true)]
    KubeCredentials,
}

fn print_rows(rows: &[Row]) {
    let header = Row {
        kind: "#".into(),
        name: "NAME".into(),
        parent: "PARENT".into(),
        description: "DESCRIPTION".into(),
        status: "STATUS".into(),
    };
    let all: Vec<&Row> = std::iter::once(&header).chain(rows.iter()).collect();
    let w = |f: fn(&Row) -> &str| all.iter().map(|r| f(r).len()).max().unwrap_or(0);
    let (wk, wn, wp, wd) = (
        w(|r| &r.kind),
        w(|r| &r.name),
        w(|r| &r.parent),
        w(|r| &r.description),
    );
    for r in all {
        println!(
            "{:wk$}  {:wn$}  {:wp$}  {:wd$}  {}",
            r.kind, r.name, r.parent, r.description, r.status
        );
    }
}

/// Removes what a crashed daemon may have left, without the daemon.
fn offline_cleanup(cli: &Cli) -> Result<String, String> {
    let config = Config::load(&cli.config).map_err(|e| e.to_string())?;
    HostsFile::new(&config.hosts_file)
        .clear()
        .map_err(|e| format!("cannot clean {}: {e}", config.hosts_file.display()))?;
    let mut done = vec![format!(
        "removed the netmux block from {}",
        config.hosts_file.display()
    )];
    done.extend(netmux_daemon::system::resolver::cleanup_leftovers(
        &config.dns,
    )?);
    if config.socket.exists() {
        std::fs::remove_file(&config.socket)
            .map_err(|e| format!("cannot remove {}: {e}", config.socket.display()))?;
        done.push(format!("removed stale socket {}", config.socket.display()));
    }
    Ok(done.join("; "))
}

/// `netmux cleanup --intercepts`: as the user, with their kubeconfig.
async fn restore_intercepts(
    at: netmux_cli::intercepts::Where<'_>,
    kubeconfig: &Option<PathBuf>,
    context: &Option<String>,
) -> ExitCode {
    let req = netmux_cli::credentials::Request {
        settings: None,
        kubeconfig: kubeconfig.clone(),
        context: context.clone(),
        token_file: None,
        interactive: true,
    };
    let access = match netmux_cli::credentials::resolve_as_user(&req) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("netmux: {e}");
            return ExitCode::FAILURE;
        }
    };
    match netmux_cli::intercepts::restore_all(&access, at).await {
        Ok(done) => {
            for line in done {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("netmux: {e}");
            ExitCode::FAILURE
        }
    }
}

// The checks of arguments the daemon checks again (`netmux_api::args`):
// made here too, so that a typo is named before the daemon is asked, and
// also when it is not running. The text itself is sent.

fn host_port_arg(text: &str) -> Result<String, String> {
    api::args::host_port(text).map(|_| text.to_owned())
}

fn header_arg(text: &str) -> Result<String, String> {
    api::args::header(text).map(|_| text.to_owned())
}

fn service_name_arg(text: &str) -> Result<String, String> {
    api::args::service_name(text).map(|()| text.to_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut written = netmux_cli::environment::Written::default();
    let (request, output) = match &cli.command {
        Command::List { filter, output } => (
            Request::List {
                filter: filter.clone(),
            },
            *output,
        ),
        Command::Connect { endpoint, .. } => (
            Request::Connect {
                endpoint: endpoint.clone(),
                kube: None,
                on_behalf_of: None,
            },
            Output::Table,
        ),
        Command::Disconnect { endpoint } => (
            Request::Disconnect {
                endpoint: endpoint.clone(),
            },
            Output::Table,
        ),
        Command::Start {
            endpoint,
            service,
            c2l,
        } => (
            Request::Start {
                endpoint: endpoint.clone(),
                service: service.clone(),
                c2l: *c2l,
            },
            Output::Table,
        ),
        Command::Stop { endpoint, service } => (
            Request::Stop {
                endpoint: endpoint.clone(),
                service: service.clone(),
            },
            Output::Table,
        ),
        Command::Expose {
            endpoint,
            name,
            local,
            remote_port,
        } => (
            Request::Expose {
                endpoint: endpoint.clone(),
                name: name.clone(),
                local: local.clone(),
                remote_port: *remote_port,
            },
            Output::Table,
        ),
        Command::Unexpose { endpoint, name } => (
            Request::Unexpose {
                endpoint: endpoint.clone(),
                name: name.clone(),
            },
            Output::Table,
        ),
        Command::Intercept {
            endpoint,
            service,
            port,
            to,
            header,
            mirror,
            replace,
            env_file,
            env_json,
            mount,
            container,
            env_include,
            env_exclude,
            command,
        } => {
            use netmux_cli::environment as env;
            let source = env::Source {
                socket: &cli.socket,
                endpoint,
                service,
                port: *port,
                container: container.as_deref(),
                include: env_include,
                exclude: env_exclude,
                mount: mount.as_deref(),
            };
            // Read once, before the intercept, for the files and the command.
            let mut view = match (env_file, env_json, mount, command.is_empty()) {
                (None, None, None, true) => None,
                _ => Some(source.fetch().await),
            };
            let files = (env_file.as_deref(), env_json.as_deref());
            match env::write_for_intercept(&source, view.as_mut(), files.0, files.1) {
                Ok(w) => written = w,
                Err(e) => {
                    eprintln!("netmux: not intercepted: {e}");
                    return ExitCode::FAILURE;
                }
            }
            let request = Request::Intercept {
                endpoint: endpoint.clone(),
                service: service.clone(),
                port: *port,
                to: to.clone().unwrap_or_default(),
                header: header.clone(),
                mirror: *mirror,
                replace: *replace,
            };
            if !command.is_empty() {
                return env::intercept_and_run(&cli.socket, &request, view, &written, command)
                    .await;
            }
            (request, Output::Table)
        }
        Command::Env {
            endpoint,
            service,
            port,
            container,
            output,
            include,
            exclude,
            mount,
            command,
        } => {
            let source = netmux_cli::environment::Source {
                socket: &cli.socket,
                endpoint,
                service,
                port: *port,
                container: container.as_deref(),
                include,
                exclude,
                mount: mount.as_deref(),
            };
            return netmux_cli::environment::run(&source, *output, command).await;
        }
        Command::Leave {
            endpoint,
            service,
            port,
        } => (
            Request::Leave {
                endpoint: endpoint.clone(),
                service: service.clone(),
                port: *port,
            },
            Output::Table,
        ),
        Command::Status { output } => (Request::Status, *output),
        Command::Exit => (Request::Exit, Output::Table),
        Command::Cleanup {
            intercepts: true,
            namespace,
            server_namespace,
            kubeconfig,
            context,
        } => {
            let at = netmux_cli::intercepts::Where {
                namespace: namespace.as_deref(),
                server_namespace,
            };
            return restore_intercepts(at, kubeconfig, context).await;
        }
        Command::Cleanup { .. } => (Request::Cleanup, Output::Table),
        Command::Reload => (Request::Reload, Output::Table),
        Command::Install(a) => return sys::run_install(a, &Cli::command()),
        Command::Uninstall(a) => return sys::run_uninstall(a, &cli.socket).await,
        Command::Doctor(a) => return sys::run_doctor(a, &cli.config, &cli.socket).await,
        Command::Logs(a) => return sys::run_logs(a),
        Command::Completions { shell } => return sys::run_completions(*shell, &Cli::command()),
        Command::Man(a) => return sys::run_man(a, &Cli::command()),
        Command::KubeCredentials => return netmux_cli::credentials::serve_child(),
    };
    let mut response = netmux_api::call(&cli.socket, &request).await;
    // A Kubernetes endpoint: resolve the user's kubeconfig here, as the
    // user (credential plugins included), and connect again with it.
    if let (
        Ok(api::Response {
            ok: Some(Reply::NeedKube { settings }),
            ..
        }),
        Command::Connect {
            endpoint,
            kubeconfig,
            context,
            token_file,
        },
    ) = (&response, &cli.command)
    {
        let req = netmux_cli::credentials::Request {
            settings: Some(settings.clone()),
            kubeconfig: kubeconfig.clone(),
            context: context.clone(),
            token_file: token_file.clone(),
            interactive: true,
        };
        let access = match netmux_cli::credentials::resolve_as_user(&req) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("netmux: {endpoint}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let request = Request::Connect {
            endpoint: endpoint.clone(),
            kube: Some(access),
            on_behalf_of: netmux_cli::credentials::invoking_uid(),
        };
        response = netmux_api::call(&cli.socket, &request).await;
    }
    let response = match response {
        Ok(r) => r,
        Err(e) if matches!(request, Request::Cleanup) => {
            eprintln!("netmuxd not reachable ({e}); cleaning up locally");
            return match offline_cleanup(&cli) {
                Ok(msg) => {
                    println!("{msg}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("netmux: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Err(e) => {
            eprintln!("netmux: {e}");
            written.remove();
            return ExitCode::FAILURE;
        }
    };
    if let Some(e) = response.error {
        eprintln!("netmux: {e}");
        written.remove();
        return ExitCode::FAILURE;
    }
    written.kept();
    match (response.ok, output) {
        (Some(reply), Output::Json) => match serde_json::to_string_pretty(&reply) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("netmux: {e}");
                return ExitCode::FAILURE;
            }
        },
        (Some(Reply::List { rows }), Output::Table) => print_rows(&rows),
        (Some(Reply::Status(s)), Output::Table) => {
            println!("netmuxd {}", s.version);
            println!("redirect:   {}", s.redirect);
            println!("hosts file: {}", s.hosts_file);
            if !s.dns.is_empty() {
                println!("dns:        {}", s.dns);
            }
            for e in s.endpoints {
                print!(
                    "endpoint {}: {} ({}), {} services, {} started",
                    e.name, e.state, e.server, e.services, e.started
                );
                match e.error {
                    // A degraded endpoint's line is its blackout, not an error.
                    Some(err) if e.state == "degraded" => println!(": {err}"),
                    Some(err) => println!(", last error: {err}"),
                    None => println!(),
                }
                if let Some(path) = e.path {
                    println!("  path: {path}");
                }
                for note in e.notes {
                    println!("  {note}");
                }
            }
            for i in s.intercepts {
                match i.port {
                    // A workload stopped with no Service in front.
                    0 => println!(
                        "stopped {} on {} ({}: scaled to zero), {}; holder {}",
                        i.service, i.endpoint, i.mode, i.state, i.holder
                    ),
                    port => println!(
                        "intercept {} port {port} on {}: {} => {}, {}; holder {}; {} to the workstation",
                        i.service, i.endpoint, i.mode, i.to, i.state, i.holder, i.to_workstation
                    ),
                }
            }
        }
        (Some(Reply::Done { message }), Output::Table) => println!("{message}"),
        (Some(Reply::Environment(view)), Output::Table) => {
            let format = netmux_cli::environment::Format::Dotenv;
            print!("{}", netmux_cli::environment::render(&view, format).0);
        }
        (Some(Reply::NeedKube { .. }), Output::Table) => {
            eprintln!("netmux: netmuxd keeps asking for Kubernetes credentials; is it the same version as this CLI?");
            return ExitCode::FAILURE;
        }
        (None, _) => {
            eprintln!("netmux: empty reply from netmuxd");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
