//! The dashboard: a single page over the management API, served from the
//! same listener at `/`. Its files are embedded in the binary (no build
//! step, no CDN): `ui/index.html`, `ui/app.js` (the views), `ui/chart.js`
//! (a small canvas line chart), `ui/app.css`.

use bytes::Bytes;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;

use super::{Body, Reply};

const FILES: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", include_str!("ui/index.html")),
    ("/index.html", "text/html; charset=utf-8", include_str!("ui/index.html")),
    ("/ui/app.js", "text/javascript; charset=utf-8", include_str!("ui/app.js")),
    ("/ui/chart.js", "text/javascript; charset=utf-8", include_str!("ui/chart.js")),
    ("/ui/app.css", "text/css; charset=utf-8", include_str!("ui/app.css")),
];

/// The embedded file at `path`, if there is one.
pub fn asset(path: &str) -> Option<Reply> {
    let (_, kind, text) = FILES.iter().find(|(p, _, _)| *p == path)?;
    let mut r = Response::new(Body::Full(Some(Bytes::from_static(text.as_bytes()))));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(r)
}
