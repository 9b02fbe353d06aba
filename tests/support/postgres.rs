//! A real PostgreSQL cluster per test (own temp dir, Unix socket only): initdb + pg_ctl of
//! Debian's `postgresql` package, run as an unprivileged user when the tests run as root.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What to install when no server is found (CI installs it in `.ci/run`).
const HINT: &str = "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin \
    (initdb, pg_ctl): apt-get install postgresql";
/// The socket's port number of a cluster without TCP (then only the socket's file name).
const PORT: u16 = 5432;
/// The database superuser initdb creates (trust auth on the private socket).
const USER: &str = "edge";

/// A PostgreSQL cluster in a temp dir; stopped (immediate) when dropped.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// `runuser -u <user> --` prefix when running as root (initdb refuses root).
    as_user: Option<&'static str>,
    /// Port of the socket, and of TCP on 127.0.0.1 with TLS.
    port: u16,
    /// TLS on 127.0.0.1:`port` with a certificate of `ca.pem` in the temp dir.
    tls: bool,
}

impl Postgres {
    /// initdb + start, Unix socket only; panics with [`HINT`] when the server is not installed
    /// (never skips).
    pub fn start() -> Postgres {
        Self::start_with(false)
    }

    /// [`Postgres::start`], also listening on 127.0.0.1 with TLS only (`hostssl`), its server
    /// certificate (for IP 127.0.0.1) issued by a CA of its own: [`Postgres::ca_file`].
    pub fn start_tls() -> Postgres {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Postgres {
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
        let port = if tls {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        } else {
            PORT
        };
        let pg = Postgres {
            dir,
            bin,
            as_user,
            port,
            tls,
        };
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
        if tls {
            pg.make_certificates();
            // TCP only with TLS: a plain TCP connection is refused.
            let hba = format!("{}/pg_hba.conf", pg.data());
            std::fs::write(
                hba,
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .unwrap();
        }
        pg.start_again();
        pg
    }

    /// libpq key=value connection string of database `db` (the Unix socket in the temp dir).
    pub fn url(&self, db: &str) -> String {
        let (dir, port) = (self.dir.path().display(), self.port);
        format!("host={dir} port={port} user={USER} dbname={db}")
    }

    /// `postgres://` URL of database `db` over TCP on 127.0.0.1 (a [`Postgres::start_tls`]
    /// cluster).
    pub fn tcp_url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The PEM file of the CA that issued a [`Postgres::start_tls`] cluster's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A CA and a server certificate for IP 127.0.0.1 (openssl); the key readable by the
    /// server only.
    fn make_certificates(&self) {
        let d = self.dir.path();
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        let steps = [
            format!("req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca"),
            format!("req {ec} -keyout server.key -out server.csr -subj /CN=127.0.0.1"),
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
             -days 2 -extfile server.ext"
                .to_owned(),
        ];
        for step in steps {
            let out = Command::new("openssl")
                .args(step.split_whitespace())
                .current_dir(d)
                .output()
                .expect("openssl");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "openssl {step}: {err}");
        }
        let key = d.join("server.key");
        if let Some(user) = self.as_user {
            assert!(
                Command::new("chown")
                    .arg(user)
                    .arg(&key)
                    .status()
                    .unwrap()
                    .success()
            );
        }
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
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
        let dir = self.dir.path().display().to_string();
        let port = self.port;
        let options = if self.tls {
            format!(
                "-k {dir} -p {port} -c listen_addresses=127.0.0.1 -c ssl=on \
                 -c ssl_cert_file={dir}/server.pem -c ssl_key_file={dir}/server.key"
            )
        } else {
            format!("-k {dir} -p {port} -c listen_addresses=''")
        };
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
