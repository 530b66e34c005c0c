//! `imgate-chat`, the command-line chat client: a sans-IO core ([`Chat`]) and the thin blocking
//! shell ([`run`]) that drives it over a [`Client`] and stdin.
//!
//! [`Chat`] owns the state of one logged-in session as the user sees it: the current
//! conversation, the requests in flight (`seq` → what was asked, so pipelined answers are matched
//! by `seq` alone), the pending ACK batch, the `msg_id`s already shown (PUSH is at-least-once),
//! the latest `msg_id` known per conversation (what `/read` reads up to), the heartbeat clock,
//! and the queues of frames to write and lines to print. It never touches IO and never reads the
//! clock: inputs are `handle_*(.., now)`, outputs are drained with `poll_transmit` and
//! `poll_output`, `poll_timeout` says when to call [`Chat::handle_timeout`], and `exit` says
//! when the session is over and with which [`Exit`] code. Call order: feed inputs with
//! non-decreasing `now`, then drain both polls before waiting again.
//!
//! Invariants and policies:
//! - Every request in flight has an entry in the pending map with a deadline
//!   ([`REQUEST_TIMEOUT`]); an answer with an unknown `seq`, the wrong command or an undecodable
//!   body is printed as a `BAD` line and changes nothing else. Nothing the gate sends panics.
//! - Every PUSH is acknowledged, duplicates included (printed once): ACKs are batched up to
//!   [`ACK_BATCH_MAX`] ids or [`ACK_DELAY`], whichever comes first.
//! - A PING goes out when nothing was written for `heartbeat_secs`.
//! - `/quit` (and the end of stdin) waits up to [`QUIT_GRACE`] for the answers in flight, flushes
//!   the ACKs, sends LOGOUT and ends with [`Exit::Quit`] on its answer (or on its timeout, or the
//!   close that follows it).
//!
//! Every printed line starts with a fixed upper-case word (`PUSH`, `SENT`, `ERROR`, ...) followed
//! by `key=value` fields; free text (`text=`, `message=`) is always the last field and is escaped
//! so that one event is one line.
//!
//! The shell ([`run`]) connects, logs in, then loops: write what the core queued, print what it
//! queued, wait on the socket for at most [`TICK`] (or less, until the core's next deadline),
//! then drain the stdin lines that a reader thread has put in a bounded channel.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;

use super::{Client, ClientError, decode_body, log_id_for};
use crate::protocol::{DEFAULT_MAX_FRAME, Frame, MsgType, cmd, encode_frame, pb};

/// Most ids in one ACK.
pub const ACK_BATCH_MAX: usize = 64;
/// Longest an ACK waits for company.
pub const ACK_DELAY: Duration = Duration::from_millis(50);
/// How long a request may stay unanswered before it is reported as a `TIMEOUT`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `/quit` waits for the answers in flight before it sends LOGOUT.
pub const QUIT_GRACE: Duration = Duration::from_secs(5);
/// Longest single wait of the shell on the socket (stdin latency).
pub const TICK: Duration = Duration::from_millis(10);
/// `heartbeat_secs` assumed when a LoginResp carries none.
pub const DEFAULT_HEARTBEAT_SECS: u32 = 30;
/// Messages `/pull` fetches when no count is given.
pub const DEFAULT_PULL: u32 = 20;
/// Most messages one `/pull` may ask for.
pub const MAX_PULL: u32 = 1000;
/// Most messages asked in one PULL (the gate's cap).
pub const PULL_PAGE_MAX: u32 = 200;
/// `msg_id`s remembered to drop duplicate PUSHes.
pub const SEEN_CAP: usize = 4096;
/// Conversations whose latest `msg_id` is remembered.
pub const LATEST_CAP: usize = 65_536;
/// Stdin lines buffered between the reader thread and the loop.
pub const INPUT_QUEUE: usize = 64;
/// `SendReq.content_type` of a text message.
pub const CONTENT_TEXT: u32 = 1;
/// `conv_type` of a single chat.
pub const CONV_SINGLE: u32 = 1;
/// `conv_type` of a group chat.
pub const CONV_GROUP: u32 = 2;
/// Bytes of `max_frame` a SEND body may not use (PROTOCOL.md: body ≤ `max_frame` − 128).
const SEND_HEADROOM: u32 = 128;
/// Stdin lines handled per loop turn, so a paste cannot starve the socket.
const INPUT_BURST: usize = 16;
/// How long the shell keeps reading after a failed write, for the KICK that may explain it.
const DRAIN_AFTER_WRITE_FAILURE: Duration = Duration::from_millis(500);

/// Command-line arguments of `imgate-chat`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "imgate-chat",
    version,
    about = "Command-line chat client of an imgate gate",
    after_help = "Type /help once logged in for the commands."
)]
pub struct Args {
    /// The gate's address (host:port).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub addr: String,
    /// Your user id.
    #[arg(long)]
    pub uid: u64,
    /// Login token (any token is accepted by a gate in auth.mode = "dev").
    #[arg(long, default_value = "dev")]
    pub token: String,
    /// Device id; a second login with the same uid and device kicks the first.
    #[arg(long, default_value = "cli")]
    pub device: String,
}

/// How the client ends; [`Exit::code`] is the process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `/quit` or end of stdin: LOGOUT done. Status 0.
    Quit,
    /// The gate refused the LOGIN. Status 1.
    LoginRefused,
    /// The gate sent KICK. Status 3.
    Kicked,
    /// Could not connect, the connection closed, or the gate sent a bad frame. Status 4.
    Disconnected,
    /// stdout or stdin failed locally. Status 5.
    LocalIo,
}

impl Exit {
    /// The process exit status (2 is clap's usage error).
    pub const fn code(self) -> u8 {
        match self {
            Self::Quit => 0,
            Self::LoginRefused => 1,
            Self::Kicked => 3,
            Self::Disconnected => 4,
            Self::LocalIo => 5,
        }
    }
}

/// A conversation, seen from this user (PROTOCOL.md: a single chat is named by the other
/// party's uid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Conv {
    Single(u64),
    Group(u64),
}

impl Conv {
    /// `None` for a `conv_type` the protocol does not define.
    pub const fn from_wire(conv_type: u32, id: u64) -> Option<Self> {
        match conv_type {
            CONV_SINGLE => Some(Self::Single(id)),
            CONV_GROUP => Some(Self::Group(id)),
            _ => None,
        }
    }

    pub const fn conv_type(self) -> u32 {
        match self {
            Self::Single(_) => CONV_SINGLE,
            Self::Group(_) => CONV_GROUP,
        }
    }

    pub const fn id(self) -> u64 {
        match self {
            Self::Single(id) | Self::Group(id) => id,
        }
    }
}

impl std::fmt::Display for Conv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&conv_label(self.conv_type(), self.id()))
    }
}

/// One stdin line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send this text to the current conversation.
    Text(String),
    To(u64),
    Group(u64),
    Create {
        name: String,
        members: Vec<u64>,
    },
    Join(u64),
    Leave(u64),
    Members(u64),
    Sync,
    Pull(u32),
    Read,
    Help,
    Quit,
}

/// Why a stdin line is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown command {0}; /help lists the commands")]
    Unknown(String),
    #[error("usage: {0}")]
    Usage(&'static str),
    #[error("{what} must be a non-zero decimal number, not {given:?}")]
    BadId { what: &'static str, given: String },
}

/// Parses one stdin line (its line ending, if any, is ignored). `Ok(None)` for a blank line.
/// A line not starting with `/` is text to send; `//` starts text that begins with `/`.
pub fn parse_line(line: &str) -> Result<Option<Command>, ParseError> {
    let line = line.trim_end_matches(['\n', '\r']);
    if line.trim().is_empty() {
        return Ok(None);
    }
    if let Some(text) = line.strip_prefix("//") {
        return Ok(Some(Command::Text(format!("/{text}"))));
    }
    if !line.starts_with('/') {
        return Ok(Some(Command::Text(line.to_owned())));
    }
    let mut words = line.split_whitespace();
    let name = words.next().unwrap_or_default();
    let args: Vec<&str> = words.collect();
    let command = match name {
        "/to" => Command::To(one_id(&args, "UID", "/to UID")?),
        "/group" => Command::Group(one_id(&args, "GID", "/group GID")?),
        "/join" => Command::Join(one_id(&args, "GID", "/join GID")?),
        "/leave" => Command::Leave(one_id(&args, "GID", "/leave GID")?),
        "/members" => Command::Members(one_id(&args, "GID", "/members GID")?),
        "/create" => {
            const USAGE: &str = "/create NAME [UID,UID,...]";
            let (name, members) = match args.as_slice() {
                [name] => (*name, Vec::new()),
                [name, list] => (*name, parse_id_list(list)?),
                _ => return Err(ParseError::Usage(USAGE)),
            };
            Command::Create {
                name: name.to_owned(),
                members,
            }
        }
        "/pull" => {
            const USAGE: &str = "/pull [N], N from 1 to 1000";
            match args.as_slice() {
                [] => Command::Pull(DEFAULT_PULL),
                [n] => match n.parse::<u32>() {
                    Ok(n) if (1..=MAX_PULL).contains(&n) => Command::Pull(n),
                    _ => return Err(ParseError::Usage(USAGE)),
                },
                _ => return Err(ParseError::Usage(USAGE)),
            }
        }
        "/sync" => no_args(&args, Command::Sync, "/sync")?,
        "/read" => no_args(&args, Command::Read, "/read")?,
        "/help" => no_args(&args, Command::Help, "/help")?,
        "/quit" => no_args(&args, Command::Quit, "/quit")?,
        other => return Err(ParseError::Unknown(other.to_owned())),
    };
    Ok(Some(command))
}

fn one_id(args: &[&str], what: &'static str, usage: &'static str) -> Result<u64, ParseError> {
    match args {
        [id] => parse_id(id, what),
        _ => Err(ParseError::Usage(usage)),
    }
}

fn no_args(args: &[&str], command: Command, usage: &'static str) -> Result<Command, ParseError> {
    if args.is_empty() {
        Ok(command)
    } else {
        Err(ParseError::Usage(usage))
    }
}

fn parse_id(text: &str, what: &'static str) -> Result<u64, ParseError> {
    match text.parse::<u64>() {
        Ok(id) if id != 0 => Ok(id),
        _ => Err(ParseError::BadId {
            what,
            given: text.to_owned(),
        }),
    }
}

fn parse_id_list(text: &str) -> Result<Vec<u64>, ParseError> {
    text.split(',').map(|id| parse_id(id, "UID")).collect()
}

/// The lines `/help` prints.
pub const HELP: &[&str] = &[
    "HELP /to UID                     chat with user UID",
    "HELP /group GID                  chat in group GID",
    "HELP TEXT                        send TEXT to the current chat (//TEXT sends /TEXT)",
    "HELP /create NAME [UID,UID,...]  create a group (you are added to it)",
    "HELP /join GID | /leave GID      join or leave a group",
    "HELP /members GID                list a group's members",
    "HELP /sync                       conversations with their latest msg_id and unread count",
    "HELP /pull [N]                   the last N (default 20) messages of the current chat",
    "HELP /read                       mark the current chat read up to its latest message",
    "HELP /help | /quit",
];

// ---------------------------------------------------------------------------------------------
// Output formatting: pure functions, one line each.

/// `single:7`, `group:9`; an undefined `conv_type` shows as `type3:7`.
pub fn conv_label(conv_type: u32, id: u64) -> String {
    match conv_type {
        CONV_SINGLE => format!("single:{id}"),
        CONV_GROUP => format!("group:{id}"),
        other => format!("type{other}:{id}"),
    }
}

/// Free text made one line: `\` → `\\`, line breaks and other control characters →
/// `\n`, `\r`, `\t` or `\u{..}`.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// A value that is not the last field: [`escape`]d, and spaces as `\u{20}`.
pub fn escape_token(text: &str) -> String {
    escape(text).replace(' ', "\\u{20}")
}

/// The name of a result code (PROTOCOL.md "Codes").
pub const fn code_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "BAD_REQUEST",
        2 => "UNAUTHENTICATED",
        3 => "FORBIDDEN",
        4 => "RATE_LIMITED",
        5 => "BACKEND_UNAVAILABLE",
        6 => "TOO_LARGE",
        7 => "UNSUPPORTED_VERSION",
        8 => "NOT_LOGGED_IN",
        9 => "INTERNAL",
        10 => "CONTENT_REJECTED",
        11 => "NOT_FOUND",
        _ => "UNKNOWN",
    }
}

