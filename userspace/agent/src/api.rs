//! The unix-socket API server: one JSON request per connection, answered on a
//! blocking thread (handlers take short locks and do netlink and bpf syscalls).
//!
//! No client can stop it or starve root's CNI calls (docs/threat-model.md,
//! "Agent API"): the caller's credentials are checked before a byte is read,
//! a request is bounded in size and time, connections are limited (with a
//! share of their own for root), and an error of one connection, accept's
//! included, never ends the loop.

use crate::agent::Agent;
use anyhow::{Context, Result};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strake_api::{ApiError, ErrorKind, Reply, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Largest request (a GC list of every attachment a node can hold, 16,384,
/// is about 2 MiB).
pub const MAX_REQUEST: usize = 4 << 20;
/// A request must arrive whole, and its answer be taken, within this
/// (clients write theirs at once).
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once for root (the CNI plugin) and for the
/// `--api-allow-uid` user; beyond, a caller is told to try again at once.
pub const MAX_ROOT_CONNECTIONS: usize = 256;
pub const MAX_OTHER_CONNECTIONS: usize = 16;

struct Slots {
    root: Arc<Semaphore>,
    other: Arc<Semaphore>,
}

pub async fn serve(agent: Arc<Agent>) -> Result<()> {
    let addr = strake_api::socket_addr(&agent.cfg.api_socket)
        .with_context(|| format!("invalid --api-socket {}", agent.cfg.api_socket))?;
    if let Some(p) = addr.as_pathname() {
        let _ = std::fs::remove_file(p); // a stale socket from a previous run
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).ok();
        }
    }
    let std_listener = std::os::unix::net::UnixListener::bind_addr(&addr)
        .with_context(|| format!("binding the API socket {}", agent.cfg.api_socket))?;
    std_listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(std_listener)?;
    tracing::info!(socket = %agent.cfg.api_socket, "API listening");
    let slots = Arc::new(Slots {
        root: Arc::new(Semaphore::new(MAX_ROOT_CONNECTIONS)),
        other: Arc::new(Semaphore::new(MAX_OTHER_CONNECTIONS)),
    });
    let mut last_warning: Option<Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors or memory, a connection reset
                // before we took it: the node's or one client's trouble.
                // Wait a moment (the pending connection stays queued) and
                // go on.
                agent.metrics.error("api");
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "accepting an API connection failed; still serving");
                    last_warning = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (agent, slots) = (agent.clone(), slots.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(agent, stream, &slots).await {
                tracing::debug!(error = %e, "API connection failed");
            }
        });
    }
}

/// Answers `reply` and closes, within the I/O timeout, reading nothing.
async fn answer(stream: &mut UnixStream, reply: &Reply) -> Result<()> {
    let bytes = serde_json::to_vec(reply)?;
    tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    .context("the client took no answer")??;
    Ok(())
}

async fn refuse(
    agent: &Agent,
    stream: &mut UnixStream,
    kind: ErrorKind,
    why: String,
    result: &str,
) -> Result<()> {
    agent.metrics.api_request("none", result);
    answer(stream, &Reply::Error(ApiError::new(kind, why))).await
}

