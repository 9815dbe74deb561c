//! The harness against the real server binaries: start, talk the wire protocol, kill -9,
//! start again on the same port, and check that the data survived.
//!
//! The clients here speak the NATS text protocol and MongoDB `OP_MSG` by hand, so this crate
//! needs neither `async-nats` nor `mongodb`.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use exo_test_support::{MongoOptions, MongoServer, NatsServer, Servers, init_test_tracing};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------ NATS

/// Connects, checks the INFO banner, sends one request and returns the reply payload.
async fn nats_request(url: &str, subject: &str, payload: &str) -> anyhow::Result<String> {
    let addr = url.strip_prefix("nats://").context("nats:// url")?;
    let stream = timeout(IO_TIMEOUT, TcpStream::connect(addr)).await??;
    let mut conn = BufReader::new(stream);
    let mut line = String::new();
    timeout(IO_TIMEOUT, conn.read_line(&mut line)).await??;
    ensure!(line.starts_with("INFO {"), "expected INFO, got {line:?}");
    ensure!(
        line.contains("\"jetstream\":true"),
        "JetStream is off: {line}"
    );

    let msg = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":false}}\r\n\
         SUB _INBOX.t 1\r\nPUB {subject} _INBOX.t {}\r\n{payload}\r\nPING\r\n",
        payload.len()
    );
    conn.get_mut().write_all(msg.as_bytes()).await?;
    loop {
        line.clear();
        let n = timeout(IO_TIMEOUT, conn.read_line(&mut line)).await??;
        ensure!(n > 0, "connection closed");
        if let Some(rest) = line.strip_prefix("MSG _INBOX.t 1 ") {
            let len: usize = rest.trim().parse()?;
            let mut body = vec![0; len + 2];
            timeout(IO_TIMEOUT, conn.read_exact(&mut body)).await??;
            body.truncate(len);
            return Ok(String::from_utf8(body)?);
        }
        if line.starts_with("-ERR") {
            bail!("server error: {line}");
        }
    }
}

#[tokio::test]
async fn nats_server_survives_kill9_with_its_streams() -> anyhow::Result<()> {
    init_test_tracing();
    let mut nats = NatsServer::start().await?;
    let url = nats.url();
    assert!(url.starts_with("nats://127.0.0.1:"), "{url}");
    let pid = nats.pid().context("running")?;

    let created = nats_request(
        &url,
        "$JS.API.STREAM.CREATE.HARNESS",
        r#"{"name":"HARNESS","subjects":["harness.>"],"storage":"file"}"#,
    )
    .await?;
    assert!(created.contains("\"name\":\"HARNESS\""), "{created}");

    nats.restart().await?;
    assert_eq!(nats.url(), url, "same port after restart");
    assert_ne!(nats.pid(), Some(pid));
    let info = nats_request(&url, "$JS.API.STREAM.INFO.HARNESS", "").await?;
    assert!(
        info.contains("\"name\":\"HARNESS\""),
        "stream lost on restart: {info}"
    );

    nats.kill9();
    assert_eq!(nats.pid(), None);
    assert!(
        TcpStream::connect(url.trim_start_matches("nats://"))
            .await
            .is_err()
    );
    nats.start_again().await?;
    nats_request(&url, "$JS.API.INFO", "").await?;
    assert!(nats.log_contents().contains("start #3"));
    Ok(())
}

#[tokio::test]
async fn nats_start_again_refuses_a_running_server() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let err = nats.start_again().await.unwrap_err().to_string();
    assert!(err.contains("still running"), "{err}");
    Ok(())
}

// ------------------------------------------------------------------ MongoDB