/// `LOGIN ok ...` or `LOGIN refused ...`.
pub fn fmt_login(uid: u64, device: &str, resp: &pb::LoginResp) -> String {
    if resp.code == 0 {
        format!(
            "LOGIN ok uid={uid} device={} session_id={} gate_id={} heartbeat_secs={} max_frame={} server_time_ms={}",
            escape_token(device),
            resp.session_id,
            escape_token(&resp.gate_id),
            resp.heartbeat_secs,
            resp.max_frame,
            resp.server_time_ms,
        )
    } else {
        format!(
            "LOGIN refused uid={uid} code={} message={}",
            resp.code,
            message_or_name(resp.code, &resp.message)
        )
    }
}

/// `ERROR code=.. op=.. message=..`; an empty message shows the code's name.
pub fn fmt_error(code: u32, op: &str, message: &str) -> String {
    format!(
        "ERROR code={code} op={op} message={}",
        message_or_name(code, message)
    )
}

fn message_or_name(code: u32, message: &str) -> String {
    if message.is_empty() {
        code_name(code).to_owned()
    } else {
        escape(message)
    }
}

/// A message as `PREFIX msg_id=.. conv=.. from=.. text=..` (`PREFIX` is `PUSH` or `PULL`);
/// content that is not text shows its type and size instead.
pub fn fmt_msg(prefix: &str, msg: &pb::PushMsg) -> String {
    let head = format!(
        "{prefix} msg_id={} conv={} from={}",
        msg.msg_id,
        conv_label(msg.conv_type, msg.conv_id),
        msg.from
    );
    if msg.content_type == CONTENT_TEXT {
        format!(
            "{head} text={}",
            escape(&String::from_utf8_lossy(&msg.body))
        )
    } else {
        format!(
            "{head} content_type={} bytes={}",
            msg.content_type,
            msg.body.len()
        )
    }
}

/// `NOTIFY conv=.. latest=.. unread=..` (one line per update).
pub fn fmt_notify(update: &pb::ConvUpdate) -> String {
    format!(
        "NOTIFY conv={} latest={} unread={}",
        conv_label(update.conv_type, update.conv_id),
        update.latest_msg_id,
        update.unread
    )
}

/// `SYNC conv=.. latest=.. unread=..` (one line per conversation).
pub fn fmt_sync_conv(conv: &pb::ConvUpdate) -> String {
    format!(
        "SYNC conv={} latest={} unread={}",
        conv_label(conv.conv_type, conv.conv_id),
        conv.latest_msg_id,
        conv.unread
    )
}

/// `SYNC total_unread=.. convs=.. has_more=..` (after the conversations).
pub fn fmt_sync_total(resp: &pb::SyncResp) -> String {
    format!(
        "SYNC total_unread={} convs={} has_more={}",
        resp.total_unread,
        resp.convs.len(),
        resp.has_more
    )
}

/// `RECEIPT conv=.. reader=.. read_up_to=..`.
pub fn fmt_receipt(receipt: &pb::ReadReceipt) -> String {
    format!(
        "RECEIPT conv={} reader={} read_up_to={}",
        conv_label(receipt.conv_type, receipt.conv_id),
        receipt.reader,
        receipt.read_up_to
    )
}

/// `KICK reason=.. [reconnect_to=a,b] [retry_after_ms=..] message=..`.
pub fn fmt_kick(kick: &pb::Kick) -> String {
    let mut line = format!("KICK reason={}", kick.reason);
    if !kick.reconnect_to.is_empty() {
        let to: Vec<String> = kick.reconnect_to.iter().map(|a| escape_token(a)).collect();
        let _ = write!(line, " reconnect_to={}", to.join(","));
    }
    if kick.retry_after_ms != 0 {
        let _ = write!(line, " retry_after_ms={}", kick.retry_after_ms);
    }
    let _ = write!(line, " message={}", escape(&kick.message));
    line
}

/// `BIZ_PUSH topic=.. payload=..` (the payload as text).
pub fn fmt_biz_push(push: &pb::BizPush) -> String {
    format!(
        "BIZ_PUSH topic={} payload={}",
        escape_token(&push.topic),
        escape(&String::from_utf8_lossy(&push.payload))
    )
}

/// `MEMBERS group=.. count=.. uids=1,2,3`.
pub fn fmt_members(group_id: u64, members: &[u64]) -> String {
    let uids: Vec<String> = members.iter().map(u64::to_string).collect();
    format!(
        "MEMBERS group={group_id} count={} uids={}",
        members.len(),
        uids.join(",")
    )
}

// ---------------------------------------------------------------------------------------------
// Client message ids.

/// Non-zero 64-bit `client_msg_id`s: splitmix64 over a random seed, so ids from one process
/// never repeat and ids of different processes collide only by 64-bit chance.
#[derive(Debug, Clone)]
pub struct MsgIds {
    state: u64,
}

impl MsgIds {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next id; never 0.
    pub fn next_id(&mut self) -> u64 {
        loop {
            self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            if z != 0 {
                return z;
            }
        }
    }
}

/// A seed from the process's random hash keys, the wall clock and the pid.
pub fn random_seed() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

// ---------------------------------------------------------------------------------------------
// The core.

/// What a [`Chat`] needs from the login.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// `LoginResp.max_frame` (0: the protocol's default).
    pub max_frame: u32,
    /// `LoginResp.heartbeat_secs` (0: [`DEFAULT_HEARTBEAT_SECS`]).
    pub heartbeat_secs: u32,
    /// The first request `seq` the core may use (the ones before went to LOGIN).
    pub first_seq: u32,
    /// Seed of the `client_msg_id`s.
    pub id_seed: u64,
}

/// A request in flight: what was asked, and until when an answer is awaited.
#[derive(Debug)]
struct Pending {
    op: Op,
    deadline: Instant,
}

/// What a request in flight asked, with what its answer needs.
#[derive(Debug)]
enum Op {
    Sync {
        initial: bool,
    },
    Send {
        conv: Conv,
    },
    Pull(PullJob),
    /// `/read` with no known latest `msg_id`: a one-message backwards PULL to learn it.
    ReadLookup {
        conv: Conv,
    },
    Read {
        conv: Conv,
        up_to: u64,
    },
    Biz(Biz),
    Ping,
    Logout,
}

/// A `/pull N` in progress: pages backwards from the end until `want` messages are held.
#[derive(Debug)]
struct PullJob {
    conv: Conv,
    want: u32,
    got: Vec<pb::PushMsg>,
}

#[derive(Debug)]
enum Biz {
    Create { name: String },
    Join(u64),
    Leave(u64),
    Members(u64),
}

impl Biz {
    /// `BizReq.method` (the service is `group`).
    const fn method(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create",
            Self::Join(_) => "join",
            Self::Leave(_) => "leave",
            Self::Members(_) => "members",
        }
    }

    /// The `op=` of printed lines.
    const fn op_name(&self) -> &'static str {
        match self {
            Self::Create { .. } => "group.create",
            Self::Join(_) => "group.join",
            Self::Leave(_) => "group.leave",
            Self::Members(_) => "group.members",
        }
    }
}

impl Op {
    /// The command whose response answers this request.
    const fn cmd(&self) -> u8 {
        match self {
            Self::Sync { .. } => cmd::SYNC,
            Self::Send { .. } => cmd::SEND,
            Self::Pull(_) | Self::ReadLookup { .. } => cmd::PULL,
            Self::Read { .. } => cmd::READ,
            Self::Biz(_) => cmd::BIZ,
            Self::Ping => cmd::PING,
            Self::Logout => cmd::LOGOUT,
        }
    }

    /// The `op=` of printed lines.
    const fn name(&self) -> &'static str {
        match self {
            Self::Sync { .. } => "sync",
            Self::Send { .. } => "send",
            Self::Pull(_) => "pull",
            Self::ReadLookup { .. } | Self::Read { .. } => "read",
            Self::Biz(biz) => biz.op_name(),
            Self::Ping => "ping",
            Self::Logout => "logout",
        }
    }
}

