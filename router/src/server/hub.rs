//! The link server's core, sans-IO: which links are up, the route table uid → (gate, shard,
//! device, session) built from presence, and the translation between link messages and a
//! [`Service`] (the reference IM logic, or an embedding backend's own).
//!
//! Owns: the links (one per gate shard; a new link for the same (gate_id, shard) replaces the
//! old one and forgets its routes), the gates' names (each gets a small index), and the routes.
//! Invariants: every route names a link that is up; (uid, device_id) has at most one route;
//! the service only ever sees router-wide session ids ([`global_session`]), so sessions of two
//! gates never collide, and downlink carries a gate's own ids back only to that gate.
//!
//! Driven by the shell: [`Hub::open`] after a good Hello, [`Hub::input`] per received message,
//! [`Hub::close`] when a link ends; what to send is drained with [`Hub::drain`]. Time is an
//! argument (`now_ms`, for the IM logic). Never touches IO.

use std::collections::{BTreeMap, HashMap};

use super::service::Service;
use crate::im::{Origin, Output, Reply, Request};
use crate::link::handshake::{CAP_BIZ_PUSH, CAPABILITIES, Refusal, RefuseCode};
use crate::link::link_msg::Body;
use crate::link::{self, Hello, LinkMsg};

/// A link, as the hub names it: never reused while the hub lives.
pub type LinkId = u32;

/// `Origin::shard` of requests made by the router itself (the HTTP API): their answers come back
/// as [`Out::Local`].
pub const LOCAL_ORIGIN: u32 = u32::MAX;

/// Low bits of a router-wide session id that hold the gate's own session id.
const SESSION_BITS: u32 = 48;
const SESSION_MASK: u64 = (1 << SESSION_BITS) - 1;
/// Distinct gate ids the hub tells apart (the high 16 bits of a router-wide session id).
pub const MAX_GATES: usize = (1 << (64 - SESSION_BITS)) - 1;

/// The router-wide id of `session` on gate index `gate`: `(gate + 1) << 48 | session`. Gates
/// number their sessions far below 2^48 (a per-shard counter shifted by 10 bits); 0 stays 0.
pub fn global_session(gate: u32, session: u64) -> u64 {
    if session == 0 {
        return 0;
    }
    (u64::from(gate) + 1) << SESSION_BITS | (session & SESSION_MASK)
}

/// The gate index and the gate's own id of a router-wide session id (`None` for 0).
pub fn local_session(global: u64) -> Option<(u32, u64)> {
    let gate = global >> SESSION_BITS;
    (gate != 0).then(|| ((gate - 1) as u32, global & SESSION_MASK))
}

/// Something for the shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// Queue `msg` on `link`.
    Link(LinkId, LinkMsg),
    /// The answer to a request the router made itself (`Origin::shard == LOCAL_ORIGIN`).
    Local { origin: Origin, reply: Reply },
    /// End this link (it was replaced by a newer one of the same gate shard).
    Close(LinkId),
}

/// A peer broke the link protocol after the handshake; the shell closes that link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("unexpected {0} from a gate")]
    Unexpected(&'static str),
    #[error("a request without a request_id")]
    NoRequestId,
    #[error("a message without a body")]
    Empty,
}

/// One online session, as the route table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub link: LinkId,
    pub gate: u32,
    pub shard: u32,
    pub device_id: Box<str>,
    /// The gate's own session id.
    pub session_id: u64,
    pub since_ms: u64,
}

#[derive(Debug, Clone)]
struct LinkEntry {
    gate: u32,
    shard: u32,
    /// The capability bits in force on this link (the Hello's, within [`CAPABILITIES`]).
    capabilities: u64,
}

/// A message the router stores itself (HTTP `POST /push`) and PUSHes to `recipients` rather
/// than to the conversation's members: the SEND it was submitted as, until its answer.
#[derive(Debug, Clone)]
struct LocalPush {
    /// `Origin::conn` of the submitted SEND.
    conn: u64,
    send: link::Send,
    recipients: Vec<u64>,
}

