//! Lists as RabbitMQ 3.x serves them: `page`, `page_size`, `name`,
//! `use_regex`, `sort`, `sort_reverse` and `columns`, with its error texts.
//!
//! Without `page` a list is streamed: each object is turned into JSON only
//! when the response writer asks for the next chunk, so a list of 10,000
//! queues never exists twice in memory (as RabbitMQ, `name` filters only
//! paginated lists). With `page`, every object is rendered, filtered,
//! sorted and cut to the page.

use bytes::{BufMut, Bytes, BytesMut};
use hyper::StatusCode;
use serde_json::Value;

use super::{bad_request, error, ok, Body, Call, Reply};

/// Largest page RabbitMQ serves.
const MAX_PAGE_SIZE: usize = 500;
/// Bytes per streamed chunk.
const CHUNK: usize = 64 * 1024;

pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// Decodes `%XX` (and `+` as a space in query strings). Invalid escapes
/// stay as they are; invalid UTF-8 is replaced.
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but unreserved characters (a URL segment).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The value at a dotted path (`message_stats.publish_details.rate`).
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// Keeps only the requested columns (dotted paths), as RabbitMQ does.
fn select_columns(v: Value, columns: &[String]) -> Value {
    if columns.is_empty() {
        return v;
    }
    let mut out = serde_json::Map::new();
    for c in columns {
        if let Some(x) = at(&v, c) {
            let mut parts: Vec<&str> = c.split('.').collect();
            let last = parts.pop().unwrap_or_default();
            let mut m = &mut out;
            for p in parts {
                m = m
                    .entry(p.to_owned())
                    .or_insert_with(|| Value::Object(Default::default()))
                    .as_object_mut()
                    .expect("object");
            }
            m.insert(last.to_owned(), x.clone());
        }
    }
    Value::Object(out)
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            x.as_f64().unwrap_or(0.0).partial_cmp(&y.as_f64().unwrap_or(0.0)).unwrap_or(Equal)
        }
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (None, Some(_)) => Less,
        (Some(_), None) => Greater,
        _ => Equal,
    }
}

/// Pagination parameters, checked as RabbitMQ checks them.
fn pagination(call: &Call) -> Option<Result<(usize, usize), Reply>> {
    let page = call.param("page")?;
    let page_size = call.param("page_size").unwrap_or("100");
    let (Ok(page), Ok(page_size)) = (page.parse::<i64>(), page_size.parse::<i64>()) else {
        return Some(Err(bad_request("Pagination parameters are invalid")));
    };
    if page < 1 || page_size < 1 || page_size > MAX_PAGE_SIZE as i64 {
        return Some(Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_pagination_parameters",
            format!("Invalid pagination parameters: page number {page}, page size {page_size}"),
        )));
    }
    Some(Ok((page as usize, page_size as usize)))
}

/// The `name` filter (`use_regex`), if any.
type NameFilter = Box<dyn Fn(&str) -> bool>;

fn name_filter(call: &Call) -> Result<Option<NameFilter>, Reply> {
    let Some(filter) = call.param("name").filter(|f| !f.is_empty()).map(str::to_owned) else { return Ok(None) };
    if call.param("use_regex") == Some("true") {
        let r = regex::Regex::new(&filter).map_err(|e| bad_request(format!("invalid regex: {e}")))?;
        Ok(Some(Box::new(move |n: &str| r.is_match(n))))
    } else {
        let f = filter.to_lowercase();
        Ok(Some(Box::new(move |n: &str| n.to_lowercase().contains(&f))))
    }
}

fn out_of_range(page: usize, page_size: usize, filtered: usize) -> Option<Reply> {
    let page_count = filtered.div_ceil(page_size);
    (filtered > 0 && page > page_count || filtered == 0 && page > 1).then(|| {
        error(
            StatusCode::BAD_REQUEST,
            "page_out_of_range",
            format!("Page out of range, page: {page} page size: {page_size}, len: {filtered}"),
        )
    })
}