/// Where the session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The initial SYNC is in flight; stdin waits.
    Starting,
    Running,
    /// `/quit` seen: waiting (until `deadline`) for the answers in flight.
    Quitting {
        deadline: Instant,
    },
    /// LOGOUT sent.
    LoggingOut,
}

/// ACK ids waiting to be sent, and when they must go.
#[derive(Debug, Default)]
struct AckBatch {
    ids: Vec<u64>,
    due: Option<Instant>,
}

/// The last [`SEEN_CAP`] pushed `msg_id`s.
#[derive(Debug, Default)]
struct SeenIds {
    order: VecDeque<u64>,
    set: HashSet<u64>,
}

impl SeenIds {
    /// `false` if `id` was already seen.
    fn insert(&mut self, id: u64) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN_CAP
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

/// The chat session's state machine (see the module doc).
#[derive(Debug)]
pub struct Chat {
    max_frame: u32,
    heartbeat: Duration,
    next_seq: u32,
    ids: MsgIds,
    target: Option<Conv>,
    pending: HashMap<u32, Pending>,
    acks: AckBatch,
    seen: SeenIds,
    latest: HashMap<Conv, u64>,
    last_transmit: Instant,
    phase: Phase,
    transmit: VecDeque<Bytes>,
    output: VecDeque<String>,
    exit: Option<Exit>,
}

impl Chat {
    /// A session that has just logged in; queues the initial SYNC.
    pub fn new(config: ChatConfig, now: Instant) -> Self {
        let heartbeat_secs = match config.heartbeat_secs {
            0 => DEFAULT_HEARTBEAT_SECS,
            secs => secs,
        };
        let mut chat = Self {
            max_frame: match config.max_frame {
                0 => DEFAULT_MAX_FRAME,
                max => max,
            },
            heartbeat: Duration::from_secs(u64::from(heartbeat_secs)),
            next_seq: config.first_seq.max(1),
            ids: MsgIds::new(config.id_seed),
            target: None,
            pending: HashMap::new(),
            acks: AckBatch::default(),
            seen: SeenIds::default(),
            latest: HashMap::new(),
            last_transmit: now,
            phase: Phase::Starting,
            transmit: VecDeque::new(),
            output: VecDeque::new(),
            exit: None,
        };
        chat.request(cmd::SYNC, &(), Op::Sync { initial: true }, now);
        chat
    }

    /// Whether the shell should hand over stdin lines now: not before the initial SYNC is
    /// answered, not once quitting.
    pub fn accepts_input(&self) -> bool {
        self.phase == Phase::Running && self.exit.is_none()
    }

    /// The conversation text is sent to.
    pub fn target(&self) -> Option<Conv> {
        self.target
    }

    /// Set once the session is over: the shell writes and prints what is queued, then exits.
    pub fn exit(&self) -> Option<Exit> {
        self.exit
    }

    /// The next encoded frame to write.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    /// The next line to print.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<String> {
        self.output.pop_front()
    }

