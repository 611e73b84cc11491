//! `warren-perf`: a load generator for AMQP 0-9-1 brokers.
//!
//! It speaks AMQP through Warren's own sans-IO codec over raw tokio sockets,
//! so the client is never the bottleneck a general-purpose library can be:
//! publishers write batches of frames per syscall, consumers ack with
//! `multiple`. Each body starts with the send time, so consumers measure
//! end-to-end latency. Results are printed as one JSON object.
//!
//! Works against any broker: Warren or RabbitMQ, same command.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::protocol::{basic, channel, confirm, connection, queue, AMQPClass};
use anyhow::{bail, Context};
use bytes::BytesMut;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use warren_protocol::frame::{self, Frame, FrameKind};
use warren_protocol::method::decode_method;
use warren_protocol::{FieldTable, LongString, PROTOCOL_HEADER};

#[derive(Parser, Debug, Clone)]
#[command(name = "warren-perf", version, about = "AMQP 0-9-1 load generator")]
struct Args {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:5672")]
    addr: String,
    #[arg(long, default_value = "guest")]
    user: String,
    #[arg(long, default_value = "guest")]
    password: String,
    /// Publishing connections.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Consuming connections.
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Body size in bytes (at least 8: the send timestamp).
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Consumer prefetch (basic.qos).
    #[arg(long, default_value_t = 1000)]
    prefetch: u16,
    /// Consumers ack every N deliveries with multiple=true (0 = no-ack).
    #[arg(long, default_value_t = 1000)]
    multi_ack: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Total publish rate limit in msg/s (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Publish with delivery_mode 2.
    #[arg(long)]
    persistent: bool,
    /// Declare the queue durable.
    #[arg(long)]
    durable: bool,
    /// Publisher confirms with at most this many unconfirmed (0 = off).
    #[arg(long, default_value_t = 0)]
    confirm: u64,
    /// Fan out through a fanout exchange to this many queues (0 = one queue
    /// via the default exchange).
    #[arg(long, default_value_t = 0)]
    fanout: usize,
    /// Spread publishers and consumers over this many queues (publisher and
    /// consumer i use queue i mod N; without --fanout).
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Each publisher stops after this many messages (0 = run for --duration).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Keep the queues as they are (no delete/redeclare before the run).
    #[arg(long)]
    keep: bool,
    /// Consume until this many messages have arrived, then report how long
    /// it took (drain a backlog; use with --publishers 0 --keep).
    #[arg(long, default_value_t = 0)]
    drain: u64,
    /// Queue name prefix.
    #[arg(long, default_value = "perf")]
    queue: String,
    /// Declare the queues with this `x-queue-type` (e.g. quorum; implies durable).
    #[arg(long)]
    queue_type: Option<String>,
    /// Publish with the properties a celery task message carries: content
    /// type and encoding, correlation id, reply-to and an 18-entry headers
    /// table (about 330 bytes of properties).
    #[arg(long)]
    headers: bool,
}

/// A celery 5 task message's properties (protocol 2), as kombu sends them.
fn celery_properties(persistent: bool) -> bytes::Bytes {
    use amq_protocol::types::{AMQPValue, FieldArray};
    let id = "9f1c2a4e-6b7d-4c1e-8a3f-2d5e7b9c0a1f";
    let s = |v: &str| AMQPValue::LongString(v.into());
    let mut h = FieldTable::default();
    for (k, v) in [
        ("lang", s("py")),
        ("task", s("tasks.add")),
        ("id", s(id)),
        ("shadow", AMQPValue::Void),
        ("eta", AMQPValue::Void),
        ("expires", AMQPValue::Void),
        ("group", AMQPValue::Void),
        ("group_index", AMQPValue::Void),
        ("retries", AMQPValue::LongLongInt(0)),
        ("timelimit", AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Void, AMQPValue::Void]))),
        ("root_id", s(id)),
        ("parent_id", AMQPValue::Void),
        ("argsrepr", s("(2, 2)")),
        ("kwargsrepr", s("{}")),
        ("origin", s("gen4242@worker-host")),
        ("ignore_result", AMQPValue::Boolean(false)),
        ("replaced_task_nesting", AMQPValue::LongLongInt(0)),
        ("stamped_headers", AMQPValue::Void),
    ] {
        h.insert(k.into(), v);
    }
    let mut p = basic::AMQPProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_headers(h)
        .with_priority(0)
        .with_correlation_id(id.into())
        .with_reply_to("5e2f7c1a-3b4d-3e6f-9a8b-1c2d3e4f5a6b".into());
    if persistent {
        p = p.with_delivery_mode(2);
    }
    warren_protocol::content::encode_properties(&p)
}

#[derive(Default)]
struct Stats {
    published: AtomicU64,
    confirmed: AtomicU64,
    consumed: AtomicU64,
}

