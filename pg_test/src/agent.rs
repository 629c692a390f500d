//! A gRPC client for the agents' `pg_ha.v1.Agent` service (generated from proto/pg_ha.proto).

use std::time::Duration;

/// The generated protobuf messages and client of `pg_ha.v1`.
pub mod pb {
    tonic::include_proto!("pg_ha.v1");
}

pub use pb::StatusReply;

/// Deadline of one RPC, connection included.
const RPC_TIMEOUT: Duration = Duration::from_secs(3);

/// Calls `Status` on the agent at `addr` ("host:port"), sending `authorization: Bearer <token>` when a token is
/// given. Connection failures come back as `UNAVAILABLE`, timeouts as `DEADLINE_EXCEEDED`.
#[allow(clippy::result_large_err)] // the brief fixes the error type: tonic::Status
pub fn agent_status(addr: &str, token: Option<&str>) -> Result<StatusReply, tonic::Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| tonic::Status::internal(format!("tokio runtime: {e}")))?;
    rt.block_on(agent_status_async(addr, token))
}

/// Async form of [`agent_status`].
#[allow(clippy::result_large_err)]
pub async fn agent_status_async(
    addr: &str,
    token: Option<&str>,
) -> Result<StatusReply, tonic::Status> {
    let call = async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| tonic::Status::invalid_argument(format!("agent address {addr}: {e}")))?
            .connect_timeout(RPC_TIMEOUT)
            .timeout(RPC_TIMEOUT);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connect to agent {addr}: {e}")))?;
        let mut client = pb::agent_client::AgentClient::new(channel);
        let mut req = tonic::Request::new(pb::StatusRequest {
            from_node: "pg_test".into(),
        });
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| tonic::Status::invalid_argument("token is not valid metadata"))?;
            req.metadata_mut().insert("authorization", value);
        }
        client.status(req).await.map(tonic::Response::into_inner)
    };
    match tokio::time::timeout(RPC_TIMEOUT * 2, call).await {
        Ok(r) => r,
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "Status RPC to {addr} timed out"
        ))),
    }
}

/// Calls `Pledge` on the agent at `addr`: ask the node to pledge to `coordinator` for `term`, as a
/// coordinator would (template step 2). Tests use it to depose a leader at a moment they choose.
#[allow(clippy::result_large_err)]
pub fn agent_pledge(
    addr: &str,
    token: &str,
    term: u64,
    coordinator: &str,
) -> Result<pb::PledgeReply, tonic::Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| tonic::Status::internal(format!("tokio runtime: {e}")))?;
    let call = async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| tonic::Status::invalid_argument(format!("agent address {addr}: {e}")))?
            .connect_timeout(RPC_TIMEOUT)
            .timeout(RPC_TIMEOUT * 3);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connect to agent {addr}: {e}")))?;
        let mut client = pb::agent_client::AgentClient::new(channel);
        let mut req = tonic::Request::new(pb::PledgeRequest {
            term,
            coordinator: coordinator.into(),
        });
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("token is not valid metadata"))?;
        req.metadata_mut().insert("authorization", value);
        client.pledge(req).await.map(tonic::Response::into_inner)
    };
    rt.block_on(call)
}
