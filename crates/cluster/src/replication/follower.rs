//! The follower's side of replication: it connects to the leader, says what
//! it holds, and applies what it is sent to its copy of the data directory
//! (`warren_store::replica::Replica`), fsyncing and acknowledging at each sync mark.

use super::*;
use warren_store::replica::Replica;

/// The link to the leader: TCP, or TLS over it.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The follower's side, on its own thread until `stop`: replicates from
/// whichever node etcd names leader, reconnecting as that changes.
pub fn follow(cluster: Arc<Cluster>, data_dir: PathBuf, stop: Arc<AtomicBool>) {
    let mut applier = Replica::new(data_dir);
    // The last failure logged: the same one again (a leader that is gone
    // refuses every retry until its lease lapses) is not repeated.
    let mut last_error = String::new();
    while !stop.load(Ordering::Acquire) {
        let Role::Follower { leader, repl, epoch, .. } = cluster.role() else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        match follow_leader(&cluster, &mut applier, &leader, &repl, epoch, &stop) {
            Ok(()) => last_error.clear(),
            Err(e) => {
                let seen = format!("{leader} {epoch} {e}");
                if seen != last_error {
                    warn!(%leader, epoch, error = %e, "replication from the leader stopped");
                    last_error = seen;
                }
            }
        }
        if let Err(e) = applier.flush(&REPLICATED) {
            warn!(error = %e, "cannot sync the replicated data");
        }
        if !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    if let Err(e) = applier.flush(&REPLICATED) {
        warn!(error = %e, "cannot sync the replicated data");
    }
}

pub(super) fn follow_leader(
    cluster: &Cluster,
    applier: &mut Replica,
    leader: &str,
    repl: &str,
    epoch: u64,
    stop: &AtomicBool,
) -> Result<()> {
    let addr = std::net::ToSocketAddrs::to_socket_addrs(repl)
        .map_err(|e| Error::Peer(format!("{repl}: {e}")))?
        .next()
        .ok_or_else(|| Error::Peer(format!("{repl}: no address")))?;
    let tcp = StdTcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    let _ = tcp.set_nodelay(true);
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut s: Box<dyn ReadWrite> = match &cluster.tls {
        // The leader's certificate must name the node etcd says leads.
        Some(tls) => {
            let name = crate::tls::NodeTls::server_name(leader)?;
            let conn =
                tokio_rustls::rustls::ClientConnection::new(tls.client.clone(), name).map_err(io::Error::other)?;
            let mut link = tokio_rustls::rustls::StreamOwned::new(conn, tcp.try_clone()?);
            while link.conn.is_handshaking() {
                link.conn.complete_io(&mut link.sock).map_err(|e| Error::Peer(format!("TLS with {leader}: {e}")))?;
            }
            Box::new(link)
        }
        None => Box::new(tcp.try_clone()?),
    };
    tcp.set_read_timeout(Some(Duration::from_millis(200)))?;
    let held = applier
        .inventory(&REPLICATED, |path| checked(path).is_ok())
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot read the data directory: {e}")))?;
    s.write_all(&frame(HELLO, |b| {
        put_str(b, &cluster.settings.name);
        put_str(b, &cluster.settings.node);
        for (path, size, digest) in &held {
            put_str(b, path);
            b.extend_from_slice(&size.to_be_bytes());
            b.extend_from_slice(digest);
        }
    }))?;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut chunk = vec![0u8; 1 << 20];
    // Fault injection for tests (`WARREN_FAULT_REPLICA_DELAY_MS`): a slow
    // link — what the leader sends is in flight this long before the
    // follower sees it, and lost if the connection ends meanwhile (as when
    // the leader's machine dies). Only in builds with `fault-injection`.
    let delay = std::env::var("WARREN_FAULT_REPLICA_DELAY_MS")
        .ok()
        .filter(|_| cfg!(feature = "fault-injection"))
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    let mut in_flight: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    if delay.is_some() {
        tcp.set_read_timeout(Some(Duration::from_millis(20)))?;
    }
    let mut welcomed = false;
    let mut heard = Instant::now();
    // The last mark acknowledged: log position, definitions saves.
    let mut acked = (0u64, 0u64);
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        if !matches!(cluster.role(), Role::Follower { epoch: e, .. } if e == epoch) {
            return Ok(());
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(Error::Peer("the leader closed the connection".into())),
            Ok(n) => {
                heard = Instant::now();
                match delay {
                    Some(_) => in_flight.push_back((heard, chunk[..n].to_vec())),
                    None => buf.extend_from_slice(&chunk[..n]),
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if heard.elapsed() > LEADER_SILENCE {
                    return Err(Error::Peer(format!("nothing from the leader for {:?}", heard.elapsed())));
                }
                if in_flight.is_empty() {
                    continue;
                }
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(d) = delay {
            while in_flight.front().is_some_and(|(at, _)| at.elapsed() >= d) {
                buf.extend_from_slice(&in_flight.pop_front().expect("checked").1);
            }
        }
        // Apply every whole frame received; acknowledge once caught up.
        let mut at = 0;
        let mut ack = None;
        while let Some((kind, range)) = next_frame(&buf, at)? {
            at = range.end;
            let mut f = Fields(&buf[range]);
            if !welcomed && kind != WELCOME {
                return Err(Error::Protocol(format!("frame {kind} before the welcome")));
            }
            match kind {
                WELCOME => {
                    let theirs = f.u64()?;
                    if theirs != epoch {
                        return Err(Error::Peer(format!("leader of epoch {theirs}, expected {epoch}")));
                    }
                    welcomed = true;
                    info!(epoch, "replicating from the leader");
                }
                APPEND => {
                    let path = checked(f.str()?)?.to_owned();
                    let offset = f.u64()?;
                    applier.append(&path, offset, f.0)?;
                }
                DELETE => {
                    let path = checked(f.str()?)?.to_owned();
                    applier.delete(&path).map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))?;
                }
                REPLACE => {
                    let path = checked(f.str()?)?.to_owned();
                    applier.replace(&path, f.0).map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))?;
                }
                SYNC => ack = Some((f.u64()?, f.u64()?)),
                PING => ack = Some(ack.unwrap_or(acked)),
                k => return Err(Error::Protocol(format!("unknown replication frame {k}"))),
            }
        }
        buf.drain(..at);
        if ack.is_none() && applier.unsynced() > FLUSH_EVERY {
            // A long catch-up: sync as it goes, so that the acknowledgement
            // at its end does not wait for all of it.
            applier
                .flush(&REPLICATED)
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot sync the replicated data: {e}")))?;
        }
        if let Some((pos, defs)) = ack {
            applier
                .flush(&REPLICATED)
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot sync the replicated data: {e}")))?;
            acked = (acked.0.max(pos), acked.1.max(defs));
            s.write_all(&mark_frame(ACK, acked))?;
        }
    }
}