async fn handle(agent: Arc<Agent>, mut stream: UnixStream, slots: &Slots) -> Result<()> {
    // Who is calling, before a byte is read.
    let uid = stream.peer_cred()?.uid();
    let permit: Option<OwnedSemaphorePermit> = if uid == 0 {
        slots.root.clone().try_acquire_owned().ok()
    } else if Some(uid) == agent.cfg.api_allow_uid {
        slots.other.clone().try_acquire_owned().ok()
    } else {
        let why = format!(
            "uid {uid} may not use the strake-agent API: it serves root (the CNI plugin) and the --api-allow-uid user only; nothing of the request was read"
        );
        return refuse(&agent, &mut stream, ErrorKind::Forbidden, why, "forbidden").await;
    };
    let Some(_permit) = permit else {
        let why = format!(
            "strake-agent is serving as many API connections as it takes for uid {uid} ({}); try again",
            if uid == 0 { MAX_ROOT_CONNECTIONS } else { MAX_OTHER_CONNECTIONS }
        );
        return refuse(&agent, &mut stream, ErrorKind::TryAgainLater, why, "busy").await;
    };

    // The request, bounded in size and time.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        IO_TIMEOUT,
        (&mut stream)
            .take(MAX_REQUEST as u64 + 1)
            .read_to_end(&mut buf),
    )
    .await;
    let bad = match read {
        Err(_) => Some(format!(
            "the request did not arrive whole within {IO_TIMEOUT:?}: send it, then shut down writing"
        )),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(_)) if buf.len() > MAX_REQUEST => Some(format!(
            "the request is larger than {} MiB: refused unread",
            MAX_REQUEST >> 20
        )),
        Ok(Ok(_)) => None,
    };
    if let Some(why) = bad {
        return refuse(
            &agent,
            &mut stream,
            ErrorKind::InvalidRequest,
            why,
            "invalid",
        )
        .await;
    }
    let reply = match serde_json::from_slice::<Request>(&buf) {
        Ok(req) => {
            let op = op_name(&req);
            let a = agent.clone();
            let reply = tokio::task::spawn_blocking(move || dispatch(&a, req)).await?;
            let result = match &reply {
                Reply::Ok(_) => "ok",
                Reply::Error(e) => {
                    tracing::warn!(op, error = %e.message, "API request failed");
                    "error"
                }
            };
            agent.metrics.api_request(op, result);
            reply
        }
        Err(e) => {
            agent.metrics.api_request("none", "invalid");
            Reply::Error(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("malformed request: {e}"),
            ))
        }
    };
    answer(&mut stream, &reply).await
}

fn op_name(r: &Request) -> &'static str {
    match r {
        Request::Ping => "ping",
        Request::Allocate { .. } => "allocate",
        Request::Attach { .. } => "attach",
        Request::Release { .. } => "release",
        Request::Check { .. } => "check",
        Request::Gc { .. } => "gc",
        Request::Status => "status",
        Request::Endpoints => "endpoints",
        Request::LbList => "lb_list",
        Request::PolicyTrace { .. } => "policy_trace",
        Request::SyncPoint => "sync_point",
        Request::Bgp => "bgp",
        Request::BgpRoutes => "bgp_routes",
        Request::CtList { .. } => "ct_list",
        Request::CtFlush { .. } => "ct_flush",
    }
}

fn ok<T: Serialize>(r: Result<T, ApiError>) -> Reply {
    match r {
        Ok(v) => Reply::Ok(serde_json::to_value(v).expect("replies serialize")),
        Err(e) => Reply::Error(e),
    }
}

fn dispatch(agent: &Agent, req: Request) -> Reply {
    match req {
        Request::Ping => ok(Ok(agent.pong())),
        Request::Allocate { key, pod, netns } => ok(agent.allocate(key, pod, netns)),
        Request::Attach { key, pod_mac } => ok(agent.attach(&key, pod_mac)),
        Request::Release { key } => ok(agent.release(&key)),
        Request::Check { key } => ok(agent.check(&key)),
        Request::Gc { network, valid } => ok(agent.gc(&network, &valid)),
        Request::Status => ok(agent.status()),
        Request::Endpoints => ok(agent.endpoint_views()),
        Request::LbList => ok(agent.lb_status()),
        Request::PolicyTrace {
            from,
            to,
            port,
            protocol,
        } => ok(agent.policy_trace(&from, &to, port, &protocol)),
        Request::SyncPoint => ok(Ok(agent.sync_point())),
        Request::Bgp => ok(agent.bgp_status()),
        Request::BgpRoutes => ok(agent.bgp_routes()),
        Request::CtList { filter } => ok(agent.ct_list(&filter)),
        Request::CtFlush { filter } => ok(agent.ct_flush(&filter)),
    }
}
