//! The peer gRPC service (`proto/pg_ha.proto`): `Status` answers from the main thread's snapshot;
//! `Pledge` and `Promote` are handed to the main thread (they persist, or touch Postgres) and answered
//! when it is done. Every call passes the token check first.

// tonic::Status is the error type of every tonic API; boxing it here would only add noise.
#![allow(clippy::result_large_err)]

use super::{auth, Command, Event, Events, Shared};
use crate::proto::agent_server::{Agent, AgentServer};
use crate::proto::{
    PledgeReply, PledgeRequest, PromoteReply, PromoteRequest, StatusReply, StatusRequest,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

struct Service {
    shared: Arc<Shared>,
    events: Events,
}

impl Service {
    fn check<T>(&self, req: &Request<T>, rpc: &'static str) -> Result<(), Status> {
        let presented = req
            .metadata()
            .get(auth::METADATA_KEY)
            .and_then(|v| v.to_str().ok());
        let expected = self.shared.token.read().clone();
        auth::check(presented, expected.as_deref()).map_err(|reason| {
            let remote = req
                .remote_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|| "unknown".into());
            let _ = self.events.send(Event::AuthRejected {
                remote,
                rpc,
                reason,
            });
            Status::unauthenticated(format!("pg_ha: {reason}"))
        })
    }
}

#[tonic::async_trait]
impl Agent for Service {
    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        self.check(&req, "Status")?;
        let snap = self.shared.snapshot.read().clone();
        if !snap.ready {
            return Err(Status::unavailable("agent is starting"));
        }
        Ok(Response::new(snap.reply))
    }

    async fn pledge(&self, req: Request<PledgeRequest>) -> Result<Response<PledgeReply>, Status> {
        self.check(&req, "Pledge")?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.command(Command::Pledge {
            req: req.into_inner(),
            reply: tx,
        });
        rx.await
            .map(Response::new)
            .map_err(|_| Status::unavailable("agent main loop did not answer"))
    }

    async fn promote(
        &self,
        req: Request<PromoteRequest>,
    ) -> Result<Response<PromoteReply>, Status> {
        self.check(&req, "Promote")?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.command(Command::Promote {
            req: Box::new(req.into_inner()),
            reply: tx,
        });
        rx.await
            .map(Response::new)
            .map_err(|_| Status::unavailable("agent main loop did not answer"))
    }
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
    let service = AgentServer::new(Service {
        shared: shared.clone(),
        events: events.clone(),
    });
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
