//! The peer gRPC service (`proto/pg_ha.proto`): answers from the main thread's snapshot, after the
//! token check.

// tonic::Status is the error type of every tonic API; boxing it here would only add noise.
#![allow(clippy::result_large_err)]
use super::{auth, Event, Events, Shared};
use crate::proto::agent_server::{Agent, AgentServer};
use crate::proto::{StatusReply, StatusRequest};
use std::sync::Arc;
use tonic::{Request, Response, Status};

struct Service {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Agent for Service {
    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let snap = self.shared.snapshot.read().clone();
        if !snap.ready {
            return Err(Status::unavailable("agent is starting"));
        }
        Ok(Response::new(snap.reply))
    }
}

/// Token check for every call; rejections are reported to the main thread, which logs them.
fn authenticate(
    shared: &Shared,
    events: &Events,
    req: &Request<()>,
    rpc: &'static str,
) -> Result<(), Status> {
    let presented = req
        .metadata()
        .get(auth::METADATA_KEY)
        .and_then(|v| v.to_str().ok());
    let expected = shared.token.read().clone();
    auth::check(presented, expected.as_deref()).map_err(|reason| {
        let remote = req
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into());
        let _ = events.send(Event::AuthRejected {
            remote,
            rpc,
            reason,
        });
        Status::unauthenticated(format!("pg_ha: {reason}"))
    })
}

pub async fn serve(
    shared: Arc<Shared>,
    events: Events,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let addr = shared.own_address.to_string();
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            let _ = events.send(Event::Fatal(format!(
                "cannot listen on ha.agent_address {addr}: {e}"
            )));
            return;
        }
    };
    let incoming = match tonic::transport::server::TcpIncoming::from_listener(listener, true, None)
    {
        Ok(i) => i,
        Err(e) => {
            let _ = events.send(Event::Fatal(format!("cannot listen on {addr}: {e}")));
            return;
        }
    };
    let _ = events.send(Event::Listening(addr.clone()));
    let svc_shared = shared.clone();
    let ev = events.clone();
    let service = AgentServer::with_interceptor(
        Service {
            shared: shared.clone(),
        },
        move |req: Request<()>| {
            authenticate(&svc_shared, &ev, &req, "Status")?;
            Ok(req)
        },
    );
    let result = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await;
    if let Err(e) = result {
        let _ = events.send(Event::Fatal(format!("agent server on {addr} failed: {e}")));
    }
}
