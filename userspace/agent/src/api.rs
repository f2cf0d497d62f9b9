//! The unix-socket API server: one JSON request per connection, answered on a
//! blocking thread (handlers take short locks and do netlink and bpf syscalls).

use crate::agent::Agent;
use anyhow::{Context, Result};
use serde::Serialize;
use std::sync::Arc;
use strake_api::{ApiError, ErrorKind, Reply, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Requests larger than this are refused (a GC list of 100k attachments fits).
const MAX_REQUEST: u64 = 16 << 20;

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
    loop {
        let (stream, _) = listener.accept().await?;
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(agent, stream).await {
                tracing::debug!(error = %e, "API connection failed");
            }
        });
    }
}

async fn handle(agent: Arc<Agent>, mut stream: UnixStream) -> Result<()> {
    let cred = stream.peer_cred()?;
    let allowed = cred.uid() == 0 || Some(cred.uid()) == agent.cfg.api_allow_uid;
    let mut buf = Vec::new();
    (&mut stream)
        .take(MAX_REQUEST)
        .read_to_end(&mut buf)
        .await?;
    let reply = if !allowed {
        Reply::Error(ApiError::new(
            ErrorKind::InvalidRequest,
            format!(
                "uid {} may not use the strake-agent API (root only, or --api-allow-uid)",
                cred.uid()
            ),
        ))
    } else {
        match serde_json::from_slice::<Request>(&buf) {
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
            Err(e) => Reply::Error(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("malformed request: {e}"),
            )),
        }
    };
    stream.write_all(&serde_json::to_vec(&reply)?).await?;
    stream.shutdown().await?;
    Ok(())
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
    }
}
