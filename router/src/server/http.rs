//! The HTTP API on `router.http_listen` (filled in below).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use glommio::net::TcpListener;

use super::{Server, Service};
use crate::im::{Origin, Reply};

/// HTTP requests waiting for the backend's answer, by `Origin::conn`.
#[derive(Default)]
pub struct Waiters {
    waiting: RefCell<HashMap<u64, futures_lite::future::Boxed<()>>>,
}

impl Waiters {
    pub fn answer(&self, origin: Origin, _reply: Reply) {
        self.waiting.borrow_mut().remove(&origin.conn);
    }
}

pub(crate) async fn accept_loop<S: Service + 'static>(
    _server: Rc<Server<S>>,
    listener: TcpListener,
) {
    while let Ok(stream) = listener.accept().await {
        drop(stream);
    }
}