/// Minimal BSON values for building commands.
enum Bson<'a> {
    I32(i32),
    Str(&'a str),
    Doc(Vec<(&'a str, Bson<'a>)>),
    Array(Vec<Bson<'a>>),
}

fn bson_doc(fields: &[(&str, Bson<'_>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (key, value) in fields {
        let (tag, bytes) = match value {
            Bson::I32(v) => (0x10, v.to_le_bytes().to_vec()),
            Bson::Str(s) => {
                let mut b = ((s.len() + 1) as i32).to_le_bytes().to_vec();
                b.extend_from_slice(s.as_bytes());
                b.push(0);
                (0x02, b)
            }
            Bson::Doc(d) => (0x03, bson_doc(d)),
            Bson::Array(items) => {
                let keys: Vec<String> = (0..items.len()).map(|i| i.to_string()).collect();
                let fields: Vec<(&str, Bson<'_>)> = keys
                    .iter()
                    .zip(items.iter())
                    .map(|(k, v)| (k.as_str(), v.shallow()))
                    .collect();
                (0x04, bson_doc(&fields))
            }
        };
        body.push(tag);
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(&bytes);
    }
    let mut doc = ((body.len() + 5) as i32).to_le_bytes().to_vec();
    doc.extend_from_slice(&body);
    doc.push(0);
    doc
}

impl Bson<'_> {
    fn shallow(&self) -> Bson<'_> {
        match self {
            Bson::I32(v) => Bson::I32(*v),
            Bson::Str(s) => Bson::Str(s),
            Bson::Doc(d) => Bson::Doc(d.iter().map(|(k, v)| (*k, v.shallow())).collect()),
            Bson::Array(a) => Bson::Array(a.iter().map(Bson::shallow).collect()),
        }
    }
}

/// Sends one `OP_MSG` command and returns the raw reply document.
async fn mongo_command(uri: &str, cmd: &[(&str, Bson<'_>)]) -> anyhow::Result<Vec<u8>> {
    let addr = uri.strip_prefix("mongodb://").context("mongodb:// uri")?;
    let addr = addr.split(['/', '?']).next().context("host:port")?;
    let mut stream = timeout(IO_TIMEOUT, TcpStream::connect(addr)).await??;
    let doc = bson_doc(cmd);
    let len = 16 + 4 + 1 + doc.len();
    let mut msg = Vec::with_capacity(len);
    for v in [len as i32, 1, 0, 2013] {
        msg.extend_from_slice(&v.to_le_bytes());
    }
    msg.extend_from_slice(&0u32.to_le_bytes()); // flagBits
    msg.push(0); // section kind 0: body
    msg.extend_from_slice(&doc);
    stream.write_all(&msg).await?;

    let mut header = [0u8; 16];
    timeout(IO_TIMEOUT, stream.read_exact(&mut header)).await??;
    let total = i32::from_le_bytes(header[0..4].try_into()?) as usize;
    let opcode = i32::from_le_bytes(header[12..16].try_into()?);
    ensure!(opcode == 2013, "reply opcode {opcode}");
    let mut rest = vec![0u8; total - 16];
    timeout(IO_TIMEOUT, stream.read_exact(&mut rest)).await??;
    let reply = rest[5..].to_vec(); // flagBits + section kind
    ensure!(
        contains(&reply, &ok_one()),
        "command failed: {}",
        String::from_utf8_lossy(&reply)
    );
    Ok(reply)
}

/// The BSON element `ok: 1.0`.
fn ok_one() -> Vec<u8> {
    let mut e = b"\x01ok\x00".to_vec();
    e.extend_from_slice(&1.0f64.to_le_bytes());
    e
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn mongo_hello(uri: &str) -> anyhow::Result<()> {
    let reply = mongo_command(uri, &[("hello", Bson::I32(1)), ("$db", Bson::Str("admin"))]).await?;
    ensure!(
        contains(&reply, b"\x08isWritablePrimary\x00\x01"),
        "not a writable primary: {}",
        String::from_utf8_lossy(&reply)
    );
    Ok(())
}

#[tokio::test]
async fn mongo_server_survives_kill9_with_synced_data() -> anyhow::Result<()> {
    init_test_tracing();
    let mut mongo = MongoServer::start_with(MongoOptions {
        sync_on_commit: true,
    })
    .await?;
    if mongo.is_external() {
        eprintln!("EXO_TEST_MONGO_URI is set: skipping the restart test");
        return Ok(());
    }
    let uri = mongo.uri();
    assert!(uri.starts_with("mongodb://127.0.0.1:"), "{uri}");
    mongo_hello(&uri).await?;

    let db = exo_test_support::unique_db_name("harness");
    mongo_command(
        &uri,
        &[
            ("insert", Bson::Str("things")),
            (
                "documents",
                Bson::Array(vec![Bson::Doc(vec![
                    ("_id", Bson::I32(7)),
                    ("v", Bson::Str("kept")),
                ])]),
            ),
            ("$db", Bson::Str(&db)),
        ],
    )
    .await?;

    mongo.restart().await?;
    assert_eq!(mongo.uri(), uri, "same port after restart");
    mongo_hello(&uri).await?;
    let found = mongo_command(
        &uri,
        &[
            ("find", Bson::Str("things")),
            ("filter", Bson::Doc(vec![("_id", Bson::I32(7))])),
            ("$db", Bson::Str(&db)),
        ],
    )
    .await?;
    assert!(
        contains(&found, b"kept"),
        "document lost on restart: {}",
        String::from_utf8_lossy(&found)
    );
    assert!(
        mongo.log_contents().contains("start #2"),
        "{}",
        mongo.log_contents()
    );

    mongo.kill9();
    assert_eq!(mongo.pid(), None);
    assert!(
        TcpStream::connect(uri.trim_start_matches("mongodb://"))
            .await
            .is_err()
    );
    mongo.start_again().await?;
    mongo_hello(&uri).await?;
    Ok(())
}

#[tokio::test]
async fn servers_start_together_and_die_on_drop() -> anyhow::Result<()> {
    init_test_tracing();
    let servers = Servers::start().await?;
    nats_request(&servers.nats.url(), "$JS.API.INFO", "").await?;
    mongo_hello(&servers.mongo.uri()).await?;
    let nats_port = servers.nats.port();
    let mongo_port = servers.mongo.port();
    drop(servers);
    assert!(
        TcpStream::connect(("127.0.0.1", nats_port)).await.is_err(),
        "nats-server still listening"
    );
    if let Some(port) = mongo_port {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).await.is_err(),
            "secantusd-rs still listening"
        );
    }
    Ok(())
}
