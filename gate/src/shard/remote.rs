//! The shard's side of the remote plug-in (`backend.kind = "remote"`): builds the shard's own
//! link to `backend.addr` (`router::backend::remote`) and lists the shard's sessions for the
//! presence resync after every reconnect.

use std::rc::{Rc, Weak};
use std::time::Duration;

use router::backend::remote::{RemoteConfig, RemoteShard};
use router::backend::{Backend, GateSink};
use router::link::frame::DEFAULT_MAX_FRAME;

use super::state::Shard;

/// Heartbeat interval the gate announces on its links (the backend closes a link silent 3 x).
const LINK_HEARTBEAT: Duration = Duration::from_secs(1);

/// Starts this shard's link; it connects in the background and refuses requests until it is up.
pub(super) fn start(shard: &Rc<Shard>, sink: Weak<dyn GateSink>) -> Rc<dyn Backend> {
    let s = &shard.settings;
    let config = RemoteConfig {
        addr: s.backend.addr.clone(),
        gate_id: s.gate_id.clone(),
        shard: shard.index as u32,
        shards: shard.shards as u32,
        max_inflight: s.backend.max_inflight,
        timeout: Duration::from_millis(s.backend.timeout_ms),
        max_frame: DEFAULT_MAX_FRAME,
        heartbeat: LINK_HEARTBEAT,
    };
    let weak = Rc::downgrade(shard);
    let resync = Box::new(move || {
        weak.upgrade()
            .map(|shard| shard.online_presence())
            .unwrap_or_default()
    });
    RemoteShard::start(config, sink, resync)
}

impl Shard {
    /// A `Presence { online: true }` for every session of this shard (resync: the registry does
    /// not keep platform or login time, so those are 0).
    fn online_presence(&self) -> Vec<router::link::Presence> {
        self.registry
            .borrow()
            .iter()
            .map(|(uid, d)| router::link::Presence {
                uid,
                device_id: d.device_id.to_string(),
                session_id: d.session_id,
                online: true,
                platform: 0,
                since_ms: 0,
            })
            .collect()
    }
}
