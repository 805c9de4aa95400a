//! `netmux install` / `netmux uninstall` into a temporary root: the real
//! CLI, every external command (groupadd, useradd, systemctl, ...) sent to a
//! stub that records it. Nothing outside the temporary directory is touched.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path → (mode, contents or symlink target); directories have no contents.
type Tree = BTreeMap<PathBuf, (u32, Option<Vec<u8>>)>;

fn snapshot(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let meta = fs::symlink_metadata(&p).expect("metadata");
            let rel = p.strip_prefix(root).expect("under root").to_owned();
            let mode = meta.permissions().mode();
            if meta.is_dir() {
                out.insert(rel, (mode, None));
                walk(root, &p, out);
            } else if meta.file_type().is_symlink() {
                let t = fs::read_link(&p).expect("readlink");
                out.insert(rel, (mode, Some(t.into_os_string().into_encoded_bytes())));
            } else {
                out.insert(rel, (mode, Some(fs::read(&p).expect("read"))));
            }
        }
    }
    let mut t = Tree::new();
    walk(root, root, &mut t);
    t
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    log: PathBuf,
    stub: PathBuf,
}

impl Fixture {
    /// A root that looks lived-in: /etc with passwd/group (no netmux),
    /// /usr/local/bin with someone else's tool.
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("etc/systemd/system")).expect("mkdir");
        fs::create_dir_all(root.join("usr/local/bin")).expect("mkdir");
        fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
        fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
        fs::write(root.join("usr/local/bin/other-tool"), "#!/bin/sh\n").expect("tool");
        let log = tmp.path().join("commands.log");
        let stub = tmp.path().join("stub.sh");
        fs::write(
            &stub,
            format!("#!/bin/sh\necho \"$@\" >> '{}'\n", log.display()),
        )
        .expect("stub");
        fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).expect("chmod");
        Fixture {
            _tmp: tmp,
            root,
            log,
            stub,
        }
    }

    fn netmux(&self, args: &[&str]) -> Output {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_netmux"));
        let from = bin.parent().expect("bin dir").to_owned();
        let mut cmd = Command::new(&bin);
        cmd.args(args)
            .arg("--root")
            .arg(&self.root)
            .env("NETMUX_INSTALL_EXEC", &self.stub)
            .env_remove("NETMUX_CONFIG")
            .env_remove("NETMUX_SOCKET");
        if args.first() == Some(&"install") {
            cmd.arg("--from").arg(from);
        }
        let out = cmd.output().expect("running netmux");
        assert!(
            out.status.success(),
            "netmux {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn commands(&self) -> String {
        let s = fs::read_to_string(&self.log).unwrap_or_default();
        let _ = fs::remove_file(&self.log);
        s
    }

    fn unit(&self) -> String {
        fs::read_to_string(self.root.join("etc/systemd/system/netmuxd.service")).expect("unit")
    }
}

