//! Connections (and closing one), channels and consumers.

use super::*;

pub(super) fn route(shared: &Arc<Node>, call: &Call, seg: &[&str]) -> Result {
    let m = &call.method;
    let get = *m == Method::GET || *m == Method::HEAD;
    match (seg, m.clone()) {
        (["connections"], _) if get => Ok(connections(shared, call, None)),
        (["connections", name], _) => {
            let c = find_connection(shared, call, name)?;
            match *m {
                Method::GET => Ok(ok(&objects::connection(shared, &c))),
                Method::DELETE => {
                    let reason = call
                        .headers
                        .get("x-reason")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("Closed via management plugin")
                        .to_owned();
                    c.force_close(reason);
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => Ok(method_not_allowed()),
            }
        }
        (["connections", name, "channels"], _) if get => {
            let c = find_connection(shared, call, name)?;
            let chans: Vec<_> = c.channel_list.lock().iter().map(|ch| (c.clone(), ch.clone())).collect();
            let sh = shared.clone();
            Ok(list(call, chans, move |(c, ch)| objects::channel(&sh, c, ch)))
        }
        (["channels"], _) if get => Ok(channels(shared, call, None)),
        (["channels", name], _) if get => {
            for (c, ch) in all_channels(shared, call, None) {
                if objects::channel_name(shared, &c, &ch) == *name {
                    return Ok(ok(&objects::channel(shared, &c, &ch)));
                }
            }
            Ok(not_found())
        }
        (["consumers"], _) if get => Ok(consumers(shared, call, None)),
        (["consumers", vh], _) if get => {
            use_vhost(shared, call, vh)?;
            Ok(consumers(shared, call, Some(vh)))
        }

        // Exchanges.
        _ => Ok(not_found()),
    }
}

pub(super) fn connections_of(shared: &Node, call: &Call, vh: Option<&str>) -> Vec<Arc<warren_node::ConnInfo>> {
    let mut conns: Vec<_> = shared
        .registry
        .connections
        .lock()
        .values()
        .filter(|c| call.user.sees_user(&c.user) && vh.is_none_or(|v| c.vhost == v))
        .cloned()
        .collect();
    conns.sort_by_key(|c| c.id);
    conns
}

pub(super) fn connections(shared: &Arc<Node>, call: &Call, vh: Option<&str>) -> Reply {
    let sh = shared.clone();
    list(call, connections_of(shared, call, vh), move |c| objects::connection(&sh, c))
}

pub(super) fn find_connection(shared: &Node, call: &Call, name: &str) -> Result<Arc<warren_node::ConnInfo>> {
    connections_of(shared, call, None)
        .into_iter()
        .find(|c| c.name(shared.config.amqp_addr()) == name)
        .ok_or_else(not_found)
}

pub(super) type ChannelPair = (Arc<warren_node::ConnInfo>, Arc<warren_node::ChannelInfo>);

pub(super) fn all_channels(shared: &Node, call: &Call, vh: Option<&str>) -> Vec<ChannelPair> {
    let mut out = Vec::new();
    for c in connections_of(shared, call, vh) {
        let mut chans: Vec<_> = c.channel_list.lock().clone();
        chans.sort_by_key(|ch| ch.number);
        out.extend(chans.into_iter().map(|ch| (c.clone(), ch)));
    }
    out
}

pub(super) fn channels(shared: &Arc<Node>, call: &Call, vh: Option<&str>) -> Reply {
    let sh = shared.clone();
    list(call, all_channels(shared, call, vh), move |(c, ch)| objects::channel(&sh, c, ch))
}

pub(super) fn consumers(shared: &Arc<Node>, call: &Call, vh: Option<&str>) -> Reply {
    let mut rows = Vec::new();
    for v in visible_vhosts(shared, call, vh) {
        let mut qs = v.queues();
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        for q in qs {
            for (c, active) in q.consumers() {
                rows.push((q.clone(), c, active));
            }
        }
    }
    let sh = shared.clone();
    list(call, rows, move |(q, c, active)| objects::consumer(&sh, q, c, *active))
}
