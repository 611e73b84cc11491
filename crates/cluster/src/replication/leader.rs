//! The leader's side of replication: the [`Hub`] that numbers the data
//! directory's changes into one stream, and one session per follower
//! (hello, catching up with what it lacks, the stream, its acks).

use super::*;
use warren_node::cluster::FollowerStatus;

/// A follower as the leader sees it.
pub(super) struct Peer {
    session: u64,
    /// The next frame to send it.
    cursor: u64,
    /// The log position it has fsync'd, and the definitions saves.
    acked: u64,
    acked_defs: u64,
    /// What the leader had synced (and saved) when it joined: it is caught
    /// up past it.
    joined_at: u64,
    joined_defs: u64,
    /// Confirms wait for it.
    counted: bool,
    /// In the ISR in etcd (or being added).
    in_isr: bool,
    adding: bool,
    heard: Instant,
}

pub(super) struct HubState {
    /// Frames not yet sent to every follower; `first` numbers the oldest.
    frames: VecDeque<Arc<Vec<u8>>>,
    first: u64,
    bytes: usize,
    /// The log position synced here.
    local: u64,
    /// Definitions saves so far.
    defs: u64,
    /// Set when this node stops leading: nothing more is confirmed.
    fenced: bool,
    peers: HashMap<String, Peer>,
    sessions: u64,
}

/// The leader's side: the stream of file changes, the followers, and the
/// position up to which messages may be confirmed.
pub struct Hub {
    dir: PathBuf,
    st: Mutex<HubState>,
    more: Notify,
    confirmable: watch::Sender<u64>,
    /// Definitions saves on every counted follower (replies to durable
    /// declarations wait for it).
    defs_replicated: watch::Sender<u64>,
    /// `HubState::defs`, readable without the lock (every connection looks
    /// at it after each read).
    defs: AtomicU64,
    /// Until when (ms on the cluster's clock) the lease is surely ours.
    lease_until: Arc<AtomicU64>,
}