/// One raw AMQP connection with one channel (1).
struct Client {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    rbuf: BytesMut,
    frame_max: u32,
}

impl Client {
    async fn connect(args: &Args) -> anyhow::Result<Client> {
        let s = TcpStream::connect(&args.addr).await.with_context(|| format!("connect {}", args.addr))?;
        s.set_nodelay(true)?;
        let (rd, mut wr) = s.into_split();
        wr.write_all(PROTOCOL_HEADER).await?;
        let mut c = Client { rd, wr, rbuf: BytesMut::with_capacity(1 << 20), frame_max: 131072 };
        c.expect_method().await?; // start
        let mut response = vec![0u8];
        response.extend_from_slice(args.user.as_bytes());
        response.push(0);
        response.extend_from_slice(args.password.as_bytes());
        c.send(AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: LongString::from(response),
            locale: "en_US".into(),
        })))
        .await?;
        let tune = match c.expect_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            other => bail!("expected tune, got {other:?}"),
        };
        c.frame_max = tune.frame_max;
        c.send(AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: tune.channel_max,
            frame_max: tune.frame_max,
            heartbeat: 0,
        })))
        .await?;
        c.send(AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open { virtual_host: "/".into() })))
            .await?;
        c.expect_method().await?;
        c.send_on(1, AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}))).await?;
        c.expect_method().await?;
        Ok(c)
    }

    async fn send(&mut self, m: AMQPClass) -> anyhow::Result<()> {
        self.send_on(0, m).await
    }

    async fn send_on(&mut self, ch: u16, m: AMQPClass) -> anyhow::Result<()> {
        let mut b = BytesMut::new();
        frame::write_method(&mut b, ch, &m);
        self.wr.write_all(&b).await?;
        Ok(())
    }

    async fn next_frame(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(f) = frame::parse_frame(&mut self.rbuf, 0).map_err(|e| anyhow::anyhow!("{e}"))? {
                return Ok(f);
            }
            if self.rd.read_buf(&mut self.rbuf).await? == 0 {
                bail!("broker closed the connection");
            }
        }
    }

    async fn expect_method(&mut self) -> anyhow::Result<AMQPClass> {
        loop {
            let f = self.next_frame().await?;
            if f.kind == FrameKind::Method {
                let m = decode_method(&f.payload).map_err(|e| anyhow::anyhow!("{e}"))?;
                if matches!(
                    m,
                    AMQPClass::Connection(connection::AMQPMethod::Close(_))
                        | AMQPClass::Channel(channel::AMQPMethod::Close(_))
                ) {
                    bail!("broker closed: {m:?}");
                }
                return Ok(m);
            }
        }
    }
}

fn queue_arguments(args: &Args) -> FieldTable {
    let mut t = FieldTable::default();
    if let Some(kind) = &args.queue_type {
        t.insert("x-queue-type".into(), amq_protocol::types::AMQPValue::LongString(kind.as_str().into()));
    }
    t
}

fn queue_names(args: &Args) -> Vec<String> {
    let n = if args.fanout > 0 { args.fanout } else { args.queues.max(1) };
    (0..n).map(|i| format!("{}-{i}", args.queue)).collect()
}

async fn setup(args: &Args) -> anyhow::Result<()> {
    if args.keep {
        return Ok(());
    }
    let mut c = Client::connect(args).await?;
    for q in queue_names(args) {
        c.send_on(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: q.as_str().into(),
                if_unused: false,
                if_empty: false,
                nowait: false,
            })),
        )
        .await?;
        c.expect_method().await?;
        c.send_on(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: q.as_str().into(),
                passive: false,
                durable: args.durable || args.queue_type.is_some(),
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: queue_arguments(args),
            })),
        )
        .await?;
        c.expect_method().await?;
        if args.fanout > 0 {
            c.send_on(
                1,
                AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                    queue: q.as_str().into(),
                    exchange: "amq.fanout".into(),
                    routing_key: "".into(),
                    nowait: false,
                    arguments: FieldTable::default(),
                })),
            )
            .await?;
            c.expect_method().await?;
        }
    }
    Ok(())
}