/// Counters, for logs and the HTTP API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    pub links: usize,
    pub online_users: usize,
    pub sessions: usize,
    pub duplicate_kicks: u64,
}

/// The route table and link bookkeeping around a [`Service`].
pub struct Hub<S> {
    service: S,
    gate_names: Vec<String>,
    gate_index: HashMap<String, u32>,
    links: HashMap<LinkId, LinkEntry>,
    current: HashMap<(u32, u32), LinkId>,
    next_link: LinkId,
    routes: HashMap<u64, Vec<Route>>,
    duplicate_kicks: u64,
    /// Routes held (online sessions over all gates).
    sessions: usize,
    /// Local pushes waiting for their answer (few: one per HTTP request in flight).
    local_pushes: Vec<LocalPush>,
    scratch: Vec<Output>,
    out: Vec<Out>,
}

impl<S: Service> Hub<S> {
    pub fn new(service: S) -> Self {
        Self {
            service,
            gate_names: Vec::new(),
            gate_index: HashMap::new(),
            links: HashMap::new(),
            current: HashMap::new(),
            next_link: 1,
            routes: HashMap::new(),
            duplicate_kicks: 0,
            sessions: 0,
            local_pushes: Vec::new(),
            scratch: Vec::new(),
            out: Vec::new(),
        }
    }

    pub fn service(&self) -> &S {
        &self.service
    }

    pub fn service_mut(&mut self) -> &mut S {
        &mut self.service
    }

