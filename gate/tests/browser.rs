//! The browser client against a real gate: `web/test/codec.mjs` checks `web/imgate.js`'s codec
//! against the protocol vectors and `web/test/client.mjs` its session rules against a fake
//! socket (node only), and `web/test/browser.mjs` drives the demo page in
//! headless Chromium (Debian's `/usr/bin/chromium` through playwright-core): two users chat
//! both ways with unread counts and read receipts, join a group, and get a message from the
//! native TCP client `imgate-chat`, which the script spawns from the path given here.
//!
//! These tests need node, Chromium and `web/test/node_modules`; `bash scripts/test-deps.sh`
//! installs them (the README's test command runs it first). A missing one FAILS the test with
//! that instruction: it is never skipped.
//!
//! The screenshot goes to this test's temporary directory; with `IMGATE_UPDATE_DEMO_PNG=1` it
//! replaces `docs/demo.png`, the one the README shows.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use gate::config::WebDemo;
use support::TestGate;

/// The node script's own deadline is 120 s; this one only catches a hung node.
const BROWSER_DEADLINE: Duration = Duration::from_secs(150);
const CODEC_DEADLINE: Duration = Duration::from_secs(30);
const HOW_TO_INSTALL: &str = "run `bash scripts/test-deps.sh` from the repository root (installs Debian's chromium and \
     playwright-core into web/test/node_modules), then run the tests again";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the gate crate sits in the workspace")
        .to_path_buf()
}

fn chromium() -> PathBuf {
    std::env::var_os("IMGATE_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Fails, saying how to install them, when node, Chromium or playwright-core are missing.
fn require_deps(browser: bool) {
    let node = Command::new("node").arg("--version").output();
    match node {
        Ok(out) if out.status.success() => {}
        _ => panic!(
            "node is not installed (needed for the browser client tests): install Node.js 20 or later; {HOW_TO_INSTALL}"
        ),
    }
    if !browser {
        return;
    }
    let chromium = chromium();
    assert!(
        chromium.exists(),
        "{} is missing: the browser test needs Debian's chromium; {HOW_TO_INSTALL}",
        chromium.display()
    );
    let playwright = repo().join("web/test/node_modules/playwright-core/package.json");
    assert!(
        playwright.exists(),
        "{} is missing: the browser test needs playwright-core; {HOW_TO_INSTALL}",
        playwright.display()
    );
}

/// What a child did.
enum Event {
    Line(String),
    Exited(bool),
}

/// Forwards a child's output, line by line, to this test's output and to the channel.
fn collect(from: impl Read + Send + 'static, tx: mpsc::Sender<Event>) {
    thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            eprintln!("  node| {line}");
            if tx.send(Event::Line(line)).is_err() {
                return;
            }
        }
    });
}

/// Runs `child` to its end within `deadline` (killed past it): whether it succeeded, and what it
/// printed.
fn finish(mut child: Child, deadline: Duration) -> (bool, Vec<String>) {
    let (tx, rx) = mpsc::channel();
    collect(child.stdout.take().expect("piped stdout"), tx.clone());
    collect(child.stderr.take().expect("piped stderr"), tx.clone());
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    thread::spawn(move || {
        let ok = child.wait().is_ok_and(|s| s.success());
        let _ = tx.send(Event::Exited(ok));
    });
    let end = Instant::now() + deadline;
    let mut lines = Vec::new();
    let ok = loop {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(Event::Line(line)) => lines.push(line),
            Ok(Event::Exited(ok)) => break ok,
            Err(_) => {
                // SAFETY: kill(2) on the child we started and have not reaped (its waiter
                // thread has not reported).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                lines.push(format!("(killed: no end within {deadline:?})"));
                break false;
            }
        }
    };
    // The last lines may trail the exit; the pipes close right after it.
    while let Ok(Event::Line(line)) = rx.recv_timeout(Duration::from_millis(500)) {
        lines.push(line);
    }
    (ok, lines)
}

#[test]
fn the_javascript_codec_matches_the_protocol_vectors() {
    require_deps(false);
    let repo = repo();
    let child = Command::new("node")
        .arg(repo.join("web/test/codec.mjs"))
        .arg(repo.join("gate/tests/data/protocol-vectors.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node starts");
    let (ok, lines) = finish(child, CODEC_DEADLINE);
    assert!(ok, "web/test/codec.mjs failed:\n{}", lines.join("\n"));
}

#[test]
fn the_javascript_client_matches_answers_by_seq_acks_pushes_and_keeps_its_heartbeat() {
    require_deps(false);
    let child = Command::new("node")
        .arg(repo().join("web/test/client.mjs"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node starts");
    let (ok, lines) = finish(child, CODEC_DEADLINE);
    assert!(ok, "web/test/client.mjs failed:\n{}", lines.join("\n"));
}

#[test]
fn two_browsers_and_a_tcp_client_chat_through_the_demo_page() {
    require_deps(true);
    let gate = TestGate::start_with(|c| c.gate.web_demo = WebDemo::On);
    let repo = repo();
    let screenshot = if std::env::var_os("IMGATE_UPDATE_DEMO_PNG").is_some() {
        repo.join("docs/demo.png")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo.png")
    };
    let child = Command::new("node")
        .arg(repo.join("web/test/browser.mjs"))
        .env("IMGATE_ADDR", gate.addr().to_string())
        .env("IMGATE_CHAT_BIN", env!("CARGO_BIN_EXE_imgate-chat"))
        .env("IMGATE_SCREENSHOT", &screenshot)
        .env("IMGATE_CHROMIUM", chromium())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node starts");
    let (ok, lines) = finish(child, BROWSER_DEADLINE);
    assert!(ok, "web/test/browser.mjs failed:\n{}", lines.join("\n"));
    assert!(
        lines.iter().any(|l| l == "browser test ok"),
        "{}",
        lines.join("\n")
    );
    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    gate.stop();
}