fn now_nanos(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

async fn publisher(
    args: Args,
    index: usize,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    base: Instant,
    rate: u64,
) -> anyhow::Result<()> {
    let mut c = Client::connect(&args).await?;
    if args.confirm > 0 {
        c.send_on(1, AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select { nowait: false }))).await?;
        c.expect_method().await?;
    }
    let (exchange, key) = if args.fanout > 0 {
        ("amq.fanout".to_string(), String::new())
    } else {
        let queues = queue_names(&args);
        (String::new(), queues[index % queues.len()].clone())
    };
    let mut publish = BytesMut::new();
    frame::write_method(
        &mut publish,
        1,
        &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: exchange.as_str().into(),
            routing_key: key.as_str().into(),
            mandatory: false,
            immediate: false,
        })),
    );
    // Properties: only delivery_mode (flag bit 12) when persistent.
    let celery = args.headers.then(|| celery_properties(args.persistent));
    let props: &[u8] = match &celery {
        Some(p) => p,
        None if args.persistent => &[0x10, 0x00, 2],
        None => &[0, 0],
    };
    let mut body = vec![0u8; args.size.max(8)];
    let batch = if rate > 0 { 1 } else { 64 };
    let mut buf = BytesMut::with_capacity(1 << 20);
    let mut sent: u64 = 0;
    let mut confirmed: u64 = 0;
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) && (args.count == 0 || sent < args.count) {
        if let Some(offset) = (sent * 1_000_000_000).checked_div(rate) {
            let due = start + Duration::from_nanos(offset);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
        }
        while args.confirm > 0 && sent - confirmed >= args.confirm {
            read_confirm(&mut c, &mut confirmed, &stats).await?;
        }
        let batch = if args.count > 0 { batch.min(args.count - sent) } else { batch };
        for _ in 0..batch {
            body[..8].copy_from_slice(&now_nanos(base).to_be_bytes());
            buf.extend_from_slice(&publish);
            frame::write_content(&mut buf, 1, c.frame_max, props, &body);
        }
        c.wr.write_all(&buf).await?;
        buf.clear();
        sent += batch;
        stats.published.fetch_add(batch, Ordering::Relaxed);
    }
    // With --count and confirms, wait until everything is confirmed.
    while args.count > 0 && args.confirm > 0 && confirmed < sent {
        read_confirm(&mut c, &mut confirmed, &stats).await?;
    }
    Ok(())
}

/// Reads one frame; counts the publisher confirms it carries.
async fn read_confirm(c: &mut Client, confirmed: &mut u64, stats: &Stats) -> anyhow::Result<()> {
    let f = c.next_frame().await?;
    if f.kind == FrameKind::Method {
        if let AMQPClass::Basic(basic::AMQPMethod::Ack(a)) =
            decode_method(&f.payload).map_err(|e| anyhow::anyhow!("{e}"))?
        {
            let n = if a.multiple { a.delivery_tag - *confirmed } else { 1 };
            *confirmed += n;
            stats.confirmed.fetch_add(n, Ordering::Relaxed);
        }
    }
    Ok(())
}

async fn consumer(
    args: Args,
    q: String,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    base: Instant,
    lat: Arc<latency::Lat>,
) -> anyhow::Result<()> {
    let mut c = Client::connect(&args).await?;
    c.send_on(1, AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos { prefetch_count: args.prefetch, global: false })))
        .await?;
    c.expect_method().await?;
    c.send_on(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: q.as_str().into(),
            consumer_tag: "".into(),
            no_local: false,
            no_ack: args.multi_ack == 0,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
    .await?;
    c.expect_method().await?;
    let mut last_tag = 0u64;
    let mut unacked = 0u64;
    let mut expect_body = false;
    let mut out = BytesMut::new();
    while !stop.load(Ordering::Relaxed) {
        let read = tokio::time::timeout(Duration::from_millis(200), c.rd.read_buf(&mut c.rbuf)).await;
        match read {
            Err(_) => continue,
            Ok(Ok(0)) => bail!("broker closed the connection"),
            Ok(r) => {
                r?;
            }
        }
        while let Some(f) = frame::parse_frame(&mut c.rbuf, 0).map_err(|e| anyhow::anyhow!("{e}"))? {
            match f.kind {
                FrameKind::Method => {
                    let p = &f.payload;
                    if p.len() > 4 && p[..4] == [0, 60, 0, 60] {
                        let tag_len = p[4] as usize;
                        last_tag = u64::from_be_bytes(p[5 + tag_len..13 + tag_len].try_into().unwrap());
                        expect_body = true;
                    } else {
                        bail!("unexpected method: {:?}", decode_method(p));
                    }
                }
                FrameKind::Body if expect_body && f.payload.len() >= 8 => {
                    expect_body = false;
                    let sent = u64::from_be_bytes(f.payload[..8].try_into().unwrap());
                    lat.record(now_nanos(base).saturating_sub(sent));
                    stats.consumed.fetch_add(1, Ordering::Relaxed);
                    unacked += 1;
                    if args.multi_ack > 0 && unacked >= args.multi_ack {
                        frame::write_confirm(&mut out, 1, last_tag, true, true);
                        unacked = 0;
                    }
                }
                _ => {}
            }
        }
        if !out.is_empty() {
            c.wr.write_all(&out).await?;
            out.clear();
        }
        // With small prefetch, ack what we have rather than wait for more.
        if args.multi_ack > 0 && unacked > 0 && unacked >= args.prefetch as u64 / 2 {
            frame::write_confirm(&mut out, 1, last_tag, true, true);
            c.wr.write_all(&out).await?;
            out.clear();
            unacked = 0;
        }
    }
    Ok(())
}

