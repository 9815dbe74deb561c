//! A counting MongoDB wire proxy (diagnostics only, `--mongo-proxy`).
//!
//! Each service gets its own proxy in front of the MongoDB-wire server, so
//! every command it sends is counted and timed by name (`find`, `update`,
//! `insert`, `findAndModify`, `commitTransaction`, …) without touching the
//! service. The round-trip time of a command is the time between the request
//! passing through the proxy and its reply passing back; it includes the
//! server's work and one extra loopback hop.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `OP_MSG`.
const OP_MSG: i32 = 2013;

/// Counters of one command name.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CommandStat {
    /// Commands sent.
    pub count: u64,
    /// Commands that started a transaction (`startTransaction: true`).
    pub txn_starts: u64,
    /// Sum of round-trip times, microseconds.
    pub total_us: u64,
    /// Longest round trip, microseconds.
    pub max_us: u64,
}

type Stats = Arc<Mutex<BTreeMap<String, CommandStat>>>;

/// One command with wall-clock times (µs since the Unix epoch).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Command name.
    pub command: String,
    /// Request passed the proxy.
    pub sent_us: i64,
    /// Reply passed the proxy.
    pub replied_us: i64,
    /// Connection number (per proxy).
    pub conn: u64,
}

/// Most events kept per proxy (the oldest are dropped first).
const MAX_EVENTS: usize = 200_000;

type Events = Arc<Mutex<std::collections::VecDeque<Event>>>;

/// Requests awaiting their reply on one connection: request id → (command,
/// monotonic send time, wall-clock send time in µs).
type Pending = Arc<Mutex<HashMap<i32, (String, Instant, i64)>>>;

/// A listening proxy; dropped with the bench.
pub struct MongoProxy {
    /// Local port to connect to.
    pub port: u16,
    stats: Stats,
    events: Events,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MongoProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MongoProxy {
    /// Listens on a free loopback port and forwards to `upstream_port`.
    pub async fn start(upstream_port: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let stats: Stats = Arc::default();
        let events: Events = Arc::default();
        let (s2, e2) = (stats.clone(), events.clone());
        let task = tokio::spawn(async move {
            let mut conn = 0u64;
            while let Ok((client, _)) = listener.accept().await {
                conn += 1;
                let (stats, events) = (s2.clone(), e2.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await {
                        relay(client, server, stats, events, conn).await;
                    }
                });
            }
        });
        Ok(Self {
            port,
            stats,
            events,
            task,
        })
    }

    /// Counters so far.
    pub fn snapshot(&self) -> BTreeMap<String, CommandStat> {
        self.stats.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Clears the counters and the event log.
    pub fn reset(&self) {
        if let Ok(mut m) = self.stats.lock() {
            m.clear();
        }
        if let Ok(mut e) = self.events.lock() {
            e.clear();
        }
    }

    /// Every event kept.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .map(|e| e.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Commands that overlap `[from_us, to_us]`.
    pub fn events_between(&self, from_us: i64, to_us: i64) -> Vec<Event> {
        self.events
            .lock()
            .map(|e| {
                e.iter()
                    .filter(|e| e.replied_us >= from_us && e.sent_us <= to_us)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Reads one wire message (header included).
async fn read_message(r: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<Vec<u8>> {
    let mut header = [0u8; 16];
    r.read_exact(&mut header).await?;
    let len = i32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let len = usize::try_from(len).unwrap_or(0).max(16);
    let mut msg = vec![0u8; len];
    msg[..16].copy_from_slice(&header);
    r.read_exact(&mut msg[16..]).await?;
    Ok(msg)
}

fn le_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The body document of an `OP_MSG` (its kind-0 section).
fn body_of(msg: &[u8]) -> Option<&exo_store::mongodb::bson::RawDocument> {
    if le_i32(msg, 12)? != OP_MSG {
        return None;
    }
    // Header (16) + flagBits (4), then sections; kind 0 holds the body.
    let mut at = 20;
    while at < msg.len() {
        let kind = *msg.get(at)?;
        at += 1;
        let len = usize::try_from(le_i32(msg, at)?).ok()?;
        if kind == 0 {
            return exo_store::mongodb::bson::RawDocument::from_bytes(msg.get(at..at + len)?).ok();
        }
        // Kind 1: size, identifier and documents, all counted by `len`.
        at += len;
    }
    None
}

/// The command of a request, with its collection for CRUD commands
/// (`update State`, `findAndModify runs`), and whether it starts a
/// transaction.
fn command_of(msg: &[u8]) -> Option<(String, bool)> {
    let doc = body_of(msg)?;
    let (name, value) = doc.iter().next()?.ok()?;
    let name = match (name, value.as_str()) {
        (
            "find" | "update" | "insert" | "delete" | "findAndModify" | "aggregate" | "count"
            | "getMore",
            Some(coll),
        ) => format!("{name} {coll}"),
        _ => name.to_string(),
    };
    let starts = doc.get_bool("startTransaction").ok().unwrap_or(false);
    Some((name, starts))
}

/// The error of a reply, if any: `codeName` of a failed command, or the
/// code of its first write error.
fn error_of(msg: &[u8]) -> Option<String> {
    let doc = body_of(msg)?;
    let ok = doc
        .get("ok")
        .ok()
        .flatten()
        .and_then(|v| v.as_f64().or_else(|| v.as_i32().map(f64::from)))
        .unwrap_or(1.0);
    if ok == 0.0 {
        return Some(
            doc.get_str("codeName")
                .map(str::to_string)
                .unwrap_or_else(|_| "error".to_string()),
        );
    }
    let first = doc
        .get_array("writeErrors")
        .ok()?
        .into_iter()
        .next()?
        .ok()?;
    let code = first.as_document()?.get_i32("code").ok()?;
    Some(format!("writeError {code}"))
}

async fn relay(client: TcpStream, server: TcpStream, stats: Stats, events: Events, conn: u64) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let pending: Pending = Arc::default();
    let (p_up, s_up) = (pending.clone(), stats.clone());
    let up = async move {
        while let Ok(msg) = read_message(&mut cr).await {
            if let (Some((name, starts)), Some(id)) = (command_of(&msg), le_i32(&msg, 4)) {
                if starts && let Ok(mut s) = s_up.lock() {
                    s.entry(name.clone()).or_default().txn_starts += 1;
                }
                if let Ok(mut p) = p_up.lock() {
                    p.insert(id, (name, Instant::now(), crate::nodes::now_us()));
                }
            }
            if sw.write_all(&msg).await.is_err() {
                break;
            }
        }
    };
    let down = async move {
        while let Ok(msg) = read_message(&mut sr).await {
            let done = le_i32(&msg, 8)
                .and_then(|to| pending.lock().ok()?.remove(&to))
                .map(|(name, at, sent)| {
                    let name = match error_of(&msg) {
                        Some(e) => format!("{name} -> {e}"),
                        None => name,
                    };
                    (name, at.elapsed().as_micros() as u64, sent)
                });
            if cw.write_all(&msg).await.is_err() {
                break;
            }
            if let Some((name, us, sent)) = done {
                if let Ok(mut ev) = events.lock() {
                    if ev.len() >= MAX_EVENTS {
                        ev.pop_front();
                    }
                    ev.push_back(Event {
                        command: name.clone(),
                        sent_us: sent,
                        replied_us: sent + us as i64,
                        conn,
                    });
                }
                if let Ok(mut s) = stats.lock() {
                    let e = s.entry(name).or_default();
                    e.count += 1;
                    e.total_us += us;
                    e.max_us = e.max_us.max(us);
                }
            }
        }
    };
    // Either side closing ends the connection.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}
