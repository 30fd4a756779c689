//! Throwaway PostgreSQL clusters: `initdb` into a temp dir, a server on a
//! random loopback port with its unix socket in that dir, `wal_level=logical`
//! and room for replication slots. Used by the tests (one cluster per test
//! binary), `demo` and `bench`.
//!
//! Cleanup does not depend on `Drop` (statics are never dropped, and a test
//! binary may die on a panic or a signal): every cluster gets a small reaper
//! process whose stdin is a pipe held open by this process. When this process
//! ends, however it ends, the pipe closes and the reaper stops the server and
//! removes the directory.
//!
//! PostgreSQL refuses to run as root; when we are root the server runs as the
//! `postgres` OS user.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a cluster may take to start before we give up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found (looked in $GODATA_BRIDGE_PG_BINDIR, \
         `pg_config --bindir`, PATH, /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin); install them, e.g. \
         `apt-get install -y postgresql` on Debian/Ubuntu, or set GODATA_BRIDGE_PG_BINDIR"
    )]
    NoBinaries,
    #[error("running as root, but there is no `postgres` OS user to run the server as (create one, or run as a normal user)")]
    NoPostgresUser,
    #[error("{step}")]
    Io {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("initdb failed: {output}")]
    Initdb { output: String },
    #[error("postgres did not start within {timeout:?}; server log:\n{log}")]
    Start { timeout: Duration, log: String },
    #[error("pg_ctl stop failed: {output}")]
    Stop { output: String },
}

fn io(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let step = step.into();
    move |source| ClusterError::Io { step, source }
}

/// Where the server binaries are: `$GODATA_BRIDGE_PG_BINDIR`, `pg_config
/// --bindir`, `PATH`, then the versioned folders of Debian/Ubuntu and RPM
/// packages (newest first).
pub fn find_bindir() -> Result<PathBuf, ClusterError> {
    let has_server = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(d) = std::env::var_os("GODATA_BRIDGE_PG_BINDIR").map(PathBuf::from) {
        if has_server(&d) {
            return Ok(d);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&d) {
            return Ok(d);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if has_server(&d) {
                return Ok(d);
            }
        }
    }
    let mut versioned: Vec<(u32, PathBuf)> = vec![];
    for (root, prefix) in [("/usr/lib/postgresql", ""), ("/usr", "pgsql-")] {
        let Ok(entries) = fs::read_dir(root) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(ver) = name.strip_prefix(prefix) else {
                continue;
            };
            let Ok(v) = ver.split('.').next().unwrap_or_default().parse::<u32>() else {
                continue;
            };
            let d = e.path().join("bin");
            if has_server(&d) {
                versioned.push((v, d));
            }
        }
    }
    versioned.sort();
    versioned
        .pop()
        .map(|(_, d)| d)
        .ok_or(ClusterError::NoBinaries)
}

fn running_as_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn postgres_user() -> Result<(u32, u32), ClusterError> {
    let passwd = fs::read_to_string("/etc/passwd").map_err(io("reading /etc/passwd"))?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == "postgres")
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .ok_or(ClusterError::NoPostgresUser)
}

/// Settings of a new cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Extra `-c name=value` server settings.
    pub settings: Vec<(String, String)>,
    /// Files written into the data directory before the server starts
    /// (name, contents), owned by the server's user, mode 0600 — e.g. TLS
    /// certificate and key for `ssl_cert_file`/`ssl_key_file`.
    pub files: Vec<(String, Vec<u8>)>,
}

/// A running throwaway cluster. Superuser `postgres`, trust auth on loopback.
#[derive(Debug)]
pub struct Cluster {
    bindir: PathBuf,
    base: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    settings: Vec<(String, String)>,
    server: Option<Child>,
    reaper: Option<(Child, ChildStdin)>,
}