    /// What the shell must do, in order.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Out> {
        self.out.drain(..)
    }

    pub fn stats(&self) -> HubStats {
        HubStats {
            links: self.links.len(),
            online_users: self.routes.len(),
            sessions: self.sessions,
            duplicate_kicks: self.duplicate_kicks,
        }
    }

    /// The name of gate index `gate`.
    pub fn gate_name(&self, gate: u32) -> Option<&str> {
        self.gate_names.get(gate as usize).map(String::as_str)
    }

    /// A link whose Hello was accepted (`link::handshake::accept_hello`). A previous link of the
    /// same (gate_id, shard) is closed ([`Out::Close`]) and its routes forgotten: the gate
    /// re-announces its sessions on the new one.
    pub fn open(&mut self, hello: &Hello, now_ms: u64) -> Result<LinkId, Refusal> {
        let gate = match self.gate_index.get(&hello.gate_id) {
            Some(&g) => g,
            None if self.gate_names.len() >= MAX_GATES => {
                return Err(Refusal {
                    code: RefuseCode::BadHello,
                    reason: format!("more than {MAX_GATES} distinct gate ids"),
                });
            }
            None => {
                let g = self.gate_names.len() as u32;
                self.gate_names.push(hello.gate_id.clone());
                self.gate_index.insert(hello.gate_id.clone(), g);
                g
            }
        };
        let link = self.next_link;
        self.next_link = self.next_link.wrapping_add(1).max(1);
        if let Some(old) = self.current.insert((gate, hello.shard), link) {
            tracing::info!(gate = %hello.gate_id, shard = hello.shard, "a newer link replaces this gate shard's link");
            self.forget(old, now_ms);
            self.out.push(Out::Close(old));
        }
        self.links.insert(
            link,
            LinkEntry {
                gate,
                shard: hello.shard,
                capabilities: hello.capabilities & CAPABILITIES,
            },
        );
        Ok(link)
    }

    /// A link ended: its sessions are offline as far as the router knows.
    pub fn close(&mut self, link: LinkId, now_ms: u64) {
        if let Some(entry) = self.links.get(&link)
            && self.current.get(&(entry.gate, entry.shard)) == Some(&link)
        {
            self.current.remove(&(entry.gate, entry.shard));
        }
        self.forget(link, now_ms);
    }

    fn forget(&mut self, link: LinkId, now_ms: u64) {
        let Some(entry) = self.links.remove(&link) else {
            return;
        };
        let mut gone = Vec::new();
        self.routes.retain(|&uid, routes| {
            routes.retain(|r| {
                let keep = r.link != link;
                if !keep {
                    gone.push((uid, r.device_id.clone(), r.session_id));
                }
                keep
            });
            !routes.is_empty()
        });
        self.sessions -= gone.len();
        for (uid, device_id, session_id) in gone {
            let presence = link::Presence {
                uid,
                device_id: device_id.into(),
                session_id: global_session(entry.gate, session_id),
                online: false,
                ..Default::default()
            };
            self.service.presence(presence, now_ms, &mut self.scratch);
        }
        self.dispatch();
    }

    /// One message received on `link`. `Err`: the gate broke the protocol; close the link.
    pub fn input(&mut self, link: LinkId, msg: LinkMsg, now_ms: u64) -> Result<(), HubError> {
        let Some(entry) = self.links.get(&link).cloned() else {
            return Ok(()); // A replaced link's last bytes.
        };
        let body = msg.body.ok_or(HubError::Empty)?;
        let body = match Request::from_body(body) {
            Ok(mut request) => {
                if msg.request_id == 0 {
                    return Err(HubError::NoRequestId);
                }
                match &mut request {
                    Request::Send(s) => s.session_id = global_session(entry.gate, s.session_id),
                    Request::Read(r) => r.session_id = global_session(entry.gate, r.session_id),
                    _ => {}
                }
                let origin = Origin {
                    shard: link,
                    conn: msg.request_id,
                    seq: 0,
                    log_id: request.log_id(),
                };
                self.service
                    .request(origin, request, now_ms, &mut self.scratch);
                self.dispatch();
                return Ok(());
            }
            Err(body) => body,
        };
        match body {
            Body::Heartbeat(_) => {}
            Body::Presence(p) => self.presence(link, &entry, p, now_ms),
            Body::Reports(batch) => {
                for mut report in batch.reports {
                    report.session_id = global_session(entry.gate, report.session_id);
                    self.service.report(report, now_ms, &mut self.scratch);
                }
                self.dispatch();
            }
            Body::Hello(_) => return Err(HubError::Unexpected("second Hello")),
            Body::Welcome(_) | Body::Refused(_) => {
                return Err(HubError::Unexpected("handshake answer"));
            }
            Body::LoginResult(_)
            | Body::SendResult(_)
            | Body::PullResult(_)
            | Body::ReadResult(_)
            | Body::SyncResult(_)
            | Body::BizResult(_) => return Err(HubError::Unexpected("answer")),
            Body::Deliver(_)
            | Body::Notify(_)
            | Body::ReadReceipt(_)
            | Body::Kick(_)
            | Body::BizPush(_) => {
                return Err(HubError::Unexpected("downlink"));
            }
            // Requests were taken above.
            Body::Login(_)
            | Body::Send(_)
            | Body::Pull(_)
            | Body::Read(_)
            | Body::Sync(_)
            | Body::Biz(_) => {}
        }
        Ok(())
    }

    fn presence(&mut self, link: LinkId, entry: &LinkEntry, p: link::Presence, now_ms: u64) {
        let routes = self.routes.entry(p.uid).or_default();
        let mut offline = Vec::new();
        if !p.online {
            routes.retain(|r| {
                let keep = !(r.gate == entry.gate && r.session_id == p.session_id);
                if !keep {
                    offline.push((r.gate, r.session_id));
                }
                keep
            });
        } else {
            let mut admit = true;
            if let Some(i) = routes.iter().position(|r| *r.device_id == *p.device_id) {
                let old = &routes[i];
                if old.gate == entry.gate {
                    // The gate displaced it itself (its own KICK 1); it sends no offline for it.
                    offline.push((old.gate, old.session_id));
                    routes.swap_remove(i);
                } else if old.since_ms <= p.since_ms {
                    // The older session, on another gate, gets KICK 1.
                    self.out.push(Out::Link(old.link, kick(p.uid, old, 1)));
                    offline.push((old.gate, old.session_id));
                    routes.swap_remove(i);
                    self.duplicate_kicks += 1;
                } else {
                    // The announced session is the older one (a resync after a login elsewhere).
                    let new = Route {
                        link,
                        gate: entry.gate,
                        shard: entry.shard,
                        device_id: p.device_id.as_str().into(),
                        session_id: p.session_id,
                        since_ms: p.since_ms,
                    };
                    self.out.push(Out::Link(link, kick(p.uid, &new, 1)));
                    self.duplicate_kicks += 1;
                    admit = false;
                }
            }
            if admit {
                self.sessions += 1;
                routes.push(Route {
                    link,
                    gate: entry.gate,
                    shard: entry.shard,
                    device_id: p.device_id.as_str().into(),
                    session_id: p.session_id,
                    since_ms: p.since_ms,
                });
                let mut online = p.clone();
                online.session_id = global_session(entry.gate, p.session_id);
                self.service.presence(online, now_ms, &mut self.scratch);
            }
        }
        if routes.is_empty() {
            self.routes.remove(&p.uid);
        }
        self.sessions -= offline.len();
        for (gate, session_id) in offline {
            let gone = link::Presence {
                uid: p.uid,
                device_id: p.device_id.clone(),
                session_id: global_session(gate, session_id),
                online: false,
                ..Default::default()
            };
            self.service.presence(gone, now_ms, &mut self.scratch);
        }
        self.dispatch();
    }

    /// A request from the router itself (`origin.shard` must be [`LOCAL_ORIGIN`]); its answer
    /// comes back as [`Out::Local`].
    pub fn submit_local(&mut self, origin: Origin, request: Request, now_ms: u64) {
        self.service
            .request(origin, request, now_ms, &mut self.scratch);
        self.dispatch();
    }

    /// A message from the router itself (HTTP `POST /push`), stored like a SEND (`send`, with
    /// `origin.shard` = [`LOCAL_ORIGIN`]) and PUSHed to `recipients` instead of the
    /// conversation's members. The service's own `Deliver` of it (matched by `from` and
    /// `client_msg_id`, emitted before its answer as the reference logic does) is dropped; when
    /// the answer is OK, a `Deliver` to `recipients` goes out in its place with the stored
    /// `msg_id` (same [`Hub::drain`]), and the answer comes back as [`Out::Local`]. The store's other effects (history
    /// for PULL, unread counts for SYNC) are the SEND's.
    pub fn submit_push(
        &mut self,
        origin: Origin,
        send: link::Send,
        recipients: Vec<u64>,
        now_ms: u64,
    ) {
        self.local_pushes.push(LocalPush {
            conn: origin.conn,
            send: send.clone(),
            recipients,
        });
        self.service
            .request(origin, Request::Send(send), now_ms, &mut self.scratch);
        self.dispatch();
    }

    /// Forgets a local push whose answer is no longer awaited (its HTTP request timed out).
    pub fn cancel_push(&mut self, conn: u64) {
        self.local_pushes.retain(|p| p.conn != conn);
    }

    /// BIZ_PUSH `topic` and `payload` to every session of `recipients` (not stored). Goes only
    /// to links that granted [`CAP_BIZ_PUSH`]; returns (links sent to, links skipped for lack
    /// of it).
    pub fn biz_push(&mut self, push: link::BizPushUsers) -> (usize, usize) {
        let (mut sent, mut skipped) = (0, 0);
        for (link, recipients) in self.split(&push.recipients) {
            let capable = self
                .links
                .get(&link)
                .is_some_and(|e| e.capabilities & CAP_BIZ_PUSH != 0);
            if !capable {
                skipped += 1;
                continue;
            }
            sent += 1;
            let part = link::BizPushUsers {
                topic: push.topic.clone(),
                payload: push.payload.clone(),
                recipients,
            };
            self.out
                .push(Out::Link(link, LinkMsg::event(Body::BizPush(part))));
        }
        (sent, skipped)
    }

    /// Outputs a [`Service`] produced outside a call of the hub (an asynchronous backend).
    pub fn emit(&mut self, outputs: impl IntoIterator<Item = Output>) {
        self.scratch.extend(outputs);
        self.dispatch();
    }

    /// Kicks `uid`'s sessions (only `device_id`'s when not empty) with `reason`; returns how many
    /// sessions were asked to leave.
    pub fn kick(&mut self, uid: u64, device_id: &str, reason: u32, message: &str) -> usize {
        self.scratch.push(Output::Kick(link::KickUser {
            uid,
            device_id: device_id.into(),
            reason,
            message: message.into(),
            session_id: 0,
        }));
        let before = self.out.len();
        self.dispatch();
        self.out.len() - before
    }

    /// `uid`'s online sessions.
    pub fn routes(&self, uid: u64) -> &[Route] {
        self.routes.get(&uid).map(Vec::as_slice).unwrap_or_default()
    }

    /// Sends what the service emitted to the links that hold the recipients: one message per
    /// link, naming only that link's users.
    fn dispatch(&mut self) {
        while !self.scratch.is_empty() {
            let outputs = std::mem::take(&mut self.scratch);
            self.dispatch_once(outputs);
        }
    }

    fn dispatch_once(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Deliver(d)
                    if d.msg.as_ref().is_some_and(|m| {
                        self.local_pushes.iter().any(|p| {
                            p.send.from == m.from && p.send.client_msg_id == m.client_msg_id
                        })
                    }) =>
                {
                    // A local push's conversation fan-out: replaced by its own recipients.
                }
                Output::Reply { origin, reply } => {
                    if origin.shard == LOCAL_ORIGIN {
                        if let Some(i) =
                            self.local_pushes.iter().position(|p| p.conn == origin.conn)
                        {
                            let push = self.local_pushes.swap_remove(i);
                            if let Reply::Send(r) = &reply
                                && r.code == crate::code::OK
                            {
                                let s = push.send;
                                self.scratch.push(Output::Deliver(link::Deliver {
                                    msg: Some(link::Msg {
                                        msg_id: r.msg_id,
                                        conv_type: s.conv_type,
                                        from: s.from,
                                        to: s.to,
                                        content_type: s.content_type,
                                        body: s.body,
                                        server_time_ms: r.server_time_ms,
                                        client_msg_id: s.client_msg_id,
                                    }),
                                    recipients: push.recipients,
                                    exclude_session: 0,
                                }));
                            }
                        }
                        self.out.push(Out::Local { origin, reply });
                    } else if self.links.contains_key(&origin.shard) {
                        let msg = LinkMsg::request(origin.conn, reply.into_body());
                        self.out.push(Out::Link(origin.shard, msg));
                    }
                }
                Output::Deliver(d) => {
                    for (link, recipients) in self.split(&d.recipients) {
                        let part = link::Deliver {
                            msg: d.msg.clone(),
                            recipients,
                            exclude_session: self.local_to(link, d.exclude_session),
                        };
                        self.out
                            .push(Out::Link(link, LinkMsg::event(Body::Deliver(part))));
                    }
                }
                Output::ReadReceipt(r) => {
                    for (link, recipients) in self.split(&r.recipients) {
                        let part = link::ReadReceiptOut {
                            recipients,
                            exclude_session: self.local_to(link, r.exclude_session),
                            ..r.clone()
                        };
                        self.out
                            .push(Out::Link(link, LinkMsg::event(Body::ReadReceipt(part))));
                    }
                }
                Output::Notify(n) => {
                    let mut by_link: BTreeMap<LinkId, Vec<link::UserConv>> = BTreeMap::new();
                    for update in n.updates {
                        let mut last = None;
                        for route in self.routes(update.uid) {
                            if last != Some(route.link) {
                                by_link.entry(route.link).or_default().push(update);
                                last = Some(route.link);
                            }
                        }
                    }
                    for (link, updates) in by_link {
                        let part = link::NotifyUsers {
                            updates,
                            exclude_session: self.local_to(link, n.exclude_session),
                        };
                        self.out
                            .push(Out::Link(link, LinkMsg::event(Body::Notify(part))));
                    }
                }
                Output::Kick(k) => {
                    let only = local_session(k.session_id);
                    let routes = self
                        .routes
                        .get(&k.uid)
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    for route in routes {
                        let device_ok = k.device_id.is_empty() || *route.device_id == *k.device_id;
                        let session_ok =
                            only.is_none_or(|(g, s)| g == route.gate && s == route.session_id);
                        if device_ok && session_ok {
                            let mut msg = kick(k.uid, route, k.reason);
                            if let Some(Body::Kick(kick)) = &mut msg.body {
                                kick.message = k.message.clone();
                            }
                            self.out.push(Out::Link(route.link, msg));
                        }
                    }
                }
                Output::ToPartition { .. } => {
                    tracing::error!("a service emitted a partition hop; it must run it itself");
                }
            }
        }
    }

    /// `uids` grouped by the links that hold their sessions (a user with devices on two gates
    /// is named on both links, once each).
    fn split(&self, uids: &[u64]) -> BTreeMap<LinkId, Vec<u64>> {
        let mut by_link: BTreeMap<LinkId, Vec<u64>> = BTreeMap::new();
        for &uid in uids {
            for route in self.routes(uid) {
                let list = by_link.entry(route.link).or_default();
                if list.last() != Some(&uid) {
                    list.push(uid);
                }
            }
        }
        by_link
    }

    /// A router-wide session id as `link`'s gate knows it; 0 when it is another gate's.
    fn local_to(&self, link: LinkId, global: u64) -> u64 {
        match (local_session(global), self.links.get(&link)) {
            (Some((gate, session)), Some(entry)) if gate == entry.gate => session,
            _ => 0,
        }
    }
}

