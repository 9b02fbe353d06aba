//! A real PostgreSQL cluster per test (own temp dir, Unix socket only): initdb + pg_ctl of
//! Debian's `postgresql` package, run as an unprivileged user when the tests run as root.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What to install when no server is found (CI installs it in `.ci/run`).
const HINT: &str = "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin \
    (initdb, pg_ctl): apt-get install postgresql";
/// The socket's port number (only its file name: the cluster listens on no TCP port).
const PORT: u16 = 5432;
/// The database superuser initdb creates (trust auth on the private socket).
const USER: &str = "edge";

/// A PostgreSQL cluster in a temp dir; stopped (immediate) when dropped.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// `runuser -u <user> --` prefix when running as root (initdb refuses root).
    as_user: Option<&'static str>,
}

impl Postgres {
    /// initdb + start; panics with [`HINT`] when the server is not installed (never skips).
    pub fn start() -> Postgres {
        let bin = server_bin().unwrap_or_else(|| panic!("{HINT}"));
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let as_user = root.then(|| {
            if Command::new("id")
                .arg("postgres")
                .output()
                .is_ok_and(|o| o.status.success())
            {
                "postgres"
            } else {
                "nobody"
            }
        });
        // Under /tmp: the unprivileged user must reach it (a root-owned 0700 parent would stop it).
        let dir = tempfile::Builder::new()
            .prefix("edge-relay-pg")
            .tempdir_in("/tmp")
            .unwrap();
        if let Some(user) = as_user {
            let status = Command::new("chown")
                .arg(user)
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown {user} {}", dir.path().display());
        }
        let pg = Postgres { dir, bin, as_user };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-U",
                USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        pg.start_again();
        pg
    }

    /// libpq key=value connection string of database `db` (the Unix socket in the temp dir).
    pub fn url(&self, db: &str) -> String {
        format!(
            "host={} port={PORT} user={USER} dbname={db}",
            self.dir.path().display()
        )
    }

    /// Creates database `name` (empty); returns its connection string.
    pub async fn create_db(&self, name: &str) -> String {
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .expect("connect to the test cluster");
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        drop(client);
        let _ = task.await;
        self.url(name)
    }

    /// Starts the server (again) on the same data dir; returns once it accepts connections.
    pub fn start_again(&self) {
        let socket_dir = self.dir.path().display().to_string();
        let options = format!("-k {socket_dir} -p {PORT} -c listen_addresses=''");
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Stops the server like a crash (`pg_ctl stop -m immediate`: no checkpoint, WAL replay at
    /// the next start); returns once the postmaster is gone.
    pub fn stop_immediate(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    /// The server's log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// `tool` of the server's bin dir, as the unprivileged user when root.
    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        let mut command = match self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        command.current_dir(self.dir.path());
        command
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// The bin dir of the newest installed server version.
fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            Path::new(&bin.join("initdb"))
                .exists()
                .then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|v| v.1)
}