fn columns_of(call: &Call) -> Vec<String> {
    call.param("columns")
        .map(|c| c.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Like [`list`], for long lists whose items know their name: a page
/// sorted by name (or unsorted) is cut before anything is rendered, so a
/// page of 100 out of 10,000 queues renders 100.
pub fn list_named<T, F>(call: &Call, items: Vec<T>, name_of: fn(&T) -> &str, render: F) -> Reply
where
    T: Send + 'static,
    F: Fn(&T) -> Value + Send + 'static,
{
    let sort = call.param("sort").filter(|s| !s.is_empty());
    let Some(Ok((page, page_size))) = pagination(call) else { return list(call, items, render) };
    if sort.is_some_and(|s| s != "name") {
        return list(call, items, render);
    }
    let total = items.len();
    let mut items = items;
    match name_filter(call) {
        Ok(Some(keep)) => items.retain(|t| keep(name_of(t))),
        Ok(None) => {}
        Err(r) => return r,
    }
    if sort.is_some() {
        items.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    }
    if call.param("sort_reverse") == Some("true") {
        items.reverse();
    }
    let filtered = items.len();
    if let Some(r) = out_of_range(page, page_size, filtered) {
        return r;
    }
    let columns = columns_of(call);
    let page_items: Vec<Value> = items
        .iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .map(|t| select_columns(render(t), &columns))
        .collect();
    ok(&serde_json::json!({
        "filtered_count": filtered,
        "item_count": page_items.len(),
        "items": page_items,
        "page": page,
        "page_count": filtered.div_ceil(page_size),
        "page_size": page_size,
        "total_count": total,
    }))
}

/// Serves a list of `items` (already in the default order), rendering
/// each with `render`.
pub fn list<T, F>(call: &Call, items: Vec<T>, render: F) -> Reply
where
    T: Send + 'static,
    F: Fn(&T) -> Value + Send + 'static,
{
    let columns = columns_of(call);
    let sort = call.param("sort").filter(|s| !s.is_empty()).map(str::to_owned);
    let reverse = call.param("sort_reverse") == Some("true");
    let (page, page_size) = match pagination(call) {
        Some(Ok(p)) => p,
        Some(Err(r)) => return r,
        None if sort.is_some() || reverse => {
            let mut all: Vec<Value> = items.iter().map(&render).collect();
            sort_values(&mut all, sort.as_deref(), reverse);
            let all: Vec<Value> = all.into_iter().map(|v| select_columns(v, &columns)).collect();
            return ok(&Value::Array(all));
        }
        None => return stream(items, move |t| select_columns(render(t), &columns)),
    };
    let total = items.len();
    let mut all: Vec<Value> = items.iter().map(&render).collect();
    drop(items);
    match name_filter(call) {
        Ok(Some(keep)) => all.retain(|v| keep(v.get("name").and_then(Value::as_str).unwrap_or(""))),
        Ok(None) => {}
        Err(r) => return r,
    }
    sort_values(&mut all, sort.as_deref(), reverse);
    let filtered = all.len();
    let page_count = filtered.div_ceil(page_size);
    if let Some(r) = out_of_range(page, page_size, filtered) {
        return r;
    }
    let items: Vec<Value> =
        all.into_iter().skip((page - 1) * page_size).take(page_size).map(|v| select_columns(v, &columns)).collect();
    ok(&serde_json::json!({
        "filtered_count": filtered,
        "item_count": items.len(),
        "items": items,
        "page": page,
        "page_count": page_count,
        "page_size": page_size,
        "total_count": total,
    }))
}

fn sort_values(all: &mut [Value], sort: Option<&str>, reverse: bool) {
    if let Some(key) = sort {
        all.sort_by(|a, b| compare(at(a, key), at(b, key)));
    }
    if reverse {
        all.reverse();
    }
}

/// A JSON array written chunk by chunk as the client reads.
fn stream<T, F>(items: Vec<T>, render: F) -> Reply
where
    T: Send + 'static,
    F: Fn(&T) -> Value + Send + 'static,
{
    let mut it = items.into_iter();
    let mut started = false;
    let mut done = false;
    let chunks = std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut buf = BytesMut::with_capacity(CHUNK + 4096);
        if !started {
            buf.put_u8(b'[');
        }
        while buf.len() < CHUNK {
            let Some(t) = it.next() else {
                buf.put_u8(b']');
                done = true;
                break;
            };
            if started {
                buf.put_u8(b',');
            }
            started = true;
            let _ = serde_json::to_writer((&mut buf).writer(), &render(&t));
        }
        Some(Bytes::from(buf))
    });
    let mut r = hyper::Response::new(Body::Stream(Box::new(chunks)));
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("%2F", false), "/");
        assert_eq!(percent_decode("a%2fb+c", true), "a/b c");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("%zz%", false), "%zz%");
        assert_eq!(percent_decode("%", false), "%");
        assert_eq!(percent_decode("%4", false), "%4");
        assert_eq!(percent_decode("%C3%A9", false), "é");
        assert_eq!(
            parse_query("page=1&name=a%20b&x"),
            vec![("page".into(), "1".into()), ("name".into(), "a b".into()), ("x".into(), "".into())]
        );
    }

    #[test]
    fn columns() {
        let v = serde_json::json!({"name": "q", "message_stats": {"publish": 2, "ack": 1}, "messages": 3});
        assert_eq!(
            select_columns(v, &["name".into(), "message_stats.publish".into()]),
            serde_json::json!({"name": "q", "message_stats": {"publish": 2}})
        );
    }
}