impl Cluster {
    /// initdb + start; blocks until the server accepts connections.
    pub fn start(options: ClusterOptions) -> Result<Cluster, ClusterError> {
        let bindir = find_bindir()?;
        let run_as = if running_as_root() {
            Some(postgres_user()?)
        } else {
            None
        };
        let base = tempfile::Builder::new()
            .prefix("godata-bridge-pg-")
            .tempdir()
            .map_err(io("creating the cluster's temp dir"))?
            .keep();
        let mut cluster = Cluster {
            bindir,
            base: base.clone(),
            port: 0,
            run_as,
            settings: options.settings.clone(),
            server: None,
            reaper: None,
        };
        // The reaper first, so that nothing we create outlives us.
        cluster.reaper = Some(spawn_reaper(&base)?);
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&base, Some(uid), Some(gid))
                .map_err(io("chown of the cluster dir"))?;
        }
        let out = cluster
            .command("initdb")
            .args(["-D"])
            .arg(cluster.data_dir())
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .output()
            .map_err(io("running initdb"))?;
        if !out.status.success() {
            return Err(ClusterError::Initdb {
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        for (name, contents) in &options.files {
            use std::os::unix::fs::PermissionsExt;
            let path = cluster.data_dir().join(name);
            fs::write(&path, contents).map_err(io(format!("writing {name}")))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(io(format!("chmod {name}")))?;
            if let Some((uid, gid)) = run_as {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(io(format!("chown {name}")))?;
            }
        }
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.start_server() {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bindir.join(program));
        // Its own process group: a terminal's Ctrl-C (SIGINT to the
        // foreground group) reaches the program using the cluster, which
        // stops what uses it and then the cluster, not the server first.
        c.current_dir(&self.base)
            .env_remove("PGDATA")
            .env("LC_ALL", "C")
            .process_group(0);
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
        }
        c
    }

    pub fn data_dir(&self) -> PathBuf {
        self.base.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.base.join("server.log")
    }

    /// Starts the server (again) on the cluster's port; waits until ready.
    pub fn start_server(&mut self) -> Result<(), ClusterError> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(io("opening the server log"))?;
        let log2 = log.try_clone().map_err(io("opening the server log"))?;
        if let Some((uid, gid)) = self.run_as {
            let _ = std::os::unix::fs::chown(self.log_path(), Some(uid), Some(gid));
        }
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string());
        let defaults = [
            ("listen_addresses", "127.0.0.1".to_string()),
            ("unix_socket_directories", self.base.display().to_string()),
            ("wal_level", "logical".into()),
            ("max_replication_slots", "64".into()),
            ("max_wal_senders", "64".into()),
            ("max_connections", "200".into()),
            // Speed over crash safety of the OS: the data is throwaway.
            ("fsync", "off".into()),
            ("full_page_writes", "off".into()),
        ];
        for (k, v) in defaults
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .chain(self.settings.clone())
        {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(io("starting postgres"))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.pid_file_says_ready() {
                self.server = Some(child);
                return Ok(());
            }
            let exited = child
                .try_wait()
                .map_err(io("waiting for postgres"))?
                .is_some();
            if exited || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ClusterError::Start {
                    timeout: START_TIMEOUT,
                    log: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `postmaster.pid` line 8 is the postmaster status (`ready` once it
    /// accepts connections).
    fn pid_file_says_ready(&self) -> bool {
        fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .map(|s| s.lines().nth(7).is_some_and(|l| l.trim() == "ready"))
            .unwrap_or(false)
    }

    fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(self.log_path()) {
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops the server: `fast` (clean) or `immediate` (like a crash).
    pub fn stop_server(&mut self, immediate: bool) -> Result<(), ClusterError> {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "stop",
                "-w",
                "-t",
                "60",
                "-m",
                if immediate { "immediate" } else { "fast" },
            ])
            .output()
            .map_err(io("running pg_ctl stop"))?;
        if let Some(mut c) = self.server.take() {
            let _ = c.wait();
        }
        if !out.status.success() {
            return Err(ClusterError::Stop {
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory of the unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.base
    }

    /// A libpq URL for `dbname` as the superuser, over TCP.
    pub fn url(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, dbname)
    }

    /// A tokio-postgres config for `dbname` as the superuser.
    pub fn config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname(dbname);
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.server.is_some() {
            let _ = self.stop_server(false);
        }
        if let Some((mut reaper, stdin)) = self.reaper.take() {
            drop(stdin);
            let _ = reaper.wait();
        }
    }
}

fn free_port() -> Result<u16, ClusterError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(l.local_addr().map_err(io("finding a free port"))?.port())
}

/// A shell that waits for its stdin to close, then stops whatever server
/// runs in `base` (immediate shutdown) and removes `base`.
fn spawn_reaper(base: &Path) -> Result<(Child, ChildStdin), ClusterError> {
    const SCRIPT: &str = r#"trap '' INT TERM HUP
cat >/dev/null
pidfile="$1/data/postmaster.pid"
if [ -f "$pidfile" ]; then
  pid=$(head -n 1 "$pidfile")
  kill -QUIT "$pid" 2>/dev/null
  i=0
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 200 ]; do sleep 0.05; i=$((i+1)); done
fi
rm -rf "$1""#;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("reaper")
        .arg(base)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(io("starting the cluster reaper"))?;
    let stdin = child.stdin.take().expect("piped stdin");
    Ok((child, stdin))
}