fn kick(uid: u64, route: &Route, reason: u32) -> LinkMsg {
    LinkMsg::event(Body::Kick(link::KickUser {
        uid,
        device_id: route.device_id.to_string(),
        reason,
        message: match reason {
            1 => "logged in on another gate".into(),
            _ => String::new(),
        },
        session_id: route.session_id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::im::ImConfig;
    use crate::server::service::ReferenceIm;
    use crate::{code, conv};

    const T0: u64 = 1_764_201_600_000;

    fn hub() -> Hub<ReferenceIm> {
        Hub::new(ReferenceIm::new(ImConfig {
            partitions: 4,
            push_threshold: 200,
            dedup_window_ms: crate::im::DEDUP_WINDOW_MS,
            auth_secret: Vec::new(),
            filter: None,
        }))
    }

    fn hello(gate: &str, shard: u32) -> Hello {
        Hello {
            version: 1,
            gate_id: gate.into(),
            shard,
            shards: 2,
            capabilities: CAPABILITIES,
            heartbeat_ms: 1000,
            max_frame: 4 << 20,
        }
    }

    fn online(uid: u64, device: &str, session_id: u64, since_ms: u64) -> LinkMsg {
        LinkMsg::event(Body::Presence(link::Presence {
            uid,
            device_id: device.into(),
            session_id,
            online: true,
            platform: 1,
            since_ms,
        }))
    }

    fn send(from: u64, to: u64, session_id: u64) -> LinkMsg {
        LinkMsg::request(
            77,
            Body::Send(link::Send {
                from,
                client_msg_id: 5,
                conv_type: conv::SINGLE,
                to,
                content_type: 1,
                body: bytes::Bytes::from_static(b"hi"),
                session_id,
                log_id: 3,
            }),
        )
    }

    fn sent_to(out: &[Out], link: LinkId) -> Vec<&Body> {
        out.iter()
            .filter_map(|o| match o {
                Out::Link(l, m) if *l == link => m.body.as_ref(),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_deliver_goes_once_to_each_link_holding_a_recipient_with_its_own_session_ids() {
        let mut hub = hub();
        let a = hub.open(&hello("g1", 0), T0).expect("open");
        let b = hub.open(&hello("g2", 1), T0).expect("open");
        hub.input(a, online(1, "pc", 1025, T0), T0).expect("ok");
        hub.input(a, online(2, "pc", 2049, T0), T0).expect("ok");
        hub.input(b, online(2, "phone", 1025, T0), T0).expect("ok");
        hub.drain().for_each(drop);
        hub.input(a, send(1, 2, 1025), T0).expect("ok");
        let out: Vec<Out> = hub.drain().collect();
        let on_a = sent_to(&out, a);
        let on_b = sent_to(&out, b);
        let Some(Body::SendResult(r)) = on_a.iter().find(|b| matches!(b, Body::SendResult(_)))
        else {
            panic!("no SendResult on the asking link: {out:?}")
        };
        assert_eq!(r.code, code::OK);
        let delivers = |bodies: &[&Body]| -> Vec<link::Deliver> {
            bodies
                .iter()
                .filter_map(|b| match b {
                    Body::Deliver(d) => Some(d.clone()),
                    _ => None,
                })
                .collect()
        };
        let (da, db) = (delivers(&on_a), delivers(&on_b));
        assert_eq!(da.len(), 1, "one Deliver per link: {out:?}");
        assert_eq!(db.len(), 1, "one Deliver per link: {out:?}");
        assert!(da[0].recipients.contains(&2));
        assert_eq!(db[0].recipients, [2]);
        // The sender's session is spared on its own gate only: on gate 2, 1025 is someone else.
        assert_eq!(da[0].exclude_session, 1025);
        assert_eq!(db[0].exclude_session, 0);
        // The answer echoes the request id.
        assert!(
            out.iter()
                .any(|o| matches!(o, Out::Link(l, m) if *l == a && m.request_id == 77))
        );
    }

    #[test]
    fn the_same_device_on_a_second_gate_kicks_the_older_session_only() {
        let mut hub = hub();
        let a = hub.open(&hello("g1", 0), T0).expect("open");
        let b = hub.open(&hello("g2", 0), T0).expect("open");
        hub.input(a, online(9, "phone", 1025, T0), T0).expect("ok");
        hub.input(a, online(9, "pc", 2049, T0), T0).expect("ok");
        hub.drain().for_each(drop);
        hub.input(b, online(9, "phone", 3073, T0 + 5), T0)
            .expect("ok");
        let out: Vec<Out> = hub.drain().collect();
        assert_eq!(
            out,
            [Out::Link(
                a,
                LinkMsg::event(Body::Kick(link::KickUser {
                    uid: 9,
                    device_id: "phone".into(),
                    reason: 1,
                    message: "logged in on another gate".into(),
                    session_id: 1025,
                }))
            )]
        );
        let mut routes: Vec<(LinkId, &str)> = hub
            .routes(9)
            .iter()
            .map(|r| (r.link, &*r.device_id))
            .collect();
        routes.sort();
        assert_eq!(routes, [(a, "pc"), (b, "phone")]);
        assert_eq!(hub.stats().duplicate_kicks, 1);
        // A resync that announces an older session than the one known kicks the announced one.
        hub.input(a, online(9, "phone", 4097, T0), T0).expect("ok");
        let out: Vec<Out> = hub.drain().collect();
        assert!(
            matches!(&out[..], [Out::Link(l, m)] if *l == a
                && matches!(&m.body, Some(Body::Kick(k)) if k.session_id == 4097)),
            "{out:?}"
        );
    }

    #[test]
    fn a_new_link_for_the_same_gate_shard_replaces_the_old_and_forgets_its_routes() {
        let mut hub = hub();
        let a = hub.open(&hello("g1", 0), T0).expect("open");
        hub.input(a, online(1, "pc", 1025, T0), T0).expect("ok");
        let a2 = hub.open(&hello("g1", 0), T0).expect("open");
        assert!(hub.drain().any(|o| o == Out::Close(a)));
        assert!(hub.routes(1).is_empty());
        // The old link's late messages are ignored; the new one works.
        hub.input(a, online(1, "pc", 1025, T0), T0)
            .expect("ignored");
        assert!(hub.routes(1).is_empty());
        hub.input(a2, online(1, "pc", 1025, T0), T0).expect("ok");
        assert_eq!(hub.routes(1).len(), 1);
        hub.close(a2, T0);
        assert!(hub.routes(1).is_empty());
        assert_eq!(hub.service().online_sessions(1), Vec::<u64>::new());
    }

    #[test]
    fn downlink_or_a_request_without_id_from_a_gate_is_a_protocol_error() {
        let mut hub = hub();
        let a = hub.open(&hello("g1", 0), T0).expect("open");
        let kick = LinkMsg::event(Body::Kick(Default::default()));
        assert_eq!(
            hub.input(a, kick, T0),
            Err(HubError::Unexpected("downlink"))
        );
        let mut no_id = send(1, 2, 1025);
        no_id.request_id = 0;
        assert_eq!(hub.input(a, no_id, T0), Err(HubError::NoRequestId));
        assert_eq!(hub.input(a, LinkMsg::default(), T0), Err(HubError::Empty));
    }

    #[test]
    fn a_local_push_is_stored_in_its_conversation_but_pushed_to_its_recipients_only() {
        let mut hub = hub();
        let a = hub.open(&hello("g1", 0), T0).expect("open");
        hub.input(a, online(2, "pc", 1025, T0), T0).expect("ok");
        hub.input(a, online(3, "pc", 2049, T0), T0).expect("ok");
        hub.drain().for_each(drop);
        let origin = Origin {
            shard: LOCAL_ORIGIN,
            conn: 9,
            seq: 0,
            log_id: 0,
        };
        let send = link::Send {
            from: 1,
            client_msg_id: 77,
            conv_type: conv::SINGLE,
            to: 2,
            content_type: 1,
            body: bytes::Bytes::from_static(b"hi"),
            session_id: 0,
            log_id: 0,
        };
        hub.submit_push(origin, send, vec![3], T0);
        let out: Vec<Out> = hub.drain().collect();
        let delivers: Vec<&link::Deliver> = sent_to(&out, a)
            .into_iter()
            .filter_map(|b| match b {
                Body::Deliver(d) => Some(d),
                _ => None,
            })
            .collect();
        let Some(Out::Local {
            origin: answered,
            reply: Reply::Send(r),
        }) = out.iter().find(|o| matches!(o, Out::Local { .. }))
        else {
            panic!("no local answer: {out:?}")
        };
        assert_eq!((answered.conn, r.code), (9, code::OK));
        // Only the recipient named, not the conversation's member 2.
        assert_eq!(delivers.len(), 1, "{out:?}");
        assert_eq!(delivers[0].recipients, [3]);
        assert_eq!(delivers[0].msg.as_ref().map(|m| m.msg_id), Some(r.msg_id));
        assert!(hub.local_pushes.is_empty());
    }

    #[test]
    fn biz_push_goes_only_to_links_that_granted_the_capability() {
        let mut hub = hub();
        let a = hub.open(&hello("g1", 0), T0).expect("open");
        let old = Hello {
            capabilities: 0,
            ..hello("g2", 0)
        };
        let b = hub.open(&old, T0).expect("open");
        hub.input(a, online(5, "pc", 1025, T0), T0).expect("ok");
        hub.input(b, online(5, "phone", 1025, T0), T0).expect("ok");
        hub.drain().for_each(drop);
        let push = link::BizPushUsers {
            topic: "t".into(),
            payload: bytes::Bytes::from_static(b"p"),
            recipients: vec![5, 6],
        };
        assert_eq!(hub.biz_push(push), (1, 1));
        let out: Vec<Out> = hub.drain().collect();
        assert!(
            matches!(&out[..], [Out::Link(l, m)] if *l == a
                && matches!(&m.body, Some(Body::BizPush(p)) if p.recipients == [5])),
            "{out:?}"
        );
    }

    #[test]
    fn session_ids_are_made_router_wide_and_back() {
        assert_eq!(global_session(0, 0), 0);
        let g = global_session(3, 1025);
        assert_eq!(local_session(g), Some((3, 1025)));
        assert_ne!(global_session(0, 1025), global_session(1, 1025));
        assert_eq!(local_session(0), None);
    }
}
