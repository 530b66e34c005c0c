//! uid → devices → connection, for the users one shard owns.
//!
//! Owned by exactly one shard and touched by its thread only (no lock). Holds at most one
//! session per (uid, device_id): registering a second one hands back the one it displaced, which
//! the shard then kicks (KICK 1). A connection removes itself when it ends; removal is keyed by
//! the connection too, so a displaced connection closing late never removes its successor.

use router::idmap::IdMap;

/// One logged-in device of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSession<C> {
    pub device_id: Box<str>,
    pub session_id: u64,
    pub conn: C,
}

/// The shard's sessions. `C` is the shell's connection handle (a small `Copy` key).
#[derive(Debug)]
pub struct Registry<C> {
    users: IdMap<u64, Vec<DeviceSession<C>>>,
    sessions: usize,
}

impl<C> Default for Registry<C> {
    fn default() -> Self {
        Self {
            users: IdMap::default(),
            sessions: 0,
        }
    }
}

impl<C: Copy + PartialEq> Registry<C> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `conn` as (uid, device_id). Returns the session it displaced, if that
    /// device was already logged in.
    pub fn register(
        &mut self,
        uid: u64,
        device_id: &str,
        session_id: u64,
        conn: C,
    ) -> Option<DeviceSession<C>> {
        // Most users have one device online: start with room for exactly one.
        let devices = self
            .users
            .entry(uid)
            .or_insert_with(|| Vec::with_capacity(1));
        let entry = DeviceSession {
            device_id: device_id.into(),
            session_id,
            conn,
        };
        if let Some(slot) = devices.iter_mut().find(|d| &*d.device_id == device_id) {
            return Some(std::mem::replace(slot, entry));
        }
        devices.push(entry);
        self.sessions += 1;
        None
    }

    /// Removes (uid, device_id) if it is still `conn`'s. Returns whether anything was removed.
    pub fn unregister(&mut self, uid: u64, device_id: &str, conn: C) -> bool {
        let Some(devices) = self.users.get_mut(&uid) else {
            return false;
        };
        let Some(at) = devices
            .iter()
            .position(|d| &*d.device_id == device_id && d.conn == conn)
        else {
            return false;
        };
        devices.swap_remove(at);
        if devices.is_empty() {
            self.users.remove(&uid);
        }
        self.sessions -= 1;
        true
    }

    /// Every logged-in device of `uid`.
    /// Every (uid, device session), in no particular order (presence resync).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &DeviceSession<C>)> + '_ {
        self.users
            .iter()
            .flat_map(|(&uid, devices)| devices.iter().map(move |d| (uid, d)))
    }

    pub fn devices(&self, uid: u64) -> &[DeviceSession<C>] {
        self.users.get(&uid).map_or(&[], Vec::as_slice)
    }

    /// Logged-in sessions on this shard.
    pub fn len(&self) -> usize {
        self.sessions
    }

    pub fn is_empty(&self) -> bool {
        self.sessions == 0
    }

    /// Users with at least one session.
    pub fn users(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_login_of_a_device_displaces_the_first() {
        let mut r = Registry::new();
        assert_eq!(r.register(7, "phone", 1, 'a'), None);
        let old = r.register(7, "phone", 2, 'b').expect("displaced");
        assert_eq!((old.conn, old.session_id), ('a', 1));
        assert_eq!(r.len(), 1);
        assert_eq!(r.devices(7)[0].conn, 'b');
    }

    #[test]
    fn another_device_kicks_nobody() {
        let mut r = Registry::new();
        assert_eq!(r.register(7, "phone", 1, 'a'), None);
        assert_eq!(r.register(7, "desk", 2, 'b'), None);
        assert_eq!(r.register(7, "", 3, 'c'), None);
        assert_eq!(r.len(), 3);
        assert_eq!(r.users(), 1);
    }

    #[test]
    fn displaced_connection_closing_late_keeps_its_successor() {
        let mut r = Registry::new();
        let _ = r.register(7, "phone", 1, 'a');
        let _ = r.register(7, "phone", 2, 'b');
        assert!(!r.unregister(7, "phone", 'a'));
        assert_eq!(r.devices(7).len(), 1);
        assert!(r.unregister(7, "phone", 'b'));
        assert!(r.is_empty());
        assert_eq!(r.users(), 0);
        assert!(r.devices(7).is_empty());
    }
}