mod latency {
    //! Latency histogram: microsecond buckets up to 1 s, lock-free.
    use std::sync::atomic::{AtomicU64, Ordering};

    pub struct Lat {
        buckets: Vec<AtomicU64>,
    }

    impl Lat {
        pub fn new() -> Self {
            Lat { buckets: (0..1_000_001).map(|_| AtomicU64::new(0)).collect() }
        }
        pub fn record(&self, nanos: u64) {
            let us = (nanos / 1000).min(1_000_000) as usize;
            self.buckets[us].fetch_add(1, Ordering::Relaxed);
        }
        pub fn percentile(&self, p: f64) -> Option<u64> {
            let total: u64 = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum();
            if total == 0 {
                return None;
            }
            let want = ((total as f64) * p).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (us, b) in self.buckets.iter().enumerate() {
                seen += b.load(Ordering::Relaxed);
                if seen >= want {
                    return Some(us as u64);
                }
            }
            None
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    setup(&args).await?;
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let lat = Arc::new(latency::Lat::new());
    let base = Instant::now();
    let mut tasks = vec![];
    let queues = queue_names(&args);
    for i in 0..args.consumers.max(if args.fanout > 0 { queues.len() } else { 0 }) {
        let q = queues[i % queues.len()].clone();
        tasks.push(tokio::spawn(consumer(args.clone(), q, stats.clone(), stop.clone(), base, lat.clone())));
    }
    if args.drain > 0 {
        let t0 = Instant::now();
        while stats.consumed.load(Ordering::Relaxed) < args.drain {
            if tasks.iter().all(|t| t.is_finished()) {
                for t in tasks {
                    if let Ok(Err(e)) = t.await {
                        eprintln!("warren-perf: {e:#}");
                    }
                }
                bail!("consumers stopped after {} messages", stats.consumed.load(Ordering::Relaxed));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        let n = stats.consumed.load(Ordering::Relaxed);
        println!(
            "{}",
            serde_json::json!({"addr": args.addr, "consumed": n, "seconds": secs, "consumed_per_s": (n as f64 / secs).round()})
        );
        stop.store(true, Ordering::Relaxed);
        return Ok(());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let per_rate = if args.rate > 0 { (args.rate / args.publishers as u64).max(1) } else { 0 };
    if args.count > 0 {
        // Publish exactly --count per publisher, report how long it took.
        let t0 = Instant::now();
        let pubs: Vec<_> = (0..args.publishers)
            .map(|i| tokio::spawn(publisher(args.clone(), i, stats.clone(), stop.clone(), base, per_rate)))
            .collect();
        for p in pubs {
            p.await??;
        }
        let secs = t0.elapsed().as_secs_f64();
        let n = stats.published.load(Ordering::Relaxed);
        println!(
            "{}",
            serde_json::json!({"addr": args.addr, "published": n, "confirmed": stats.confirmed.load(Ordering::Relaxed), "seconds": secs, "published_per_s": (n as f64 / secs).round()})
        );
        stop.store(true, Ordering::Relaxed);
        return Ok(());
    }
    for i in 0..args.publishers {
        tasks.push(tokio::spawn(publisher(args.clone(), i, stats.clone(), stop.clone(), base, per_rate)));
    }
    // Skip the first second (warm-up), then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let p0 = stats.published.load(Ordering::Relaxed);
    let c0 = stats.consumed.load(Ordering::Relaxed);
    let k0 = stats.confirmed.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    let secs = t0.elapsed().as_secs_f64();
    let p1 = stats.published.load(Ordering::Relaxed);
    let c1 = stats.consumed.load(Ordering::Relaxed);
    let k1 = stats.confirmed.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(2), t).await.unwrap_or(Ok(Ok(()))) {
            eprintln!("warren-perf: {e:#}");
        }
    }
    let result = serde_json::json!({
        "addr": args.addr,
        "publishers": args.publishers,
        "consumers": args.consumers,
        "size": args.size,
        "prefetch": args.prefetch,
        "multi_ack": args.multi_ack,
        "persistent": args.persistent,
        "headers": args.headers,
        "confirm": args.confirm,
        "fanout": args.fanout,
        "queues": args.queues,
        "rate_limit": args.rate,
        "seconds": secs,
        "published_per_s": ((p1 - p0) as f64 / secs).round(),
        "confirmed_per_s": ((k1 - k0) as f64 / secs).round(),
        "consumed_per_s": ((c1 - c0) as f64 / secs).round(),
        "latency_us": {
            "p50": lat.percentile(0.50),
            "p99": lat.percentile(0.99),
            "p999": lat.percentile(0.999),
        },
    });
    println!("{result}");
    Ok(())
}