#[test]
fn install_then_uninstall_leaves_the_tree_as_it_was() {
    let f = Fixture::new();
    let before = snapshot(&f.root);
    let out = f.netmux(&["install"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("wrote default /etc/netmux/config.toml"),
        "{stdout}"
    );

    for p in [
        "usr/local/bin/netmux",
        "usr/local/bin/netmuxd",
        "usr/local/share/man/man1/netmux.1",
        "usr/local/share/bash-completion/completions/netmux",
        "usr/local/share/zsh/site-functions/_netmux",
        "usr/local/share/fish/vendor_completions.d/netmux.fish",
        "etc/netmux/config.toml",
        "etc/systemd/system/netmuxd.service",
    ] {
        assert!(f.root.join(p).is_file(), "{p} not installed");
    }
    let mode = fs::metadata(f.root.join("usr/local/bin/netmuxd"))
        .expect("netmuxd")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    let unit = f.unit();
    assert!(unit.contains("Type=notify"));
    assert!(unit.contains("User=netmuxd"));
    assert!(unit.contains("ExecStart=/usr/local/bin/netmuxd --config /etc/netmux/config.toml"));
    let cmds = f.commands();
    let root = f.root.display().to_string();
    assert!(
        cmds.contains(&format!("groupadd --system --prefix {root} netmux")),
        "{cmds}"
    );
    assert!(
        cmds.contains("useradd --system --user-group --groups netmux"),
        "{cmds}"
    );
    assert!(
        cmds.contains(&format!("systemctl --root={root} enable netmuxd.service")),
        "{cmds}"
    );

    f.netmux(&["uninstall"]);
    let cmds = f.commands();
    assert!(
        cmds.contains(&format!("systemctl --root={root} disable netmuxd.service")),
        "{cmds}"
    );
    assert!(
        cmds.contains(&format!("userdel --prefix {root} netmuxd")),
        "{cmds}"
    );
    assert!(
        cmds.contains(&format!("groupdel --prefix {root} netmux")),
        "{cmds}"
    );
    assert_eq!(
        snapshot(&f.root),
        before,
        "uninstall did not restore the tree"
    );
}

#[test]
fn an_existing_config_is_never_overwritten_nor_removed() {
    let f = Fixture::new();
    fs::create_dir_all(f.root.join("etc/netmux")).expect("mkdir");
    let mine = "# mine\nsocket = \"/run/netmux/netmuxd.sock\"\n";
    fs::write(f.root.join("etc/netmux/config.toml"), mine).expect("config");
    // The group exists already: install must not create it nor uninstall
    // remove it.
    fs::write(f.root.join("etc/group"), "root:x:0:\nnetmux:x:990:alice\n").expect("group");
    let before = snapshot(&f.root);

    let out = f.netmux(&["install", "--no-enable"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept existing"));
    let cmds = f.commands();
    assert!(!cmds.contains("groupadd"), "{cmds}");
    assert!(!cmds.contains("systemctl"), "--no-enable ran: {cmds}");
    // Upgrade: run again; still ours, still the user's config.
    f.netmux(&["install", "--no-enable"]);
    assert_eq!(
        fs::read_to_string(f.root.join("etc/netmux/config.toml")).expect("config"),
        mine
    );
    f.netmux(&["uninstall"]);
    let cmds = f.commands();
    assert!(
        !cmds.contains("groupdel") && !cmds.contains("systemctl"),
        "{cmds}"
    );
    assert_eq!(snapshot(&f.root), before);
}

#[test]
fn an_edited_default_config_is_kept_unless_purged() {
    let f = Fixture::new();
    let before = snapshot(&f.root);
    f.netmux(&["install"]);
    let cfg = f.root.join("etc/netmux/config.toml");
    let mut text = fs::read_to_string(&cfg).expect("config");
    text.push_str("\n[[endpoint]]\nname = \"dev\"\nserver = \"10.0.0.1:7443\"\nca_pem = \"\"\"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n\"\"\"\n");
    fs::write(&cfg, &text).expect("edit");
    let out = f.netmux(&["uninstall"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept /etc/netmux/config.toml"));
    assert_eq!(fs::read_to_string(&cfg).expect("kept"), text);
    // Only the config (and its directory) remain.
    let mut after = snapshot(&f.root);
    after.remove(Path::new("etc/netmux/config.toml"));
    after.remove(Path::new("etc/netmux"));
    assert_eq!(after, before);

    // --purge removes it.
    let f = Fixture::new();
    let before = snapshot(&f.root);
    f.netmux(&["install"]);
    fs::write(f.root.join("etc/netmux/config.toml"), "# edited\n").expect("edit");
    f.netmux(&["uninstall", "--purge"]);
    assert_eq!(snapshot(&f.root), before);
}

#[test]
fn launchd_plist_is_generated_the_same_way() {
    let f = Fixture::new();
    let before = snapshot(&f.root);
    f.netmux(&["install", "--init", "launchd"]);
    let plist = fs::read_to_string(
        f.root
            .join("Library/LaunchDaemons/dev.netmux.netmuxd.plist"),
    )
    .expect("plist");
    assert!(
        plist.contains("<string>/usr/local/bin/netmuxd</string>"),
        "{plist}"
    );
    assert!(!plist.contains('@'));
    let cmds = f.commands();
    assert!(cmds.contains("launchctl bootstrap system"), "{cmds}");
    assert!(!cmds.contains("useradd"), "{cmds}");
    f.netmux(&["uninstall"]);
    assert!(f
        .commands()
        .contains("launchctl bootout system/dev.netmux.netmuxd"));
    assert_eq!(snapshot(&f.root), before);
}

/// The installed unit passes `systemd-analyze verify`. systemd checks that
/// ExecStart/ExecReload exist on the host, so the check runs on a copy
/// whose binary paths point into the staging root; nothing else differs.
#[test]
fn unit_passes_systemd_analyze_verify() {
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("SKIPPED: systemd-analyze not installed (apt-get install systemd)");
        return;
    };
    let f = Fixture::new();
    f.netmux(&["install", "--no-enable"]);
    let bindir = f.root.join("usr/local/bin");
    let unit = f
        .unit()
        .replace("/usr/local/bin/", &format!("{}/", bindir.display()));
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("netmuxd.service");
    fs::write(&copy, unit).expect("copy");
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let bin = env!("CARGO_BIN_EXE_netmux");
    for (shell, needle) in [
        ("bash", "netmux"),
        ("zsh", "#compdef netmux"),
        ("fish", "complete -c netmux"),
    ] {
        let out = Command::new(bin)
            .args(["completions", shell])
            .output()
            .expect("netmux completions");
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && s.contains(needle), "{shell}: {s}");
        assert!(
            s.contains("doctor") && s.contains("uninstall"),
            "{shell} lacks subcommands"
        );
    }
    let out = Command::new(bin).arg("man").output().expect("netmux man");
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && s.contains(".TH netmux 1"), "{s}");
    assert!(s.contains("doctor"));
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
