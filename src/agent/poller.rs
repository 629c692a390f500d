//! Polls every address in `ha.peers` with the `Status` RPC and reports each answer or failure to the
//! main thread, which publishes them to shared memory for `ha.status`.

use super::{auth, Event, Events, Shared};
use crate::config::AgentAddr;
use crate::proto::agent_client::AgentClient;
use crate::proto::{StatusReply, StatusRequest};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// One `Status` call with the cluster token and a deadline.
pub async fn status_call(
    channel: Channel,
    token: Option<&str>,
    from: &str,
    timeout: Duration,
) -> Result<StatusReply, String> {
    let mut client = AgentClient::new(channel);
    let mut req = tonic::Request::new(StatusRequest {
        from_node: from.to_string(),
    });
    req.set_timeout(timeout);
    if let Some(t) = token {
        let v = auth::bearer(t)
            .parse()
            .map_err(|_| "token is not valid header text".to_string())?;
        req.metadata_mut().insert(auth::METADATA_KEY, v);
    }
    match tokio::time::timeout(timeout, client.status(req)).await {
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}

pub fn channel_for(addr: &AgentAddr, timeout: Duration) -> Result<Channel, String> {
    Endpoint::from_shared(addr.uri())
        .map_err(|e| format!("bad address {addr}: {e}"))
        .map(|e| e.connect_timeout(timeout).tcp_nodelay(true).connect_lazy())
}

pub async fn run(
    shared: Arc<Shared>,
    events: Events,
    node_name: String,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut channels: HashMap<AgentAddr, Channel> = HashMap::new();
    loop {
        let interval = *shared.poll_interval.read();
        let peers: Vec<AgentAddr> = shared
            .peers
            .read()
            .iter()
            .filter(|a| **a != shared.own_address)
            .cloned()
            .collect();
        channels.retain(|a, _| peers.contains(a));
        shared.peer_views.write().retain(|a, _| peers.contains(a));
        let token = shared.token.read().clone();
        let mut calls = Vec::new();
        for addr in peers {
            let ch = match channels.get(&addr) {
                Some(c) => c.clone(),
                None => match channel_for(&addr, interval * 2) {
                    Ok(c) => {
                        channels.insert(addr.clone(), c.clone());
                        c
                    }
                    Err(error) => {
                        let _ = events.send(Event::PeerFailed { addr, error });
                        continue;
                    }
                },
            };
            let (token, from, events) = (token.clone(), node_name.clone(), events.clone());
            let shared = shared.clone();
            calls.push(tokio::spawn(async move {
                let result = match token.as_deref() {
                    None => Err("not sent: this agent has no token (ha.auth_token_file)".into()),
                    Some(t) => status_call(ch, Some(t), &from, interval * 2).await,
                };
                {
                    let mut views = shared.peer_views.write();
                    let v = views.entry(addr.clone()).or_default();
                    v.reachable = result.is_ok();
                    if let Ok(r) = &result {
                        v.reply = Some(r.clone());
                        v.last_ok = Some(std::time::Instant::now());
                    }
                }
                let _ = events.send(match result {
                    Ok(reply) => Event::PeerAnswered { addr, reply },
                    Err(error) => Event::PeerFailed { addr, error },
                });
            }));
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        // Calls still running after a full interval have timed out on their own by now; do not pile up.
        for c in calls {
            c.abort();
        }
    }
}
