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

/// Deadline of a `Pledge` or `Promote` call: a pledge may wait seconds for a WAL receiver to stop or for
/// replay to catch up, a promotion up to a minute for `pg_promote`.
const LONG_RPC_TIMEOUT: Duration = Duration::from_secs(90);

/// Calls `Pledge` on the agent at `addr` with the cluster's token: the test acts as a coordinator (for
/// example to revoke a leader without promoting anyone, or to reuse a term the way a retrying
/// coordinator could).
#[allow(clippy::result_large_err)]
pub fn agent_pledge(
    addr: &str,
    token: &str,
    req: pb::PledgeRequest,
) -> Result<pb::PledgeReply, tonic::Status> {
    block_on(async {
        let mut client = long_client(addr).await?;
        client
            .pledge(authorized(req, token)?)
            .await
            .map(tonic::Response::into_inner)
    })
}

/// Calls `Promote` on the agent at `addr` with the cluster's token (the test acting as a coordinator).
#[allow(clippy::result_large_err)]
pub fn agent_promote(
    addr: &str,
    token: &str,
    req: pb::PromoteRequest,
) -> Result<pb::PromoteReply, tonic::Status> {
    block_on(async {
        let mut client = long_client(addr).await?;
        client
            .promote(authorized(req, token)?)
            .await
            .map(tonic::Response::into_inner)
    })
}

#[allow(clippy::result_large_err)]
fn block_on<T>(
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| tonic::Status::internal(format!("tokio runtime: {e}")))?;
    rt.block_on(async {
        match tokio::time::timeout(LONG_RPC_TIMEOUT, call).await {
            Ok(r) => r,
            Err(_) => Err(tonic::Status::deadline_exceeded("agent RPC timed out")),
        }
    })
}

#[allow(clippy::result_large_err)]
async fn long_client(
    addr: &str,
) -> Result<pb::agent_client::AgentClient<tonic::transport::Channel>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| tonic::Status::invalid_argument(format!("agent address {addr}: {e}")))?
        .connect_timeout(RPC_TIMEOUT)
        .timeout(LONG_RPC_TIMEOUT)
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect to agent {addr}: {e}")))?;
    Ok(pb::agent_client::AgentClient::new(channel))
}

#[allow(clippy::result_large_err)]
fn authorized<T>(body: T, token: &str) -> Result<tonic::Request<T>, tonic::Status> {
    let mut req = tonic::Request::new(body);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| tonic::Status::invalid_argument("token is not valid metadata"))?;
    req.metadata_mut().insert("authorization", value);
    Ok(req)
}