    /// When [`Chat::handle_timeout`] has something to do: an ACK batch, the heartbeat, a request
    /// deadline or the end of the quit grace.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.exit.is_some() {
            return None;
        }
        let heartbeat = Some(self.last_transmit + self.heartbeat);
        let quit = match self.phase {
            Phase::Quitting { deadline } => Some(deadline),
            _ => None,
        };
        let request = self.pending.values().map(|p| p.deadline).min();
        [self.acks.due, heartbeat, quit, request]
            .into_iter()
            .flatten()
            .min()
    }

    /// One stdin line.
    pub fn handle_line(&mut self, line: &str, now: Instant) {
        if self.exit.is_some() || matches!(self.phase, Phase::Quitting { .. } | Phase::LoggingOut) {
            return;
        }
        match parse_line(line) {
            Ok(Some(command)) => self.handle_command(command, now),
            Ok(None) => {}
            Err(e) => self.print(format!("USAGE {e}")),
        }
    }

    /// The end of stdin: the same as `/quit`.
    pub fn handle_input_end(&mut self, now: Instant) {
        if self.exit.is_none() && matches!(self.phase, Phase::Starting | Phase::Running) {
            self.start_quit(now);
        }
    }

    /// The connection is gone (end of stream, reset, or a bad frame): `why` says which.
    pub fn handle_closed(&mut self, why: &str) {
        if self.exit.is_some() {
            return;
        }
        if self.phase == Phase::LoggingOut {
            self.print("BYE".to_owned());
            self.exit = Some(Exit::Quit);
        } else {
            self.print(format!("CLOSED message={}", escape(why)));
            self.exit = Some(Exit::Disconnected);
        }
    }

    /// One frame from the gate.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) {
        if self.exit.is_some() {
            return;
        }
        match frame.msg_type {
            MsgType::Response => self.on_response(&frame, now),
            MsgType::Notify => self.on_notify(&frame, now),
            MsgType::Request => {
                // The gate's only request is PING (normally answered by the Client already).
                if frame.cmd == cmd::PING {
                    self.transmit.push_back(encode_frame(
                        cmd::PING,
                        MsgType::Response,
                        frame.log_id,
                        frame.seq,
                        &(),
                    ));
                    self.last_transmit = now;
                }
            }
        }
        self.advance_quit(now);
    }

    /// Time passed: flush a due ACK batch, send the heartbeat, expire requests, end the quit
    /// grace.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.exit.is_some() {
            return;
        }
        if self.acks.due.is_some_and(|due| due <= now) {
            self.flush_acks(now);
        }
        let expired: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            if let Some(pending) = self.pending.remove(&seq) {
                self.expire(seq, pending.op);
            }
        }
        if self.exit.is_none() && now >= self.last_transmit + self.heartbeat {
            self.request(cmd::PING, &(), Op::Ping, now);
        }
        self.advance_quit(now);
    }

    fn print(&mut self, line: String) {
        self.output.push_back(line);
    }

    fn take_seq(&mut self) -> u32 {
        loop {
            let seq = self.next_seq;
            self.next_seq = self.next_seq.wrapping_add(1).max(1);
            if !self.pending.contains_key(&seq) {
                return seq;
            }
        }
    }

    /// Queues a request and remembers what it asked. A body above `max_frame` is refused here
    /// (the gate would close the connection for it).
    fn request(&mut self, cmd: u8, body: &impl Message, op: Op, now: Instant) {
        let len = body.encoded_len();
        if len > self.max_frame as usize {
            let line = format!(
                "USAGE {} request of {len} bytes is above max_frame {}",
                op.name(),
                self.max_frame
            );
            self.print(line);
            if let Op::Sync { initial: true } = op {
                self.phase = Phase::Running;
            }
            return;
        }
        let seq = self.take_seq();
        self.transmit.push_back(encode_frame(
            cmd,
            MsgType::Request,
            log_id_for(seq),
            seq,
            body,
        ));
        self.last_transmit = now;
        self.pending.insert(
            seq,
            Pending {
                op,
                deadline: now + REQUEST_TIMEOUT,
            },
        );
    }

    fn handle_command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Text(text) => self.send_text(text, now),
            Command::To(uid) => self.set_target(Conv::Single(uid)),
            Command::Group(gid) => self.set_target(Conv::Group(gid)),
            Command::Create { name, members } => {
                let payload = serde_json::json!({ "name": name, "members": members });
                self.biz(Biz::Create { name }, &payload, now);
            }
            Command::Join(gid) => self.group_call(Biz::Join(gid), gid, now),
            Command::Leave(gid) => self.group_call(Biz::Leave(gid), gid, now),
            Command::Members(gid) => self.group_call(Biz::Members(gid), gid, now),
            Command::Sync => self.request(cmd::SYNC, &(), Op::Sync { initial: false }, now),
            Command::Pull(want) => {
                if let Some(conv) = self.need_target() {
                    let job = PullJob {
                        conv,
                        want,
                        got: Vec::new(),
                    };
                    self.pull_page(job, u64::MAX, now);
                }
            }
            Command::Read => {
                if let Some(conv) = self.need_target() {
                    match self.latest.get(&conv) {
                        Some(&up_to) => self.read(conv, up_to, now),
                        None => {
                            let req = backwards_pull(conv, u64::MAX, 1);
                            self.request(cmd::PULL, &req, Op::ReadLookup { conv }, now);
                        }
                    }
                }
            }
            Command::Help => {
                for line in HELP {
                    self.print((*line).to_owned());
                }
            }
            Command::Quit => self.start_quit(now),
        }
    }

    fn set_target(&mut self, conv: Conv) {
        self.target = Some(conv);
        self.print(format!("TARGET conv={conv}"));
    }

    fn need_target(&mut self) -> Option<Conv> {
        if self.target.is_none() {
            self.print("USAGE no current chat: /to UID or /group GID first".to_owned());
        }
        self.target
    }

    fn send_text(&mut self, text: String, now: Instant) {
        let Some(conv) = self.need_target() else {
            return;
        };
        let limit = self.max_frame.saturating_sub(SEND_HEADROOM) as usize;
        if text.len() > limit {
            let line = format!(
                "USAGE message of {} bytes is above the limit of {limit}",
                text.len()
            );
            self.print(line);
            return;
        }
        let req = pb::SendReq {
            client_msg_id: self.ids.next_id(),
            conv_type: conv.conv_type(),
            to: conv.id(),
            content_type: CONTENT_TEXT,
            body: Bytes::from(text.into_bytes()),
        };
        self.request(cmd::SEND, &req, Op::Send { conv }, now);
    }

    fn group_call(&mut self, op: Biz, group_id: u64, now: Instant) {
        let payload = serde_json::json!({ "group_id": group_id });
        self.biz(op, &payload, now);
    }

    fn biz(&mut self, op: Biz, payload: &serde_json::Value, now: Instant) {
        let req = pb::BizReq {
            service: "group".into(),
            method: op.method().into(),
            payload: Bytes::from(payload.to_string().into_bytes()),
        };
        self.request(cmd::BIZ, &req, Op::Biz(op), now);
    }

    fn pull_page(&mut self, job: PullJob, before: u64, now: Instant) {
        let held = u32::try_from(job.got.len()).unwrap_or(u32::MAX);
        let limit = job.want.saturating_sub(held).min(PULL_PAGE_MAX);
        let req = backwards_pull(job.conv, before, limit);
        self.request(cmd::PULL, &req, Op::Pull(job), now);
    }

    fn read(&mut self, conv: Conv, up_to: u64, now: Instant) {
        let req = pb::ReadReq {
            conv_type: conv.conv_type(),
            conv_id: conv.id(),
            read_up_to: up_to,
        };
        self.request(cmd::READ, &req, Op::Read { conv, up_to }, now);
    }

    fn note_latest(&mut self, conv_type: u32, conv_id: u64, msg_id: u64) {
        let Some(conv) = Conv::from_wire(conv_type, conv_id) else {
            return;
        };
        let full = self.latest.len() >= LATEST_CAP;
        match self.latest.entry(conv) {
            Entry::Occupied(mut e) => {
                let latest = e.get_mut();
                *latest = (*latest).max(msg_id);
            }
            Entry::Vacant(e) if !full => {
                e.insert(msg_id);
            }
            Entry::Vacant(_) => {}
        }
    }

    fn start_quit(&mut self, now: Instant) {
        self.phase = Phase::Quitting {
            deadline: now + QUIT_GRACE,
        };
        self.advance_quit(now);
    }

    /// Quitting: once no answer but a PING's is awaited (or the grace is over), flush the ACKs
    /// and send LOGOUT.
    fn advance_quit(&mut self, now: Instant) {
        let Phase::Quitting { deadline } = self.phase else {
            return;
        };
        if self.exit.is_some() {
            return;
        }
        let waiting = self.pending.values().any(|p| !matches!(p.op, Op::Ping));
        if waiting && now < deadline {
            return;
        }
        self.flush_acks(now);
        self.phase = Phase::LoggingOut;
        self.request(cmd::LOGOUT, &(), Op::Logout, now);
    }

    fn flush_acks(&mut self, now: Instant) {
        self.acks.due = None;
        if self.acks.ids.is_empty() {
            return;
        }
        let ack = pb::Ack {
            msg_ids: std::mem::take(&mut self.acks.ids),
        };
        self.transmit
            .push_back(encode_frame(cmd::ACK, MsgType::Notify, 0, 0, &ack));
        self.last_transmit = now;
    }

    fn ack(&mut self, msg_id: u64, now: Instant) {
        self.acks.ids.push(msg_id);
        if self.acks.ids.len() >= ACK_BATCH_MAX {
            self.flush_acks(now);
        } else if self.acks.due.is_none() {
            self.acks.due = Some(now + ACK_DELAY);
        }
    }

    fn bad(&mut self, what: &str, frame: &Frame, why: &dyn std::fmt::Display) {
        let line = format!(
            "BAD {what} cmd={:#04x} seq={} message={}",
            frame.cmd,
            frame.seq,
            escape(&why.to_string())
        );
        self.print(line);
    }

    /// Decodes a body, reporting a failure as a `BAD` line.
    fn decode<M: Message + Default>(&mut self, what: &str, frame: &Frame) -> Option<M> {
        match decode_body::<M>(frame) {
            Ok(m) => Some(m),
            Err(e) => {
                self.bad(what, frame, &e);
                None
            }
        }
    }

    fn on_notify(&mut self, frame: &Frame, now: Instant) {
        match frame.cmd {
            cmd::PUSH => {
                let Some(msg) = self.decode::<pb::PushMsg>("undecodable PUSH", frame) else {
                    return;
                };
                self.ack(msg.msg_id, now);
                if self.seen.insert(msg.msg_id) {
                    self.note_latest(msg.conv_type, msg.conv_id, msg.msg_id);
                    self.print(fmt_msg("PUSH", &msg));
                }
            }
            cmd::NOTIFY => {
                let Some(notify) = self.decode::<pb::Notify>("undecodable NOTIFY", frame) else {
                    return;
                };
                for update in &notify.updates {
                    self.note_latest(update.conv_type, update.conv_id, update.latest_msg_id);
                    self.print(fmt_notify(update));
                }
            }
            cmd::READ_RECEIPT => {
                if let Some(r) = self.decode::<pb::ReadReceipt>("undecodable RECEIPT", frame) {
                    self.print(fmt_receipt(&r));
                }
            }
            cmd::KICK => {
                // Even an undecodable KICK ends the session: the gate closes after it.
                let kick = self
                    .decode::<pb::Kick>("undecodable KICK", frame)
                    .unwrap_or_default();
                self.print(fmt_kick(&kick));
                self.exit = Some(Exit::Kicked);
            }
            cmd::BIZ_PUSH => {
                if let Some(p) = self.decode::<pb::BizPush>("undecodable BIZ_PUSH", frame) {
                    self.print(fmt_biz_push(&p));
                }
            }
            cmd::ERROR => {
                if let Some(e) = self.decode::<pb::Error>("undecodable ERROR", frame) {
                    self.print(fmt_error(e.code, "notify", &e.message));
                }
            }
            // Unknown notify commands are how the protocol is extended: ignored.
            _ => {}
        }
    }

    fn on_response(&mut self, frame: &Frame, now: Instant) {
        let Some(Pending { op, .. }) = self.pending.remove(&frame.seq) else {
            self.bad("response to no request", frame, &"unknown seq");
            return;
        };
        if let Op::Sync { initial: true } = op {
            self.phase = Phase::Running;
        }
        if frame.cmd == cmd::ERROR {
            match decode_body::<pb::Error>(frame) {
                Ok(e) => self.print(fmt_error(e.code, op.name(), &e.message)),
                Err(e) => self.bad("undecodable ERROR", frame, &e),
            }
            if let Op::Logout = op {
                self.exit = Some(Exit::Quit);
            }
            return;
        }
        if frame.cmd != op.cmd() {
            let why = format!("answer to {} has the wrong command", op.name());
            self.bad("unexpected response", frame, &why);
            if let Op::Logout = op {
                self.exit = Some(Exit::Quit);
            }
            return;
        }
        match op {
            Op::Sync { .. } => self.on_sync(frame),
            Op::Send { conv } => self.on_sent(frame, conv),
            Op::Pull(job) => self.on_pull_page(frame, job, now),
            Op::ReadLookup { conv } => self.on_read_lookup(frame, conv, now),
            Op::Read { conv, up_to } => {
                if let Some(r) = self.decode::<pb::Result>("undecodable READ answer", frame) {
                    if r.code == 0 {
                        self.print(format!("READ conv={conv} read_up_to={up_to}"));
                    } else {
                        self.print(fmt_error(r.code, "read", &r.message));
                    }
                }
            }
            Op::Biz(biz) => self.on_biz(frame, &biz),
            Op::Ping => {}
            Op::Logout => {
                self.print("BYE".to_owned());
                self.exit = Some(Exit::Quit);
            }
        }
    }

    fn on_sync(&mut self, frame: &Frame) {
        let Some(resp) = self.decode::<pb::SyncResp>("undecodable SYNC answer", frame) else {
            return;
        };
        if resp.code != 0 {
            self.print(fmt_error(resp.code, "sync", ""));
            return;
        }
        for conv in &resp.convs {
            self.note_latest(conv.conv_type, conv.conv_id, conv.latest_msg_id);
            self.print(fmt_sync_conv(conv));
        }
        self.print(fmt_sync_total(&resp));
    }

    fn on_sent(&mut self, frame: &Frame, conv: Conv) {
        let Some(resp) = self.decode::<pb::SendResp>("undecodable SEND answer", frame) else {
            return;
        };
        if resp.code == 0 {
            self.note_latest(conv.conv_type(), conv.id(), resp.msg_id);
            self.print(format!("SENT msg_id={} conv={conv}", resp.msg_id));
        } else {
            self.print(fmt_error(resp.code, "send", &resp.message));
        }
    }

    fn on_pull_page(&mut self, frame: &Frame, mut job: PullJob, now: Instant) {
        let Some(resp) = self.decode::<pb::PullResp>("undecodable PULL answer", frame) else {
            return;
        };
        if resp.code != 0 {
            self.print(fmt_error(resp.code, "pull", ""));
            return;
        }
        let oldest = resp.msgs.iter().map(|m| m.msg_id).min();
        for msg in &resp.msgs {
            self.note_latest(msg.conv_type, msg.conv_id, msg.msg_id);
        }
        job.got.extend(resp.msgs);
        let want = job.want as usize;
        match oldest {
            Some(before) if resp.has_more && job.got.len() < want => {
                self.pull_page(job, before, now);
            }
            _ => self.finish_pull(job, resp.has_more),
        }
    }

    /// Prints a finished `/pull`: the newest `want` messages, oldest first, then a summary.
    fn finish_pull(&mut self, mut job: PullJob, gate_has_more: bool) {
        job.got.sort_by_key(|m| m.msg_id);
        job.got.dedup_by_key(|m| m.msg_id);
        let want = job.want as usize;
        let extra = job.got.len().saturating_sub(want);
        let has_more = gate_has_more || extra > 0;
        for msg in &job.got[extra..] {
            self.print(fmt_msg("PULL", msg));
        }
        let count = job.got.len() - extra;
        self.print(format!(
            "PULL done conv={} count={count} has_more={has_more}",
            job.conv
        ));
    }

    fn on_read_lookup(&mut self, frame: &Frame, conv: Conv, now: Instant) {
        let Some(resp) = self.decode::<pb::PullResp>("undecodable PULL answer", frame) else {
            return;
        };
        if resp.code != 0 {
            self.print(fmt_error(resp.code, "read", ""));
            return;
        }
        match resp.msgs.iter().map(|m| m.msg_id).max() {
            Some(latest) => {
                self.note_latest(conv.conv_type(), conv.id(), latest);
                self.read(conv, latest, now);
            }
            None => self.print(format!("READ conv={conv} nothing_to_read=true")),
        }
    }

    fn on_biz(&mut self, frame: &Frame, biz: &Biz) {
        let op = biz.op_name();
        let Some(resp) = self.decode::<pb::BizResp>("undecodable BIZ answer", frame) else {
            return;
        };
        if resp.code != 0 {
            self.print(fmt_error(resp.code, op, &resp.message));
            return;
        }
        let answer: Option<serde_json::Value> = serde_json::from_slice(&resp.payload).ok();
        let line = match biz {
            Biz::Create { name } => answer
                .as_ref()
                .and_then(|v| v.get("group_id"))
                .and_then(serde_json::Value::as_u64)
                .map(|id| format!("GROUP created id={id} name={}", escape_token(name))),
            Biz::Join(gid) => Some(format!("GROUP joined id={gid}")),
            Biz::Leave(gid) => Some(format!("GROUP left id={gid}")),
            Biz::Members(gid) => answer
                .as_ref()
                .and_then(|v| v.get("members"))
                .and_then(serde_json::Value::as_array)
                .and_then(|uids| uids.iter().map(serde_json::Value::as_u64).collect())
                .map(|uids: Vec<u64>| fmt_members(*gid, &uids)),
        };
        match line {
            Some(line) => self.print(line),
            None => {
                let why = format!(
                    "{op} answer payload is not the expected JSON: {}",
                    String::from_utf8_lossy(&resp.payload)
                );
                self.bad("unexpected BIZ answer", frame, &why);
            }
        }
    }

    fn expire(&mut self, seq: u32, op: Op) {
        let line = format!(
            "TIMEOUT op={} seq={seq} after_ms={}",
            op.name(),
            REQUEST_TIMEOUT.as_millis()
        );
        self.print(line);
        match op {
            Op::Sync { initial: true } => self.phase = Phase::Running,
            Op::Logout => self.exit = Some(Exit::Quit),
            _ => {}
        }
    }
}

