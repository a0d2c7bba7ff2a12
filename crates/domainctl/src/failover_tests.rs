//! Replica failover against in-process fake domain managers (no real processes, loopback only):
//! a passive replica redirects writes to the active one, definitive errors stop the search,
//! and a list of only passive replicas ends in "no replica available".

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::client::Replicas;
use crate::error::CliError;
use domain_proto::manager::admin::v1 as pb;
use domain_proto::manager::admin::v1::domain_admin_service_server::{
    DomainAdminService, DomainAdminServiceServer,
};
use domain_proto::topology::v1 as topology_pb;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// A fake replica: the active one applies writes, a passive one refuses them with
/// `DM_NOT_ACTIVE` naming `active_url`. Both serve reads.
struct Fake {
    active: bool,
    active_url: String,
    calls: Arc<AtomicUsize>,
}

type Reply<T> = Result<Response<T>, Status>;

impl Fake {
    fn write(&self) -> Result<(), Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.active {
            return Ok(());
        }
        let mut status = Status::unavailable("this replica is passive");
        let metadata = status.metadata_mut();
        metadata.insert(
            domain_proto::error::ERROR_CODE_HEADER,
            "DM_NOT_ACTIVE".parse().expect("ascii"),
        );
        metadata.insert(
            domain_proto::error::ACTIVE_REPLICA_HEADER,
            self.active_url.parse().expect("ascii"),
        );
        Err(status)
    }

    fn read(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

fn state_change() -> Option<pb::ParticipantStateChange> {
    Some(pb::ParticipantStateChange {
        serial: 7,
        effective_at_micros: 1_000_000,
        changed: true,
    })
}

#[tonic::async_trait]
impl DomainAdminService for Fake {
    async fn set_participant_state(
        &self,
        _: Request<pb::SetParticipantStateRequest>,
    ) -> Reply<pb::SetParticipantStateResponse> {
        self.write()?;
        Ok(Response::new(pb::SetParticipantStateResponse {
            change: state_change(),
        }))
    }
    async fn get_participant(
        &self,
        request: Request<pb::GetParticipantRequest>,
    ) -> Reply<pb::GetParticipantResponse> {
        self.read();
        let mut status = Status::not_found(format!(
            "unknown participant {}",
            request.into_inner().participant_id
        ));
        status.metadata_mut().insert(
            domain_proto::error::ERROR_CODE_HEADER,
            "DM_UNKNOWN_PARTICIPANT".parse().expect("ascii"),
        );
        Err(status)
    }
    async fn list_participants(
        &self,
        _: Request<pb::ListParticipantsRequest>,
    ) -> Reply<pb::ListParticipantsResponse> {
        self.read();
        Ok(Response::new(pb::ListParticipantsResponse::default()))
    }
    async fn disable_participant(
        &self,
        _: Request<pb::DisableParticipantRequest>,
    ) -> Reply<pb::DisableParticipantResponse> {
        self.write()?;
        Ok(Response::new(pb::DisableParticipantResponse {
            change: state_change(),
        }))
    }
    async fn remove_participant(
        &self,
        _: Request<pb::RemoveParticipantRequest>,
    ) -> Reply<pb::RemoveParticipantResponse> {
        self.write()?;
        Ok(Response::new(pb::RemoveParticipantResponse {
            change: state_change(),
        }))
    }
    async fn list_mediators(
        &self,
        _: Request<pb::ListMediatorsRequest>,
    ) -> Reply<pb::ListMediatorsResponse> {
        self.read();
        Ok(Response::new(pb::ListMediatorsResponse::default()))
    }
    async fn list_sequencers(
        &self,
        _: Request<pb::ListSequencersRequest>,
    ) -> Reply<pb::ListSequencersResponse> {
        self.read();
        Ok(Response::new(pb::ListSequencersResponse::default()))
    }
    async fn get_parameters(
        &self,
        _: Request<pb::GetParametersRequest>,
    ) -> Reply<pb::GetParametersResponse> {
        self.read();
        Ok(Response::new(pb::GetParametersResponse::default()))
    }
    async fn set_parameters(
        &self,
        _: Request<pb::SetParametersRequest>,
    ) -> Reply<pb::SetParametersResponse> {
        self.write()?;
        Ok(Response::new(pb::SetParametersResponse::default()))
    }
    async fn status(&self, _: Request<pb::StatusRequest>) -> Reply<pb::StatusResponse> {
        self.read();
        Ok(Response::new(pb::StatusResponse::default()))
    }
    async fn export_connection(
        &self,
        _: Request<pb::ExportConnectionRequest>,
    ) -> Reply<pb::ExportConnectionResponse> {
        self.read();
        Ok(Response::new(pb::ExportConnectionResponse::default()))
    }
}

/// Starts a fake replica on a free loopback port; returns its URL and call counter.
async fn start(active: bool, active_url: &str) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    let calls = Arc::new(AtomicUsize::new(0));
    let fake = Fake {
        active,
        active_url: active_url.to_owned(),
        calls: calls.clone(),
    };
    tokio::spawn(
        Server::builder()
            .add_service(DomainAdminServiceServer::new(fake))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    (url, calls)
}

fn set_state_request() -> pb::SetParticipantStateRequest {
    pb::SetParticipantStateRequest {
        participant_id: "PAR::a::1220".to_owned(),
        permission: topology_pb::ParticipantPermission::Submission as i32,
        trust_level: topology_pb::TrustLevel::Ordinary as i32,
        public_key: None,
    }
}

async fn set_state(replicas: &Replicas) -> Result<pb::SetParticipantStateResponse, CliError> {
    replicas
        .call(set_state_request(), |mut c, r| async move {
            c.set_participant_state(r).await
        })
        .await
}

#[tokio::test]
async fn passive_replica_redirects_writes_to_the_active_one() {
    let (active, active_calls) = start(true, "").await;
    let (passive, passive_calls) = start(false, &active).await;
    // Nothing listens on port 1: the first endpoint is unreachable.
    let replicas = Replicas::new(
        vec!["http://127.0.0.1:1".into(), passive],
        None,
        Duration::from_secs(5),
    );
    let response = set_state(&replicas).await.expect("served by the active");
    assert_eq!(response.change.map(|c| c.serial), Some(7));
    assert_eq!(passive_calls.load(Ordering::SeqCst), 1);
    assert_eq!(active_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn reads_are_served_by_a_passive_replica() {
    let (passive, passive_calls) = start(false, "").await;
    let replicas = Replicas::new(vec![passive], None, Duration::from_secs(5));
    replicas
        .call(
            pb::StatusRequest {},
            |mut c, r| async move { c.status(r).await },
        )
        .await
        .expect("read from passive");
    assert_eq!(passive_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn definitive_error_stops_the_search() {
    let (first, first_calls) = start(true, "").await;
    let (second, second_calls) = start(true, "").await;
    let replicas = Replicas::new(vec![first, second], None, Duration::from_secs(5));
    let error = replicas
        .call(
            pb::GetParticipantRequest {
                participant_id: "PAR::x::1220".into(),
            },
            |mut c, r| async move { c.get_participant(r).await },
        )
        .await
        .expect_err("not found");
    assert_eq!(error.exit_code(), 1);
    assert_eq!(
        error.to_string(),
        "error: NOT_FOUND: unknown participant PAR::x::1220 [DM_UNKNOWN_PARTICIPANT]"
    );
    assert_eq!(first_calls.load(Ordering::SeqCst), 1);
    assert_eq!(second_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn only_passive_replicas_is_unavailable() {
    let (a, _) = start(false, "").await;
    let (b, b_calls) = start(false, &a).await;
    let replicas = Replicas::new(vec![a.clone(), b.clone()], None, Duration::from_secs(5));
    let error = set_state(&replicas).await.expect_err("no active replica");
    assert_eq!(error.exit_code(), 3);
    let text = error.to_string();
    assert!(
        text.contains(&format!(
            "{a}: UNAVAILABLE: this replica is passive [DM_NOT_ACTIVE]"
        )),
        "{text}"
    );
    // b names a, which was already tried: no second attempt on a.
    assert!(
        text.contains(&format!(
            "{b}: UNAVAILABLE: this replica is passive [DM_NOT_ACTIVE] (active replica: {a})"
        )),
        "{text}"
    );
    assert_eq!(b_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn silent_replica_times_out() {
    // Accepts TCP connections but never speaks HTTP/2.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let replicas = Replicas::new(vec![url.clone()], None, Duration::from_millis(300));
    let error = set_state(&replicas).await.expect_err("timeout");
    assert_eq!(error.exit_code(), 3, "{error}");
    assert!(error.to_string().contains(&url), "{error}");
}

#[tokio::test]
async fn run_renders_json_from_the_active_replica() {
    use clap::Parser as _;
    let (active, _) = start(true, "").await;
    let (passive, _) = start(false, &active).await;
    let id = format!("PAR::alice::1220{}", "c".repeat(64));
    let cli = crate::Cli::try_parse_from([
        "domainctl",
        "participants",
        "set-state",
        &id,
        "--permission",
        "observation",
        "--endpoint",
        &passive,
        "--output",
        "json",
    ])
    .expect("valid command line");
    let output = crate::run(cli).await.expect("served");
    let json: serde_json::Value = serde_json::from_str(&output).expect("one JSON document");
    assert_eq!(
        json,
        serde_json::json!({
            "participant_id": id,
            "serial": 7,
            "effective_at_micros": 1_000_000,
            "effective_at": "1970-01-01T00:00:01.000000Z",
            "changed": true,
        })
    );
}
