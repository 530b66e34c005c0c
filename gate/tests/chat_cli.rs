//! The `imgate-chat` binary against a gate started in-process: each user is a child process
//! with piped stdin and stdout. A thread per child forwards its stdout lines to a channel, and
//! every expectation waits for a matching line with a deadline (never a sleep).
//!
//! The message path (SEND, PULL, READ, SYNC, BIZ) needs the embedded backend; until it answers,
//! the tests that chat fail with the `ERROR code=5` line the client printed.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use support::TestGate;

/// How long one expected line may take: a child process starts, connects and logs in within it.
const CLI_WAIT: Duration = Duration::from_secs(10);

/// One running `imgate-chat`, killed on drop if it is still running.
struct ChatProcess {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    /// Stdout lines; the sender is dropped at end of stdout.
    lines: Receiver<String>,
    /// Every line received so far, for failure messages.
    seen: Vec<String>,
}

impl ChatProcess {
    /// `imgate-chat --addr <gate> <args>`.
    fn spawn(gate: &TestGate, name: &str, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_imgate-chat"))
            .arg("--addr")
            .arg(gate.addr().to_string())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("imgate-chat starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// A client logged in as `uid` whose initial SYNC has been answered (stdin is read from
    /// then on).
    fn login(gate: &TestGate, name: &str, uid: u64) -> Self {
        let mut chat = Self::spawn(gate, name, &["--uid", &uid.to_string()]);
        chat.expect_prefix(&format!("LOGIN ok uid={uid} "));
        chat.expect("the initial SYNC answered", |l| {
            l.starts_with("SYNC total_unread=")
                || (l.starts_with("ERROR ") || l.starts_with("TIMEOUT ")) && l.contains(" op=sync ")
        });
        chat
    }

    /// Writes one stdin line.
    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: writing {line:?}: {e}", self.name));
    }

    /// The next stdout line satisfying `pred` (earlier ones are skipped), within [`CLI_WAIT`].
    fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + CLI_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: no line for {what} within {CLI_WAIT:?}; got {:#?}",
                        self.name, self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "{}: stdout ended before {what}; got {:#?}",
                        self.name, self.seen
                    )
                }
            }
        }
    }

    fn expect_prefix(&mut self, prefix: &str) -> String {
        self.expect(&format!("a line starting {prefix:?}"), |l| {
            l.starts_with(prefix)
        })
    }

    /// The answer to a request: the next line starting with `ok` or an `ERROR`/`TIMEOUT` line,
    /// which fails the test at once with the client's own explanation.
    fn expect_answer(&mut self, ok: &str) -> String {
        let line = self.expect(&format!("{ok:?} or a refusal"), |l| {
            l.starts_with(ok) || l.starts_with("ERROR ") || l.starts_with("TIMEOUT ")
        });
        assert!(
            line.starts_with(ok),
            "{}: expected {ok:?}, got {line:?}; all lines: {:#?}",
            self.name,
            self.seen
        );
        line
    }

    /// Waits for the process to end (its stdout closes) and returns its status, all within
    /// [`CLI_WAIT`].
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + CLI_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: still running after {CLI_WAIT:?}; got {:#?}",
                        self.name, self.seen
                    )
                }
            }
        }
        // Stdout is closed: the process is exiting.
        self.child.wait().expect("wait for imgate-chat")
    }

    /// `/quit`, then the process exits with status 0 after printing BYE.
    fn quit(&mut self) {
        self.send("/quit");
        let status = self.wait_exit();
        assert!(
            status.success(),
            "{}: /quit should exit 0, got {status}; lines: {:#?}",
            self.name,
            self.seen
        );
        assert_eq!(
            self.seen.last().map(String::as_str),
            Some("BYE"),
            "{}",
            self.name
        );
    }
}

impl Drop for ChatProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of `key=` in a printed line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn two_users_chat_see_unread_counts_and_read_receipts() {
    let gate = TestGate::start();
    let mut alice = ChatProcess::login(&gate, "alice", 1);
    let mut bob = ChatProcess::login(&gate, "bob", 2);

    alice.send("/to 2");
    alice.send("hello");
    let sent = alice.expect_answer("SENT msg_id=");
    let msg_id = field(&sent, "msg_id").to_owned();
    assert_eq!(sent, format!("SENT msg_id={msg_id} conv=single:2"));