impl Hub {
    /// `confirmable` is what connections wait on before confirming.
    pub fn new(
        dir: PathBuf,
        confirmable: watch::Sender<u64>,
        defs_replicated: watch::Sender<u64>,
        cluster: &Arc<Cluster>,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            dir,
            st: Mutex::new(HubState {
                frames: VecDeque::new(),
                first: 0,
                bytes: 0,
                local: 0,
                defs: 0,
                fenced: false,
                peers: HashMap::new(),
                sessions: 0,
            }),
            more: Notify::new(),
            confirmable,
            defs_replicated,
            defs: AtomicU64::new(0),
            lease_until: cluster.lease_until.clone(),
        })
    }

    /// Adds a frame built by `build`, which runs only if a follower is
    /// connected to receive it (the written bytes are not copied for none).
    fn push(&self, build: impl FnOnce() -> Vec<u8>) {
        {
            let mut st = self.st.lock();
            if st.peers.is_empty() {
                st.first += 1;
                return;
            }
            Self::push_in(&mut st, build());
        }
        self.more.notify_waiters();
    }

    /// Adds a frame to the stream (the caller notifies `more`).
    fn push_in(st: &mut HubState, frame: Vec<u8>) {
        if st.peers.is_empty() {
            // Nobody to send it to; a follower that joins catches up from the files.
            st.first += 1;
            return;
        }
        st.bytes += frame.len();
        st.frames.push_back(Arc::new(frame));
        while st.bytes > MAX_BACKLOG {
            // The slowest follower falls off the end: it ends its session
            // when it finds its cursor before `first`.
            let Some(f) = st.frames.pop_front() else { break };
            st.bytes -= f.len();
            st.first += 1;
        }
    }

    /// The message log changed a file, or wrote up to a position it syncs
    /// next: followers are told to sync it too, so that their syncs overlap
    /// this node's (what is confirmed still waits for this node's,
    /// [`Hub::synced`]).
    pub fn file_op(&self, op: FileOp<'_>) {
        match op {
            FileOp::Append { segment, offset, bytes } => {
                self.push(|| append_frame(&warren_store::replica::segment_path(segment), offset, bytes))
            }
            FileOp::Delete { segment } => {
                self.push(|| frame(DELETE, |b| put_str(b, &warren_store::replica::segment_path(segment))))
            }
            FileOp::Written { pos } => {
                {
                    let mut st = self.st.lock();
                    let mark = (pos, st.defs);
                    Self::push_in(&mut st, mark_frame(SYNC, mark));
                }
                self.more.notify_waiters();
            }
        }
    }

    /// A definitions file was saved: the new content, then a mark that
    /// followers acknowledge once it is durable there.
    pub fn saved(&self, path: &Path, bytes: &[u8]) {
        let Ok(rel) = path.strip_prefix(&self.dir) else { return };
        let rel = rel.to_string_lossy();
        let replace = frame(REPLACE, |b| {
            put_str(b, &rel);
            b.extend_from_slice(bytes);
        });
        {
            let mut st = self.st.lock();
            st.defs += 1;
            self.defs.store(st.defs, Ordering::Release);
            let mark = (st.local, st.defs);
            Self::push_in(&mut st, replace);
            Self::push_in(&mut st, mark_frame(SYNC, mark));
            self.recompute(&st);
        }
        self.more.notify_waiters();
    }

    /// Definitions saves so far: a reply to a durable declaration made
    /// now waits until `defs_replicated` reaches it.
    pub fn defs_saved(&self) -> u64 {
        self.defs.load(Ordering::Acquire)
    }

    /// Waits (up to `limit`) until every definitions save so far is on the
    /// followers; whether it is.
    pub async fn defs_replicated(&self, limit: Duration) -> bool {
        let want = self.defs_saved();
        let mut rx = self.defs_replicated.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|d| *d >= want)).await.is_ok_and(|r| r.is_ok())
    }

    /// The message log synced up to `pos` here (the followers were sent
    /// their mark to sync it before, by [`FileOp::Written`]).
    pub fn synced(&self, pos: u64) {
        let mut st = self.st.lock();
        st.local = st.local.max(pos);
        self.recompute(&st);
    }

    /// Advances what may be confirmed: synced here and on every follower
    /// counted, while the lease is surely held.
    fn recompute(&self, st: &HubState) {
        if st.fenced || crate::clock_ms() >= self.lease_until.load(Ordering::Acquire) {
            return;
        }
        let counted = || st.peers.values().filter(|p| p.counted);
        let pos = counted().map(|p| p.acked).fold(st.local, u64::min);
        let defs = counted().map(|p| p.acked_defs).fold(st.defs, u64::min);
        for (watch, to) in [(&self.confirmable, pos), (&self.defs_replicated, defs)] {
            watch.send_if_modified(|c| {
                let moved = to > *c;
                *c = (*c).max(to);
                moved
            });
        }
    }

    /// Called after the lease is renewed: confirms held while it was in
    /// doubt may go.
    pub fn lease_renewed(&self) {
        self.recompute(&self.st.lock());
    }

    /// This node stopped leading: nothing more is confirmed.
    pub fn fence(&self) {
        self.st.lock().fenced = true;
    }

    /// Each follower: name, counted for confirms, acknowledged position, lag.
    pub fn followers(&self) -> Vec<FollowerStatus> {
        let st = self.st.lock();
        let mut out: Vec<FollowerStatus> = st
            .peers
            .iter()
            .map(|(name, p)| FollowerStatus {
                name: name.clone(),
                in_sync: p.counted && p.in_isr,
                acked_position: p.acked,
                lag_bytes: st.local.saturating_sub(p.acked),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

impl crate::Leading for Hub {
    fn lease_renewed(&self) {
        Hub::lease_renewed(self)
    }

    fn fence(&self) {
        Hub::fence(self)
    }

    fn followers(&self) -> Vec<FollowerStatus> {
        Hub::followers(self)
    }
}

impl warren_node::cluster::ConfirmGate for Hub {
    fn defs_saved(&self) -> u64 {
        Hub::defs_saved(self)
    }

    fn defs_replicated(&self, limit: Duration) -> warren_node::cluster::BoxFuture<'_, bool> {
        Box::pin(Hub::defs_replicated(self, limit))
    }
}

/// Accepts followers, and the clients they pass on, on the cluster
/// listener (the leader only).
pub async fn serve(listener: TcpListener, hub: Arc<Hub>, cluster: Arc<Cluster>) {
    loop {
        let Ok((socket, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (hub, cluster) = (hub.clone(), cluster.clone());
        tokio::spawn(async move {
            if let Err(e) = admit(socket, peer, &hub, &cluster).await {
                info!(%peer, error = %e, "cluster link ended");
            }
        });
    }
}

/// A link to the cluster listener: its TLS handshake (with cluster TLS),
/// then its first frame, which must come from a member of this cluster
/// (named by its certificate, with TLS) within 5 s.
async fn admit(
    socket: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    hub: &Arc<Hub>,
    cluster: &Arc<Cluster>,
) -> Result<()> {
    let _ = socket.set_nodelay(true);
    let wait = Duration::from_secs(5);
    let (mut stream, cert): (BoxStream, _) = match &cluster.tls {
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
            let s = tokio::time::timeout(wait, acceptor.accept(socket))
                .await
                .map_err(|_| Error::Peer("TLS handshake timeout".into()))??;
            let cert = s.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
            (Box::new(s), cert)
        }
        None => (Box::new(socket), None),
    };
    let (kind, payload) = tokio::time::timeout(wait, read_frame(&mut stream, MAX_FIRST))
        .await
        .map_err(|_| Error::Peer("nothing said within 5 s".into()))??;
    let mut f = Fields(&payload);
    if !matches!(kind, HELLO | CLIENT) {
        return Err(Error::Protocol(format!("expected hello, got frame {kind}")));
    }
    let (name, node) = (f.str()?, f.str()?.to_owned());
    if name != cluster.settings.name || node == cluster.settings.node || !cluster.is_member(&node) {
        // (A node registers in etcd before it follows: one that is not
        // there yet is seen on the next tick and tries again.)
        return Err(Error::Protocol(format!("{node:?} of cluster {name:?} is not one of our members")));
    }
    if cluster.tls.is_some() && !cert.as_ref().is_some_and(|c| crate::tls::names(c, &node)) {
        return Err(Error::Protocol(format!("the certificate of {peer} does not name {node:?}")));
    }
    if kind == CLIENT {
        let protocol = match f.take(1)?[0] {
            1 => warren_node::cluster::Protocol::Amqp,
            2 => warren_node::cluster::Protocol::Http,
            p => return Err(Error::Protocol(format!("unknown client protocol {p}"))),
        };
        let client = f.str()?.parse().map_err(|_| Error::Protocol("bad client address".into()))?;
        let Some(serve) = cluster.tunnels.get() else { return Err(Error::NotLeader("no listener for clients")) };
        serve(protocol, stream, client);
        return Ok(());
    }
    let mut theirs = Held::new();
    while !f.0.is_empty() {
        let path = checked(f.str()?)?.to_owned();
        let size = f.u64()?;
        let digest: [u8; 32] = f.take(32)?.try_into().expect("32 octets");
        theirs.insert(path, (size, digest));
    }
    session(stream, node, theirs, hub, cluster).await
}

/// One follower's session on the leader, after its hello.
pub(super) async fn session(
    stream: BoxStream,
    node: String,
    theirs: Held,
    hub: &Arc<Hub>,
    cluster: &Arc<Cluster>,
) -> Result<()> {
    let (rd, mut wr) = tokio::io::split(stream);
    let Role::Leader { epoch } = cluster.role() else { return Err(Error::NotLeader("not the leader")) };
    // Whatever it held, it is about to be overwritten: out of the ISR first.
    cluster.isr_change(&node, false).await?;
    let (me, files) = {
        let mut st = hub.st.lock();
        st.sessions += 1;
        let me = st.sessions;
        let cursor = st.first + st.frames.len() as u64;
        let (joined_at, joined_defs) = (st.local, st.defs);
        st.peers.insert(
            node.clone(),
            Peer {
                session: me,
                cursor,
                acked: 0,
                acked_defs: 0,
                joined_at,
                joined_defs,
                counted: false,
                in_isr: false,
                adding: false,
                heard: Instant::now(),
            },
        );
        // The files as of now: later changes are in the stream from `cursor`.
        let mut files = Vec::new();
        for dir in REPLICATED {
            let Ok(entries) = fs::read_dir(hub.dir.join(dir)) else { continue };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let path = format!("{dir}/{name}");
                let wanted = match dir {
                    "messages" => name.ends_with(".seg"),
                    _ => name.ends_with(".json"),
                };
                if wanted && checked(&path).is_ok() {
                    files.push(path);
                }
            }
        }
        files.sort();
        (me, files)
    };
    info!(follower = %node, files = files.len(), "follower joined: sending what it lacks");
    let result = follow_up(rd, &mut wr, hub, cluster, &node, me, epoch, &files, &theirs).await;
    // Out of the ISR in etcd before confirms stop waiting for it.
    let counted = hub.st.lock().peers.get(&node).is_some_and(|p| p.session == me && (p.counted || p.in_isr));
    if counted {
        while let Err(e) = cluster.isr_change(&node, false).await {
            if !matches!(cluster.role(), Role::Leader { .. }) {
                return result;
            }
            warn!(follower = %node, error = %e, "cannot take a lost follower out of the ISR yet; confirms wait");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        info!(follower = %node, "follower left the in-sync replica set");
    }
    let mut st = hub.st.lock();
    if st.peers.get(&node).is_some_and(|p| p.session == me) {
        st.peers.remove(&node);
        if st.peers.is_empty() {
            st.first += st.frames.len() as u64;
            st.frames.clear();
            st.bytes = 0;
        }
    }
    hub.recompute(&st);
    result
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn follow_up(
    mut rd: Rd,
    wr: &mut Wr,
    hub: &Arc<Hub>,
    cluster: &Arc<Cluster>,
    node: &str,
    me: u64,
    epoch: u64,
    files: &[String],
    theirs: &Held,
) -> Result<()> {
    send(wr, &pos_frame(WELCOME, epoch)).await?;
    // What it holds and we do not goes; what it holds of ours stays, if
    // it is a prefix of our file; the rest is sent.
    let mut sent = 0u64;
    for path in theirs.keys().filter(|p| !files.contains(p)) {
        send(wr, &frame(DELETE, |b| put_str(b, path))).await?;
    }
    for path in files {
        let full = hub.dir.join(path);
        if path.starts_with("definitions/") {
            // Gone since: its deletion, or a newer save, is in the stream.
            if let Ok(bytes) = tokio::fs::read(&full).await {
                let replace = frame(REPLACE, |b| {
                    put_str(b, path);
                    b.extend_from_slice(&bytes);
                });
                send(wr, &replace).await?;
            }
            continue;
        }
        let Ok(mut f) = tokio::fs::File::open(&full).await else {
            // Deleted since (the stream says so too): theirs must go.
            send(wr, &frame(DELETE, |b| put_str(b, path))).await?;
            continue;
        };
        let mut offset = 0u64;
        if let Some((size, digest)) = theirs.get(path) {
            match prefix_digest(&mut f, *size).await? {
                Some(ours) if ours == *digest => offset = *size,
                _ => {
                    send(wr, &frame(DELETE, |b| put_str(b, path))).await?;
                    f.seek(std::io::SeekFrom::Start(0)).await?;
                }
            }
        }
        let mut buf = vec![0; COPY_CHUNK];
        loop {
            let n = f.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            send(wr, &append_frame(path, offset, &buf[..n])).await?;
            offset += n as u64;
            sent += n as u64;
        }
    }
    info!(follower = %node, bytes = sent, "follower has the leader's files");
    let joined = {
        let mut st = hub.st.lock();
        let p = st
            .peers
            .get_mut(node)
            .filter(|p| p.session == me)
            .ok_or_else(|| Error::Peer("replaced by a newer session".into()))?;
        // Its first acknowledgement syncs all it was sent: give it time.
        p.heard = Instant::now() + CATCH_UP_GRACE;
        (p.joined_at, p.joined_defs)
    };
    send(wr, &mark_frame(SYNC, joined)).await?;

    // Acknowledgements come in on their own task.
    let acks = {
        let (hub, cluster, node) = (hub.clone(), cluster.clone(), node.to_owned());
        tokio::spawn(async move { read_acks(&mut rd, &hub, &cluster, &node, me).await })
    };
    let out = send_stream(wr, hub, node, me).await;
    acks.abort();
    out
}

/// Reads a follower's acknowledgements: each moves its position; one that
/// reaches what the leader had when it joined counts it for confirms, then
/// puts it in the ISR in etcd.
pub(super) async fn read_acks(rd: &mut Rd, hub: &Arc<Hub>, cluster: &Arc<Cluster>, node: &str, me: u64) -> Result<()> {
    loop {
        let (kind, payload) = read_frame(rd, MAX_ACK).await?;
        if kind != ACK {
            return Err(Error::Protocol(format!("unexpected frame {kind} from a follower")));
        }
        let mut f = Fields(&payload);
        let (pos, defs) = (f.u64()?, f.u64()?);
        let add = {
            let mut st = hub.st.lock();
            let local = st.local;
            let Some(p) = st.peers.get_mut(node).filter(|p| p.session == me) else { return Ok(()) };
            p.acked = p.acked.max(pos);
            p.acked_defs = p.acked_defs.max(defs);
            p.heard = Instant::now();
            let caught_up = p.acked >= p.joined_at && p.acked_defs >= p.joined_defs;
            if !p.counted && caught_up && local.saturating_sub(p.acked) <= ISR_LAG {
                // Counted from now on, so that nothing is confirmed without
                // it once etcd names it in sync.
                p.counted = true;
            }
            let add = p.counted && !p.in_isr && !p.adding;
            if add {
                p.adding = true;
            }
            hub.recompute(&st);
            add
        };
        if add {
            let (hub, cluster, node) = (hub.clone(), cluster.clone(), node.to_owned());
            tokio::spawn(async move {
                let added = cluster.isr_change(&node, true).await;
                let mut st = hub.st.lock();
                if let Some(p) = st.peers.get_mut(&node).filter(|p| p.session == me) {
                    p.adding = false;
                    match added {
                        Ok(()) => {
                            p.in_isr = true;
                            info!(follower = %node, "follower caught up: in the in-sync replica set");
                        }
                        Err(e) => warn!(follower = %node, error = %e, "cannot add a follower to the ISR yet"),
                    }
                }
            });
        }
    }
}

/// Sends a follower the stream from its cursor, pinging it when idle;
/// ends when it falls behind, goes silent, or another session replaces it.
pub(super) async fn send_stream(wr: &mut Wr, hub: &Arc<Hub>, node: &str, me: u64) -> Result<()> {
    loop {
        let notified = hub.more.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let batch: Vec<Arc<Vec<u8>>> = {
            let mut st = hub.st.lock();
            let (first, end) = (st.first, st.first + st.frames.len() as u64);
            let Some(p) = st.peers.get(node).filter(|p| p.session == me) else {
                return Err(Error::Peer("replaced by a newer session".into()));
            };
            if p.heard.elapsed() > FOLLOWER_TIMEOUT {
                return Err(Error::Peer(format!("follower silent for {:?}", p.heard.elapsed())));
            }
            if p.cursor < first {
                return Err(Error::Peer("follower fell too far behind".into()));
            }
            let from = p.cursor;
            let mut size = 0;
            let batch: Vec<_> = st
                .frames
                .range((from - first) as usize..)
                .take_while(|f| {
                    size += f.len();
                    size <= 4 << 20
                })
                .cloned()
                .collect();
            let batch =
                if batch.is_empty() && from < end { vec![st.frames[(from - first) as usize].clone()] } else { batch };
            if let Some(p) = st.peers.get_mut(node) {
                p.cursor = from + batch.len() as u64;
            }
            // Frames every follower has are dropped.
            let low = st.peers.values().map(|p| p.cursor).min().unwrap_or(end);
            while st.first < low {
                let Some(f) = st.frames.pop_front() else { break };
                st.bytes -= f.len();
                st.first += 1;
            }
            batch
        };
        if batch.is_empty() {
            if tokio::time::timeout(PING_EVERY, notified).await.is_err() {
                send(wr, &frame(PING, |_| {})).await?;
            }
            continue;
        }
        for f in batch {
            send(wr, &f).await?;
        }
    }
}