fn backwards_pull(conv: Conv, before: u64, limit: u32) -> pb::PullReq {
    pb::PullReq {
        conv_type: conv.conv_type(),
        conv_id: conv.id(),
        after_msg_id: 0,
        limit,
        before_msg_id: before,
    }
}

// ---------------------------------------------------------------------------------------------
// The blocking shell.

/// What the stdin reader thread hands over.
#[derive(Debug)]
enum Input {
    Line(String),
    End,
    Failed(String),
}

/// Runs the client until it quits, is kicked or loses the connection; prints to stdout.
pub fn run(args: &Args) -> Exit {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    run_with(args, &mut out)
}

fn run_with(args: &Args, out: &mut impl Write) -> Exit {
    let mut client = match connect(&args.addr) {
        Ok(client) => client,
        Err(e) => {
            let line = format!(
                "CLOSED message=cannot connect to {}: {}",
                escape(&args.addr),
                escape(&e.to_string())
            );
            return print_exit(out, &line, Exit::Disconnected);
        }
    };
    let resp = match client.login(args.uid, &args.token, &args.device) {
        Ok(resp) => resp,
        Err(e) => {
            let line = format!("CLOSED message=login failed: {}", escape(&e.to_string()));
            return print_exit(out, &line, Exit::Disconnected);
        }
    };
    let line = fmt_login(args.uid, &args.device, &resp);
    if resp.code != 0 {
        return print_exit(out, &line, Exit::LoginRefused);
    }
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        return Exit::LocalIo;
    }
    let config = ChatConfig {
        max_frame: resp.max_frame,
        heartbeat_secs: resp.heartbeat_secs,
        first_seq: client.next_seq(),
        id_seed: random_seed(),
    };
    let mut chat = Chat::new(config, Instant::now());
    let input = match spawn_input() {
        Ok(input) => input,
        Err(e) => {
            let line = format!(
                "CLOSED message=cannot read stdin: {}",
                escape(&e.to_string())
            );
            return print_exit(out, &line, Exit::LocalIo);
        }
    };
    event_loop(&mut client, &mut chat, &input, out)
}

fn print_exit(out: &mut impl Write, line: &str, exit: Exit) -> Exit {
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    exit
}

