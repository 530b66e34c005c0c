//! The browser demo page and its JavaScript client library, compiled into the binary
//! (`include_bytes!` of `web/`), and the HTTP answers that serve them on the client port when
//! `gate.web_demo` is on (PROTOCOL.md "Transport": other paths than `/ws` get 404 "unless the
//! gate serves them").
//!
//! Owns a fixed table of assets: path, content type, bytes. Every answer is a whole HTTP/1.1
//! response with `content-length`, `connection: close` and `cache-control: no-store` (the page
//! is a development aid: a browser never runs a stale copy against a newer gate). Never touches
//! IO, reads no file at run time, and decides from the path alone.

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::ws::HandshakeError;

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// The request path that serves it.
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// Everything the demo serves: the page, its style and script, and the client library.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../web/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/app.js"),
    },
    Asset {
        path: "/imgate.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/imgate.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/style.css"),
    },
];

/// The asset served at `path`, if any.
pub fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// The whole answer to `GET path`: the asset with status 200 when `enabled` and it exists,
/// else the 404 every other path gets.
pub fn answer_get(path: &str, enabled: bool) -> Bytes {
    match asset(path).filter(|_| enabled) {
        Some(asset) => ok_response(asset),
        None => HandshakeError::NotFound.response(),
    }
}

/// `200 OK` with the asset's bytes. The page only talks to the gate that served it
/// (`connect-src 'self'`) and loads nothing from elsewhere.
fn ok_response(asset: &Asset) -> Bytes {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: default-src 'self'; connect-src 'self'; img-src 'self' data:\r\n\r\n",
        asset.content_type,
        asset.body.len()
    );
    let mut out = BytesMut::with_capacity(head.len() + asset.body.len());
    out.put_slice(head.as_bytes());
    out.put_slice(asset.body);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(answer: &[u8]) -> (String, &[u8]) {
        let end = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head");
        let head = String::from_utf8(answer[..end].to_vec()).expect("ASCII head");
        (head, &answer[end + 4..])
    }

    #[test]
    fn every_asset_is_served_whole_with_its_type_and_no_caching() {
        for asset in ASSETS {
            assert!(!asset.body.is_empty(), "{} is empty", asset.path);
            let answer = answer_get(asset.path, true);
            let (head, body) = split(&answer);
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            assert!(head.contains(&format!("Content-Type: {}\r\n", asset.content_type)));
            assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
            assert!(head.contains("Connection: close\r\n"));
            assert!(head.contains("Cache-Control: no-store\r\n"));
            assert_eq!(body, asset.body);
        }
    }

    #[test]
    fn unknown_paths_and_a_disabled_demo_get_404() {
        for (path, enabled) in [("/", false), ("/imgate.js", false), ("/nope", true)] {
            let answer = answer_get(path, enabled);
            assert!(answer.starts_with(b"HTTP/1.1 404 "), "{path} {enabled}");
        }
        // The page names only assets that exist (no external URL, no missing file).
        let page = std::str::from_utf8(ASSETS[0].body).expect("UTF-8 page");
        assert!(!page.contains("http://") && !page.contains("https://"));
        for name in ["/style.css", "/app.js"] {
            assert!(page.contains(name) && asset(name).is_some(), "{name}");
        }
    }
}