    let push = bob.expect_prefix("PUSH ");
    assert_eq!(
        push,
        format!("PUSH msg_id={msg_id} conv=single:1 from=1 text=hello")
    );

    bob.send("/sync");
    let conv = bob.expect_answer("SYNC conv=single:1 ");
    assert_eq!(conv, format!("SYNC conv=single:1 latest={msg_id} unread=1"));
    let total = bob.expect_prefix("SYNC total_unread=");
    assert_eq!(field(&total, "total_unread"), "1", "{total}");

    bob.send("/to 1");
    bob.send("/read");
    let read = bob.expect_answer("READ ");
    assert_eq!(read, format!("READ conv=single:1 read_up_to={msg_id}"));
    let receipt = alice.expect_prefix("RECEIPT ");
    assert_eq!(
        receipt,
        format!("RECEIPT conv=single:2 reader=2 read_up_to={msg_id}")
    );

    bob.send("/sync");
    let conv = bob.expect_answer("SYNC conv=single:1 ");
    assert_eq!(conv, format!("SYNC conv=single:1 latest={msg_id} unread=0"));

    alice.quit();
    bob.quit();
    gate.stop();
}

#[test]
fn group_members_get_pushes_and_can_pull_the_history() {
    let gate = TestGate::start();
    let mut alice = ChatProcess::login(&gate, "alice", 11);
    let mut bob = ChatProcess::login(&gate, "bob", 12);

    alice.send("/create team 12");
    let created = alice.expect_answer("GROUP created ");
    let group_id = field(&created, "id").to_owned();
    assert_eq!(created, format!("GROUP created id={group_id} name=team"));

    alice.send(&format!("/members {group_id}"));
    let members = alice.expect_answer("MEMBERS ");
    let mut uids: Vec<&str> = field(&members, "uids").split(',').collect();
    uids.sort_unstable();
    assert_eq!(uids, ["11", "12"], "{members}");

    alice.send(&format!("/group {group_id}"));
    alice.send("hi all");
    let sent = alice.expect_answer("SENT msg_id=");
    let msg_id = field(&sent, "msg_id").to_owned();

    let push = bob.expect_prefix("PUSH ");
    assert_eq!(
        push,
        format!("PUSH msg_id={msg_id} conv=group:{group_id} from=11 text=hi all")
    );

    bob.send(&format!("/group {group_id}"));
    bob.send("/pull 5");
    let pulled = bob.expect_answer("PULL msg_id=");
    assert_eq!(
        pulled,
        format!("PULL msg_id={msg_id} conv=group:{group_id} from=11 text=hi all")
    );
    let done = bob.expect_prefix("PULL done ");
    assert_eq!(
        done,
        format!("PULL done conv=group:{group_id} count=1 has_more=false")
    );

    alice.quit();
    bob.quit();
    gate.stop();
}

#[test]
fn refused_login_prints_the_reason_and_exits_non_zero() {
    let gate = TestGate::start();
    let mut nobody = ChatProcess::spawn(&gate, "uid 0", &["--uid", "0"]);
    let refused = nobody.expect_prefix("LOGIN ");
    assert!(
        refused.starts_with("LOGIN refused uid=0 code=1 message="),
        "{refused}"
    );
    let status = nobody.wait_exit();
    assert_eq!(status.code(), Some(1), "{status}");
    gate.stop();
}

#[test]
fn end_of_stdin_logs_out_and_exits_zero() {
    let gate = TestGate::start();
    let mut alice = ChatProcess::login(&gate, "alice", 21);
    drop(alice.stdin.take());
    let status = alice.wait_exit();
    assert!(status.success(), "{status}; lines: {:#?}", alice.seen);
    assert_eq!(alice.seen.last().map(String::as_str), Some("BYE"));
    gate.stop();
}

#[test]
fn a_second_login_on_the_same_device_kicks_the_first_which_exits_non_zero() {
    let gate = TestGate::start();
    let mut first = ChatProcess::login(&gate, "first", 31);
    let mut second = ChatProcess::login(&gate, "second", 31);
    let kick = first.expect_prefix("KICK ");
    assert_eq!(field(&kick, "reason"), "1", "{kick}");
    let status = first.wait_exit();
    assert_eq!(status.code(), Some(3), "{status}");
    second.quit();
    gate.stop();
}