/// Connects to the first address of `addr` that accepts.
fn connect(addr: &str) -> io::Result<Client> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for a in addrs {
        match Client::connect(a) {
            Ok(client) => return Ok(client),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A thread reading stdin lines into a bounded channel (it blocks when the loop falls behind).
fn spawn_input() -> io::Result<Receiver<Input>> {
    let (tx, rx) = sync_channel(INPUT_QUEUE);
    std::thread::Builder::new()
        .name("imgate-chat-stdin".into())
        .spawn(move || read_input(&tx))?;
    Ok(rx)
}

fn read_input(tx: &SyncSender<Input>) {
    let stdin = io::stdin();
    let mut lock = stdin.lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let input = match lock.read_until(b'\n', &mut buf) {
            Ok(0) => Input::End,
            Ok(_) => Input::Line(String::from_utf8_lossy(&buf).into_owned()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Input::Failed(e.to_string()),
        };
        let last = !matches!(input, Input::Line(_));
        if tx.send(input).is_err() || last {
            return;
        }
    }
}

fn event_loop(
    client: &mut Client,
    chat: &mut Chat,
    input: &Receiver<Input>,
    out: &mut impl Write,
) -> Exit {
    loop {
        while let Some(frame) = chat.poll_transmit() {
            if let Err(e) = client.send_raw(&frame) {
                drain_after_write_failure(client, chat, &e);
                break;
            }
        }
        while let Some(line) = chat.poll_output() {
            if writeln!(out, "{line}").is_err() {
                return Exit::LocalIo;
            }
        }
        if out.flush().is_err() {
            return Exit::LocalIo;
        }
        if let Some(exit) = chat.exit() {
            return exit;
        }
        let now = Instant::now();
        let wait = chat
            .poll_timeout()
            .map_or(TICK, |at| at.saturating_duration_since(now))
            .clamp(Duration::from_millis(1), TICK);
        match client.recv_frame(wait) {
            Ok(frame) => chat.handle_frame(frame, Instant::now()),
            Err(ClientError::Timeout) => {}
            Err(e) => chat.handle_closed(&e.to_string()),
        }
        for _ in 0..INPUT_BURST {
            if !chat.accepts_input() {
                break;
            }
            match input.try_recv() {
                Ok(Input::Line(line)) => chat.handle_line(&line, Instant::now()),
                Ok(Input::Failed(why)) => {
                    chat.print(format!("USAGE stdin failed, quitting: {}", escape(&why)));
                    chat.handle_input_end(Instant::now());
                }
                Ok(Input::End) | Err(TryRecvError::Disconnected) => {
                    chat.handle_input_end(Instant::now());
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        chat.handle_timeout(Instant::now());
    }
}

/// A write failed: read what the gate sent before it went (a KICK says why), then end.
fn drain_after_write_failure(client: &mut Client, chat: &mut Chat, e: &io::Error) {
    let deadline = Instant::now() + DRAIN_AFTER_WRITE_FAILURE;
    while chat.exit().is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match client.recv_frame(left) {
            Ok(frame) => chat.handle_frame(frame, Instant::now()),
            Err(_) => break,
        }
    }
    chat.handle_closed(&format!("write to the gate failed: {e}"));
}

#[cfg(test)]
mod tests {
    //! The parser and formatters as pure functions, and the core on virtual time: frames in,
    //! frames and lines out, no socket, thread or sleep.

    use bytes::BytesMut;
    use clap::Parser;

    use super::*;
    use crate::protocol::FrameDecoder;

    const UID: u64 = 1;

    fn config() -> ChatConfig {
        ChatConfig {
            max_frame: 1024,
            heartbeat_secs: 30,
            first_seq: 2,
            id_seed: 7,
        }
    }

    /// Every frame the core queued, decoded.
    fn sent(chat: &mut Chat) -> Vec<Frame> {
        let decoder = FrameDecoder::new(u32::MAX);
        let mut frames = Vec::new();
        while let Some(bytes) = chat.poll_transmit() {
            let mut buf = BytesMut::from(&bytes[..]);
            let frame = decoder.decode(&mut buf).expect("valid").expect("complete");
            assert!(buf.is_empty(), "one frame per transmit");
            frames.push(frame);
        }
        frames
    }

    fn lines(chat: &mut Chat) -> Vec<String> {
        std::iter::from_fn(|| chat.poll_output()).collect()
    }

    /// The only frame queued.
    fn one_sent(chat: &mut Chat) -> Frame {
        let frames = sent(chat);
        assert_eq!(frames.len(), 1, "expected one frame, got {frames:?}");
        frames.into_iter().next().expect("one")
    }

    fn response(req: &Frame, cmd: u8, body: &impl Message) -> Frame {
        Frame {
            cmd,
            msg_type: MsgType::Response,
            log_id: req.log_id,
            seq: req.seq,
            body: body.encode_to_vec().into(),
        }
    }

    fn notify(cmd: u8, body: &impl Message) -> Frame {
        Frame {
            cmd,
            msg_type: MsgType::Notify,
            log_id: 0,
            seq: 0,
            body: body.encode_to_vec().into(),
        }
    }

    fn text_msg(msg_id: u64, conv: Conv, from: u64, text: &str) -> pb::PushMsg {
        pb::PushMsg {
            msg_id,
            conv_type: conv.conv_type(),
            conv_id: conv.id(),
            from,
            to: UID,
            content_type: CONTENT_TEXT,
            body: Bytes::from(text.as_bytes().to_vec()),
            server_time_ms: 1_700_000_000_000,
            client_msg_id: 99,
        }
    }

    fn sync_ok() -> pb::SyncResp {
        pb::SyncResp::default()
    }

    /// A session at `t0` whose initial SYNC was answered with no conversations.
    fn running() -> (Chat, Instant) {
        let t0 = Instant::now();
        let mut chat = Chat::new(config(), t0);
        let sync = one_sent(&mut chat);
        chat.handle_frame(response(&sync, cmd::SYNC, &sync_ok()), t0);
        let _ = lines(&mut chat);
        assert!(chat.accepts_input());
        (chat, t0)
    }

    fn decoded<M: Message + Default>(frame: &Frame) -> M {
        decode_body(frame).expect("body decodes")
    }

    // --- parsing ------------------------------------------------------------------------------

    #[test]
    fn plain_lines_are_text_and_double_slash_sends_a_slash() {
        assert_eq!(
            parse_line("hello world\r\n"),
            Ok(Some(Command::Text("hello world".into())))
        );
        assert_eq!(
            parse_line("//quit is a word\n"),
            Ok(Some(Command::Text("/quit is a word".into())))
        );
        assert_eq!(parse_line("\n"), Ok(None));
        assert_eq!(parse_line("   \t\r\n"), Ok(None));
    }

    #[test]
    fn commands_parse_with_their_arguments() {
        assert_eq!(parse_line("/to 7\n"), Ok(Some(Command::To(7))));
        assert_eq!(parse_line("/group  9"), Ok(Some(Command::Group(9))));
        assert_eq!(parse_line("/join 9"), Ok(Some(Command::Join(9))));
        assert_eq!(parse_line("/leave 9"), Ok(Some(Command::Leave(9))));
        assert_eq!(parse_line("/members 9"), Ok(Some(Command::Members(9))));
        assert_eq!(parse_line("/sync"), Ok(Some(Command::Sync)));
        assert_eq!(parse_line("/read"), Ok(Some(Command::Read)));
        assert_eq!(parse_line("/help"), Ok(Some(Command::Help)));
        assert_eq!(parse_line("/quit\r\n"), Ok(Some(Command::Quit)));
        assert_eq!(parse_line("/pull"), Ok(Some(Command::Pull(DEFAULT_PULL))));
        assert_eq!(parse_line("/pull 5"), Ok(Some(Command::Pull(5))));
        assert_eq!(
            parse_line("/create team 2,3"),
            Ok(Some(Command::Create {
                name: "team".into(),
                members: vec![2, 3]
            }))
        );
        assert_eq!(
            parse_line("/create solo"),
            Ok(Some(Command::Create {
                name: "solo".into(),
                members: vec![]
            }))
        );
    }

    #[test]
    fn ids_must_be_non_zero_decimal_numbers() {
        for line in [
            "/to 0",
            "/to x",
            "/to -1",
            "/group 1.5",
            "/create t 2,0",
            "/create t 2,,3",
        ] {
            assert!(
                matches!(parse_line(line), Err(ParseError::BadId { .. })),
                "{line}: {:?}",
                parse_line(line)
            );
        }
    }

    #[test]
    fn wrong_argument_counts_and_unknown_commands_are_refused() {
        for line in [
            "/to",
            "/to 1 2",
            "/sync now",
            "/create",
            "/create a 2 3",
            "/quit 1",
        ] {
            assert!(
                matches!(parse_line(line), Err(ParseError::Usage(_))),
                "{line}: {:?}",
                parse_line(line)
            );
        }
        for line in ["/pull 0", "/pull 1001", "/pull x", "/pull 1 2"] {
            assert!(
                matches!(parse_line(line), Err(ParseError::Usage(_))),
                "{line}"
            );
        }
        assert_eq!(
            parse_line("/nope 1"),
            Err(ParseError::Unknown("/nope".into()))
        );
    }

    #[test]
    fn args_default_to_the_local_gate_dev_token_and_cli_device() {
        let args = Args::try_parse_from(["imgate-chat", "--uid", "7"]).expect("parses");
        assert_eq!(
            (
                args.addr.as_str(),
                args.uid,
                args.token.as_str(),
                args.device.as_str()
            ),
            ("127.0.0.1:7000", 7, "dev", "cli")
        );
        assert!(
            Args::try_parse_from(["imgate-chat"]).is_err(),
            "--uid is required"
        );
        let args = Args::try_parse_from([
            "imgate-chat",
            "--addr",
            "h:1",
            "--uid",
            "2",
            "--token",
            "t",
            "--device",
            "d",
        ])
        .expect("parses");
        assert_eq!((args.addr.as_str(), args.token.as_str()), ("h:1", "t"));
    }

    // --- formatting ---------------------------------------------------------------------------

    #[test]
    fn escape_keeps_one_event_on_one_line() {
        assert_eq!(escape("plain text, ünïcode"), "plain text, ünïcode");
        assert_eq!(escape("a\nb\r\tc\\d"), "a\\nb\\r\\tc\\\\d");
        assert_eq!(escape("bell\u{7}\u{2028}"), "bell\\u{7}\\u{2028}");
        assert_eq!(escape_token("my group"), "my\\u{20}group");
    }

    #[test]
    fn incoming_frames_have_stable_prefixes() {
        let msg = text_msg(42, Conv::Single(7), 7, "hi\nthere");
        assert_eq!(
            fmt_msg("PUSH", &msg),
            "PUSH msg_id=42 conv=single:7 from=7 text=hi\\nthere"
        );
        let image = pb::PushMsg {
            content_type: 2,
            body: Bytes::from_static(&[0xFF, 0, 1]),
            ..text_msg(43, Conv::Group(9), 3, "")
        };
        assert_eq!(
            fmt_msg("PULL", &image),
            "PULL msg_id=43 conv=group:9 from=3 content_type=2 bytes=3"
        );
        let bad_type = pb::PushMsg {
            conv_type: 3,
            ..text_msg(44, Conv::Single(7), 7, "x")
        };
        assert!(fmt_msg("PUSH", &bad_type).contains(" conv=type3:7 "));
        let update = pb::ConvUpdate {
            conv_type: 2,
            conv_id: 9,
            latest_msg_id: 50,
            unread: 4,
        };
        assert_eq!(
            fmt_notify(&update),
            "NOTIFY conv=group:9 latest=50 unread=4"
        );
        let receipt = pb::ReadReceipt {
            conv_type: 1,
            conv_id: 7,
            reader: 7,
            read_up_to: 42,
        };
        assert_eq!(
            fmt_receipt(&receipt),
            "RECEIPT conv=single:7 reader=7 read_up_to=42"
        );
        let kick = pb::Kick {
            reason: 1,
            message: "logged in elsewhere".into(),
            ..Default::default()
        };
        assert_eq!(fmt_kick(&kick), "KICK reason=1 message=logged in elsewhere");
        let draining = pb::Kick {
            reason: 2,
            message: "bye".into(),
            reconnect_to: vec!["a:1".into(), "b:2".into()],
            retry_after_ms: 250,
        };
        assert_eq!(
            fmt_kick(&draining),
            "KICK reason=2 reconnect_to=a:1,b:2 retry_after_ms=250 message=bye"
        );
        let biz = pb::BizPush {
            topic: "group.joined".into(),
            payload: Bytes::from_static(b"{\"group_id\":9}"),
        };
        assert_eq!(
            fmt_biz_push(&biz),
            "BIZ_PUSH topic=group.joined payload={\"group_id\":9}"
        );
    }

    #[test]
    fn answers_have_stable_prefixes() {
        let ok = pb::LoginResp {
            code: 0,
            heartbeat_secs: 30,
            server_time_ms: 5,
            session_id: 77,
            gate_id: "g1".into(),
            max_frame: 65_536,
            ..Default::default()
        };
        assert_eq!(
            fmt_login(1, "cli", &ok),
            "LOGIN ok uid=1 device=cli session_id=77 gate_id=g1 heartbeat_secs=30 max_frame=65536 server_time_ms=5"
        );
        let refused = pb::LoginResp {
            code: 1,
            message: "uid 0 is invalid".into(),
            ..Default::default()
        };
        assert_eq!(
            fmt_login(0, "cli", &refused),
            "LOGIN refused uid=0 code=1 message=uid 0 is invalid"
        );
        assert_eq!(
            fmt_error(5, "send", "backend down"),
            "ERROR code=5 op=send message=backend down"
        );
        assert_eq!(
            fmt_error(5, "pull", ""),
            "ERROR code=5 op=pull message=BACKEND_UNAVAILABLE"
        );
        let sync = pb::SyncResp {
            convs: vec![pb::ConvUpdate {
                conv_type: 1,
                conv_id: 2,
                latest_msg_id: 10,
                unread: 3,
            }],
            total_unread: 3,
            ..Default::default()
        };
        assert_eq!(
            fmt_sync_conv(&sync.convs[0]),
            "SYNC conv=single:2 latest=10 unread=3"
        );
        assert_eq!(
            fmt_sync_total(&sync),
            "SYNC total_unread=3 convs=1 has_more=false"
        );
        assert_eq!(fmt_members(9, &[1, 2]), "MEMBERS group=9 count=2 uids=1,2");
    }

    #[test]
    fn client_msg_ids_are_non_zero_and_distinct() {
        let mut ids = MsgIds::new(0);
        let all: HashSet<u64> = (0..10_000).map(|_| ids.next_id()).collect();
        assert_eq!(all.len(), 10_000);
        assert!(!all.contains(&0));
        assert_ne!(MsgIds::new(1).next_id(), MsgIds::new(2).next_id());
    }

    // --- the core -----------------------------------------------------------------------------

    #[test]
    fn initial_sync_is_sent_first_and_input_waits_for_its_answer() {
        let t0 = Instant::now();
        let mut chat = Chat::new(config(), t0);
        assert!(!chat.accepts_input());
        let req = one_sent(&mut chat);
        assert_eq!(
            (req.cmd, req.msg_type, req.seq, req.log_id),
            (cmd::SYNC, MsgType::Request, 2, log_id_for(2))
        );
        let resp = pb::SyncResp {
            convs: vec![pb::ConvUpdate {
                conv_type: 1,
                conv_id: 7,
                latest_msg_id: 40,
                unread: 2,
            }],
            total_unread: 2,
            has_more: false,
            code: 0,
        };
        chat.handle_frame(response(&req, cmd::SYNC, &resp), t0);
        assert_eq!(
            lines(&mut chat),
            [
                "SYNC conv=single:7 latest=40 unread=2",
                "SYNC total_unread=2 convs=1 has_more=false"
            ]
        );
        assert!(chat.accepts_input());
    }

    #[test]
    fn a_refused_initial_sync_still_lets_the_user_type() {
        let t0 = Instant::now();
        let mut chat = Chat::new(config(), t0);
        let req = one_sent(&mut chat);
        let refused = pb::SyncResp {
            code: 5,
            ..Default::default()
        };
        chat.handle_frame(response(&req, cmd::SYNC, &refused), t0);
        assert_eq!(
            lines(&mut chat),
            ["ERROR code=5 op=sync message=BACKEND_UNAVAILABLE"]
        );
        assert!(chat.accepts_input());
    }

    #[test]
    fn text_is_sent_to_the_current_conversation() {
        let (mut chat, t0) = running();
        chat.handle_line("hello\n", t0);
        assert_eq!(
            lines(&mut chat),
            ["USAGE no current chat: /to UID or /group GID first"]
        );
        assert!(sent(&mut chat).is_empty());

        chat.handle_line("/to 2\n", t0);
        chat.handle_line("hello\n", t0);
        chat.handle_line("/group 9\n", t0);
        chat.handle_line("hi all\n", t0);
        assert_eq!(
            lines(&mut chat),
            ["TARGET conv=single:2", "TARGET conv=group:9"]
        );
        let frames = sent(&mut chat);
        assert_eq!(frames.len(), 2);
        let single: pb::SendReq = decoded(&frames[0]);
        let group: pb::SendReq = decoded(&frames[1]);
        assert_eq!(frames[0].cmd, cmd::SEND);
        assert_eq!(
            (
                single.conv_type,
                single.to,
                single.content_type,
                &single.body[..]
            ),
            (1, 2, CONTENT_TEXT, &b"hello"[..])
        );
        assert_eq!(
            (group.conv_type, group.to, &group.body[..]),
            (2, 9, &b"hi all"[..])
        );
        assert_ne!(single.client_msg_id, 0);
        assert_ne!(single.client_msg_id, group.client_msg_id);
    }

    #[test]
    fn text_above_the_send_limit_is_refused_locally() {
        let (mut chat, t0) = running();
        chat.handle_line("/to 2", t0);
        let _ = lines(&mut chat);
        // max_frame 1024: bodies up to 896 bytes.
        chat.handle_line(&"x".repeat(897), t0);
        assert!(sent(&mut chat).is_empty());
        assert_eq!(
            lines(&mut chat),
            ["USAGE message of 897 bytes is above the limit of 896"]
        );
        chat.handle_line(&"x".repeat(896), t0);
        assert_eq!(one_sent(&mut chat).cmd, cmd::SEND);
    }

    #[test]
    fn pipelined_answers_are_matched_by_seq_in_any_order() {
        let (mut chat, t0) = running();
        chat.handle_line("/to 2", t0);
        chat.handle_line("one", t0);
        chat.handle_line("two", t0);
        let frames = sent(&mut chat);
        assert_ne!(frames[0].seq, frames[1].seq);
        let ok = pb::SendResp {
            code: 0,
            msg_id: 101,
            ..Default::default()
        };
        let refused = pb::SendResp {
            code: 5,
            message: "backend unavailable".into(),
            ..Default::default()
        };
        chat.handle_frame(response(&frames[1], cmd::SEND, &ok), t0);
        chat.handle_frame(response(&frames[0], cmd::SEND, &refused), t0);
        assert_eq!(
            lines(&mut chat),
            [
                "TARGET conv=single:2",
                "SENT msg_id=101 conv=single:2",
                "ERROR code=5 op=send message=backend unavailable"
            ]
        );
        // An ERROR frame answers a request too.
        chat.handle_line("three", t0);
        let req = one_sent(&mut chat);
        let error = pb::Error {
            code: 4,
            message: "slow down".into(),
        };
        chat.handle_frame(response(&req, cmd::ERROR, &error), t0);
        assert_eq!(lines(&mut chat), ["ERROR code=4 op=send message=slow down"]);
    }

    #[test]
    fn push_is_printed_once_and_every_copy_is_acked_after_the_delay() {
        let (mut chat, t0) = running();
        let push = notify(cmd::PUSH, &text_msg(42, Conv::Single(7), 7, "hello"));
        chat.handle_frame(push.clone(), t0);
        chat.handle_frame(push, t0 + Duration::from_millis(10));
        assert_eq!(
            lines(&mut chat),
            ["PUSH msg_id=42 conv=single:7 from=7 text=hello"]
        );
        assert!(sent(&mut chat).is_empty(), "the ACK waits for company");
        assert_eq!(chat.poll_timeout(), Some(t0 + ACK_DELAY));
        chat.handle_timeout(t0 + Duration::from_millis(49));
        assert!(sent(&mut chat).is_empty());
        chat.handle_timeout(t0 + ACK_DELAY);
        let ack = one_sent(&mut chat);
        assert_eq!(
            (ack.cmd, ack.msg_type, ack.seq),
            (cmd::ACK, MsgType::Notify, 0)
        );
        assert_eq!(decoded::<pb::Ack>(&ack).msg_ids, [42, 42]);
    }

    #[test]
    fn sixty_four_pushes_are_acked_at_once() {
        let (mut chat, t0) = running();
        for id in 1..=64u64 {
            let push = notify(cmd::PUSH, &text_msg(id, Conv::Group(9), 3, "m"));
            chat.handle_frame(push, t0);
        }
        let ack = one_sent(&mut chat);
        let ids: Vec<u64> = (1..=64).collect();
        assert_eq!(decoded::<pb::Ack>(&ack).msg_ids, ids);
        assert_eq!(lines(&mut chat).len(), 64);
        // Nothing left to flush.
        chat.handle_timeout(t0 + ACK_DELAY);
        assert!(sent(&mut chat).is_empty());
    }

    #[test]
    fn ping_goes_out_only_after_a_heartbeat_without_writes() {
        let (mut chat, t0) = running();
        let heartbeat = Duration::from_secs(30);
        assert_eq!(chat.poll_timeout(), Some(t0 + heartbeat));
        // Something written at t0 + 20 s pushes the heartbeat back.
        chat.handle_line("/sync", t0 + Duration::from_secs(20));
        let sync = one_sent(&mut chat);
        chat.handle_frame(
            response(&sync, cmd::SYNC, &sync_ok()),
            t0 + Duration::from_secs(20),
        );
        chat.handle_timeout(t0 + heartbeat);
        assert!(sent(&mut chat).is_empty());
        let due = t0 + Duration::from_secs(50);
        assert_eq!(chat.poll_timeout(), Some(due));
        chat.handle_timeout(due);
        let ping = one_sent(&mut chat);
        assert_eq!((ping.cmd, ping.msg_type), (cmd::PING, MsgType::Request));
        chat.handle_frame(response(&ping, cmd::PING, &()), due);
        assert_eq!(
            lines(&mut chat),
            ["SYNC total_unread=0 convs=0 has_more=false"],
            "a PONG prints nothing"
        );
    }

    #[test]
    fn pull_pages_backwards_from_the_end_and_prints_oldest_first() {
        let (mut chat, t0) = running();
        chat.handle_line("/to 7", t0);
        chat.handle_line("/pull 3", t0);
        let first = one_sent(&mut chat);
        let req: pb::PullReq = decoded(&first);
        assert_eq!(
            (req.conv_type, req.conv_id, req.before_msg_id, req.limit),
            (1, 7, u64::MAX, 3)
        );
        let page = pb::PullResp {
            code: 0,
            msgs: vec![
                text_msg(9, Conv::Single(7), 7, "nine"),
                text_msg(8, Conv::Single(7), UID, "eight"),
            ],
            has_more: true,
        };
        chat.handle_frame(response(&first, cmd::PULL, &page), t0);
        let second = one_sent(&mut chat);
        let req: pb::PullReq = decoded(&second);
        assert_eq!((req.before_msg_id, req.limit), (8, 1));
        let page = pb::PullResp {
            code: 0,
            msgs: vec![text_msg(5, Conv::Single(7), 7, "five")],
            has_more: true,
        };
        chat.handle_frame(response(&second, cmd::PULL, &page), t0);
        assert!(sent(&mut chat).is_empty());
        assert_eq!(
            lines(&mut chat),
            [
                "TARGET conv=single:7",
                "PULL msg_id=5 conv=single:7 from=7 text=five",
                "PULL msg_id=8 conv=single:7 from=1 text=eight",
                "PULL msg_id=9 conv=single:7 from=7 text=nine",
                "PULL done conv=single:7 count=3 has_more=true"
            ]
        );
    }

    #[test]
    fn pull_stops_at_the_start_of_the_conversation() {
        let (mut chat, t0) = running();
        chat.handle_line("/group 9", t0);
        chat.handle_line("/pull", t0);
        let req = one_sent(&mut chat);
        assert_eq!(decoded::<pb::PullReq>(&req).limit, DEFAULT_PULL);
        let empty = pb::PullResp::default();
        chat.handle_frame(response(&req, cmd::PULL, &empty), t0);
        assert_eq!(
            lines(&mut chat),
            [
                "TARGET conv=group:9",
                "PULL done conv=group:9 count=0 has_more=false"
            ]
        );
    }

    #[test]
    fn read_goes_up_to_the_latest_msg_id_known_and_receipts_are_printed() {
        let (mut chat, t0) = running();
        for id in [40, 42, 41] {
            chat.handle_frame(
                notify(cmd::PUSH, &text_msg(id, Conv::Single(7), 7, "m")),
                t0,
            );
        }
        chat.handle_line("/to 7", t0);
        chat.handle_line("/read", t0);
        let frames = sent(&mut chat);
        let read = frames
            .iter()
            .find(|f| f.cmd == cmd::READ)
            .expect("READ sent");
        let req: pb::ReadReq = decoded(read);
        assert_eq!((req.conv_type, req.conv_id, req.read_up_to), (1, 7, 42));
        let ok = pb::Result {
            code: 0,
            message: String::new(),
        };
        chat.handle_frame(response(read, cmd::READ, &ok), t0);
        let receipt = pb::ReadReceipt {
            conv_type: 1,
            conv_id: 7,
            reader: UID,
            read_up_to: 42,
        };
        chat.handle_frame(notify(cmd::READ_RECEIPT, &receipt), t0);
        let out = lines(&mut chat);
        assert_eq!(
            out[3..],
            [
                "TARGET conv=single:7",
                "READ conv=single:7 read_up_to=42",
                "RECEIPT conv=single:7 reader=1 read_up_to=42"
            ]
        );
    }

    #[test]
    fn read_of_a_conversation_never_seen_pulls_its_last_message_first() {
        let (mut chat, t0) = running();
        chat.handle_line("/group 9", t0);
        chat.handle_line("/read", t0);
        let lookup = one_sent(&mut chat);
        let req: pb::PullReq = decoded(&lookup);
        assert_eq!(
            (
                lookup.cmd,
                req.conv_type,
                req.conv_id,
                req.before_msg_id,
                req.limit
            ),
            (cmd::PULL, 2, 9, u64::MAX, 1)
        );
        let last = pb::PullResp {
            code: 0,
            msgs: vec![text_msg(77, Conv::Group(9), 3, "last")],
            has_more: true,
        };
        chat.handle_frame(response(&lookup, cmd::PULL, &last), t0);
        let read = one_sent(&mut chat);
        assert_eq!(read.cmd, cmd::READ);
        assert_eq!(decoded::<pb::ReadReq>(&read).read_up_to, 77);
        let refused = pb::Result {
            code: 3,
            message: "not a member".into(),
        };
        chat.handle_frame(response(&read, cmd::READ, &refused), t0);
        assert_eq!(
            lines(&mut chat),
            [
                "TARGET conv=group:9",
                "ERROR code=3 op=read message=not a member"
            ]
        );
        // An empty conversation has nothing to read.
        chat.handle_line("/to 5", t0);
        chat.handle_line("/read", t0);
        let lookup = one_sent(&mut chat);
        chat.handle_frame(response(&lookup, cmd::PULL, &pb::PullResp::default()), t0);
        assert!(sent(&mut chat).is_empty());
        assert_eq!(
            lines(&mut chat),
            [
                "TARGET conv=single:5",
                "READ conv=single:5 nothing_to_read=true"
            ]
        );
    }

    #[test]
    fn group_commands_are_biz_calls_with_json_payloads() {
        let (mut chat, t0) = running();
        chat.handle_line("/create team 2,3", t0);
        chat.handle_line("/join 9", t0);
        chat.handle_line("/leave 9", t0);
        chat.handle_line("/members 9", t0);
        let frames = sent(&mut chat);
        let reqs: Vec<pb::BizReq> = frames.iter().map(decoded).collect();
        let calls: Vec<(&str, &str, serde_json::Value)> = reqs
            .iter()
            .map(|r| {
                let payload = serde_json::from_slice(&r.payload).expect("JSON payload");
                (r.service.as_str(), r.method.as_str(), payload)
            })
            .collect();
        assert_eq!(
            calls,
            [
                (
                    "group",
                    "create",
                    serde_json::json!({"name": "team", "members": [2, 3]})
                ),
                ("group", "join", serde_json::json!({"group_id": 9})),
                ("group", "leave", serde_json::json!({"group_id": 9})),
                ("group", "members", serde_json::json!({"group_id": 9})),
            ]
        );
        let answer = |payload: &str| pb::BizResp {
            code: 0,
            payload: Bytes::from(payload.as_bytes().to_vec()),
            message: String::new(),
        };
        chat.handle_frame(
            response(&frames[0], cmd::BIZ, &answer(r#"{"group_id":9}"#)),
            t0,
        );
        chat.handle_frame(response(&frames[1], cmd::BIZ, &answer("{}")), t0);
        let refused = pb::BizResp {
            code: 11,
            message: "no such group".into(),
            ..Default::default()
        };
        chat.handle_frame(response(&frames[2], cmd::BIZ, &refused), t0);
        let members = answer(r#"{"members":[1,2,3]}"#);
        chat.handle_frame(response(&frames[3], cmd::BIZ, &members), t0);
        assert_eq!(
            lines(&mut chat),
            [
                "GROUP created id=9 name=team",
                "GROUP joined id=9",
                "ERROR code=11 op=group.leave message=no such group",
                "MEMBERS group=9 count=3 uids=1,2,3"
            ]
        );
    }

    #[test]
    fn notify_updates_are_printed_one_per_line() {
        let (mut chat, t0) = running();
        let n = pb::Notify {
            updates: vec![
                pb::ConvUpdate {
                    conv_type: 2,
                    conv_id: 9,
                    latest_msg_id: 50,
                    unread: 4,
                },
                pb::ConvUpdate {
                    conv_type: 1,
                    conv_id: 7,
                    latest_msg_id: 51,
                    unread: 1,
                },
            ],
        };
        chat.handle_frame(notify(cmd::NOTIFY, &n), t0);
        let push = pb::BizPush {
            topic: "t".into(),
            payload: Bytes::new(),
        };
        chat.handle_frame(notify(cmd::BIZ_PUSH, &push), t0);
        assert_eq!(
            lines(&mut chat),
            [
                "NOTIFY conv=group:9 latest=50 unread=4",
                "NOTIFY conv=single:7 latest=51 unread=1",
                "BIZ_PUSH topic=t payload="
            ]
        );
        // NOTIFY taught /read where the group ends.
        chat.handle_line("/group 9", t0);
        chat.handle_line("/read", t0);
        assert_eq!(decoded::<pb::ReadReq>(&one_sent(&mut chat)).read_up_to, 50);
    }

    #[test]
    fn kick_ends_the_session_with_a_non_zero_exit() {
        let (mut chat, t0) = running();
        let kick = pb::Kick {
            reason: 1,
            message: "duplicate login".into(),
            ..Default::default()
        };
        chat.handle_frame(notify(cmd::KICK, &kick), t0);
        assert_eq!(lines(&mut chat), ["KICK reason=1 message=duplicate login"]);
        assert_eq!(chat.exit(), Some(Exit::Kicked));
        assert_ne!(Exit::Kicked.code(), 0);
        assert!(!chat.accepts_input());
        assert_eq!(chat.poll_timeout(), None);
    }

    #[test]
    fn bad_frames_from_the_gate_are_reported_and_change_nothing() {
        let (mut chat, t0) = running();
        let stray = Frame {
            cmd: cmd::SEND,
            msg_type: MsgType::Response,
            log_id: 0,
            seq: 999,
            body: Bytes::new(),
        };
        chat.handle_frame(stray, t0);
        let garbage = Frame {
            cmd: cmd::PUSH,
            msg_type: MsgType::Notify,
            log_id: 0,
            seq: 0,
            body: Bytes::from_static(&[0xFF, 0xFF, 0xFF]),
        };
        chat.handle_frame(garbage, t0);
        chat.handle_frame(notify(0x55, &()), t0);
        chat.handle_line("/to 2", t0);
        chat.handle_line("hi", t0);
        let send = one_sent(&mut chat);
        chat.handle_frame(response(&send, cmd::PULL, &pb::PullResp::default()), t0);
        chat.handle_line("/create g 2", t0);
        let create = one_sent(&mut chat);
        let odd = pb::BizResp {
            code: 0,
            payload: Bytes::from_static(b"not json"),
            message: String::new(),
        };
        chat.handle_frame(response(&create, cmd::BIZ, &odd), t0);
        let out = lines(&mut chat);
        assert_eq!(out.len(), 5, "{out:?}");
        assert!(
            out[0].starts_with("BAD response to no request cmd=0x10 seq=999"),
            "{out:?}"
        );
        assert!(
            out[1].starts_with("BAD undecodable PUSH cmd=0x11 seq=0"),
            "{out:?}"
        );
        assert_eq!(out[2], "TARGET conv=single:2");
        assert!(
            out[3].starts_with("BAD unexpected response cmd=0x14"),
            "{out:?}"
        );
        assert!(
            out[4].starts_with("BAD unexpected BIZ answer cmd=0x20"),
            "{out:?}"
        );
        assert_eq!(chat.exit(), None);
        assert!(chat.accepts_input());
    }

    #[test]
    fn unanswered_request_times_out_and_is_forgotten() {
        let (mut chat, t0) = running();
        chat.handle_line("/sync", t0);
        let req = one_sent(&mut chat);
        assert_eq!(chat.poll_timeout(), Some(t0 + REQUEST_TIMEOUT));
        chat.handle_timeout(t0 + REQUEST_TIMEOUT);
        assert_eq!(
            lines(&mut chat),
            [format!("TIMEOUT op=sync seq={} after_ms=10000", req.seq)]
        );
        // A late answer is now a stray.
        chat.handle_frame(response(&req, cmd::SYNC, &sync_ok()), t0 + REQUEST_TIMEOUT);
        assert!(lines(&mut chat)[0].starts_with("BAD response to no request"));
    }

    #[test]
    fn quit_waits_for_answers_then_acks_logs_out_and_exits_zero() {
        let (mut chat, t0) = running();
        chat.handle_line("/to 2", t0);
        chat.handle_line("last words", t0);
        let send = one_sent(&mut chat);
        chat.handle_frame(notify(cmd::PUSH, &text_msg(5, Conv::Single(2), 2, "x")), t0);
        chat.handle_input_end(t0);
        assert!(!chat.accepts_input());
        assert!(
            sent(&mut chat).is_empty(),
            "LOGOUT waits for the SEND's answer"
        );
        chat.handle_line("ignored once quitting", t0);
        let ok = pb::SendResp {
            code: 0,
            msg_id: 6,
            ..Default::default()
        };
        chat.handle_frame(response(&send, cmd::SEND, &ok), t0);
        let frames = sent(&mut chat);
        let cmds: Vec<u8> = frames.iter().map(|f| f.cmd).collect();
        assert_eq!(cmds, [cmd::ACK, cmd::LOGOUT]);
        chat.handle_frame(response(&frames[1], cmd::LOGOUT, &()), t0);
        assert_eq!(chat.exit(), Some(Exit::Quit));
        assert_eq!(Exit::Quit.code(), 0);
        assert_eq!(
            lines(&mut chat),
            [
                "TARGET conv=single:2",
                "PUSH msg_id=5 conv=single:2 from=2 text=x",
                "SENT msg_id=6 conv=single:2",
                "BYE"
            ]
        );
    }

    #[test]
    fn quit_gives_up_waiting_after_the_grace() {
        let (mut chat, t0) = running();
        chat.handle_line("/sync", t0);
        let _ = sent(&mut chat);
        chat.handle_line("/quit", t0);
        assert!(sent(&mut chat).is_empty());
        assert_eq!(chat.poll_timeout(), Some(t0 + QUIT_GRACE));
        chat.handle_timeout(t0 + QUIT_GRACE);
        assert_eq!(one_sent(&mut chat).cmd, cmd::LOGOUT);
        // The gate closes after LOGOUT: that is the expected end.
        chat.handle_closed("the gate closed the connection");
        assert_eq!(chat.exit(), Some(Exit::Quit));
    }

    #[test]
    fn a_close_before_quitting_is_a_disconnect() {
        let (mut chat, _) = running();
        chat.handle_closed("the gate closed the connection");
        assert_eq!(chat.exit(), Some(Exit::Disconnected));
        assert_eq!(
            lines(&mut chat),
            ["CLOSED message=the gate closed the connection"]
        );
        assert_ne!(Exit::Disconnected.code(), 0);
    }

    #[test]
    fn help_lists_every_command() {
        let (mut chat, t0) = running();
        chat.handle_line("/help", t0);
        let out = lines(&mut chat).join("\n");
        for command in [
            "/to", "/group", "/create", "/join", "/leave", "/members", "/sync", "/pull", "/read",
            "/quit",
        ] {
            assert!(out.contains(command), "{command} missing from {out}");
        }
    }
}
