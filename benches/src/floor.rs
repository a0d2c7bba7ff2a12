//! Phase 0b: the transport floor. What one event's gRPC work over TLS costs on this box
//! with nothing behind it: a sender's `Send` (request with a submission of the run's size,
//! response), and the delivery of one event of the sequencer's shape on a `Subscribe`
//! stream. No signature is made or checked, no database touched, no ordering kept: the
//! server answers every `Send` at once and forwards a prepared event to one subscriber
//! (round-robin). Senders, server and subscribers run in this process on their own
//! runtimes, so the CPU the process spends per event is the transport's, both ends.
//!
//! Together with phase 0 (the signature work) and phase 1 (PostgreSQL's CPU per row) it
//! gives a floor of the box's CPU per event, and with it a ceiling of events/s that no
//! sequencer design keeping one submission per `Send`, TLS, and a signature per
//! submission can pass on this machine.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use domain_proto::common::v1 as common_pb;
use domain_proto::sequencer::v1 as pb;
use domain_proto::sequencer::v1::sequencer_service_client::SequencerServiceClient;
use domain_proto::sequencer::v1::sequencer_service_server::{
    SequencerService, SequencerServiceServer,
};
use domain_testkit::certs::TestPki;
use prost::Message as _;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};

/// What the transport floor measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FloorResult {
    pub seconds: f64,
    pub connections: usize,
    pub in_flight_per_connection: usize,
    pub subscribers: usize,
    pub request_bytes: usize,
    pub event_bytes: usize,
    /// `Send`s answered per second (each also delivered to one subscriber).
    pub events_per_sec: f64,
    /// CPU time of this process per event, µs: client, server and subscriber sides of
    /// one `Send` and one delivery, TLS both ways.
    pub cpu_micros_per_event: f64,
    /// The machine's busy share during the window, % of one core.
    pub machine_busy_pct: f64,
}

/// The ceiling the floors give: every event needs at least the transport, one sender
/// signature, one sequencer verification and one row's worth of PostgreSQL CPU.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Ceiling {
    pub transport_us: f64,
    pub sign_us: f64,
    pub verify_us: f64,
    pub postgres_row_us: f64,
    pub floor_us_per_event: f64,
    pub cores: usize,
    pub events_per_sec: f64,
}

impl Ceiling {
    pub fn of(floor: &FloorResult, sign_us: f64, verify_us: f64, postgres_row_us: f64) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|c| c.get())
            .unwrap_or(1);
        let floor_us_per_event = floor.cpu_micros_per_event + sign_us + verify_us + postgres_row_us;
        Self {
            transport_us: floor.cpu_micros_per_event,
            sign_us,
            verify_us,
            postgres_row_us,
            floor_us_per_event,
            cores,
            events_per_sec: cores as f64 * 1e6 / floor_us_per_event.max(1e-9),
        }
    }
}

/// The server: answers every `Send` and forwards a prepared event to the next subscriber.
struct FloorServer {
    event: pb::SubscribeResponse,
    subscribers: std::sync::Mutex<Vec<mpsc::Sender<Result<pb::SubscribeResponse, Status>>>>,
    next: AtomicUsize,
}

type EventStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl SequencerService for FloorServer {
    async fn handshake(
        &self,
        _: Request<pb::HandshakeRequest>,
    ) -> Result<Response<pb::HandshakeResponse>, Status> {
        Err(Status::unimplemented("transport floor"))
    }

    async fn get_domain_info(
        &self,
        _: Request<pb::GetDomainInfoRequest>,
    ) -> Result<Response<pb::GetDomainInfoResponse>, Status> {
        Err(Status::unimplemented("transport floor"))
    }

    async fn challenge(
        &self,
        _: Request<pb::ChallengeRequest>,
    ) -> Result<Response<pb::ChallengeResponse>, Status> {
        Err(Status::unimplemented("transport floor"))
    }

    async fn authenticate(
        &self,
        _: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        Err(Status::unimplemented("transport floor"))
    }

    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        // Touch what the sequencer must read of every request.
        let r = request.into_inner();
        std::hint::black_box((&r.submission, &r.signature));
        let target = {
            let subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
            if subs.is_empty() {
                None
            } else {
                Some(subs[self.next.fetch_add(1, Ordering::Relaxed) % subs.len()].clone())
            }
        };
        if let Some(tx) = target {
            // A subscriber that is gone only loses its event; the phase counts deliveries.
            let _ = tx.send(Ok(self.event.clone())).await;
        }
        Ok(Response::new(pb::SendResponse {
            sequencing_timestamp_micros: crate::now_micros(),
            deduplicated: false,
        }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        _: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let (tx, rx) = mpsc::channel(256);
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn acknowledge(
        &self,
        _: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::AcknowledgeResponse>, Status> {
        Err(Status::unimplemented("transport floor"))
    }
}

/// A `SendRequest` and a delivered event of the sizes the real run uses for
/// `payload_bytes`: one envelope with two recipients, a 64-byte signature, and for the
/// event the signed content (hashes), a batch proof of five hashes and the envelope.
fn shapes(payload_bytes: usize) -> (pb::SendRequest, pb::SubscribeResponse) {
    let member = format!("PAR::bench-sender-0::1220{}", "ab".repeat(32));
    let recipient = format!("PAR::bench-subscriber-0::1220{}", "cd".repeat(32));
    let envelope = pb::Envelope {
        content: crate::load::filler(payload_bytes).into(),
        recipients: vec![recipient, member.clone()],
        broadcast: false,
    };
    let submission = pb::SubmissionRequest {
        sender: member.clone(),
        message_id: "bench-0-000000000001".into(),
        envelopes: vec![envelope.clone()],
        max_sequencing_time_micros: i64::MAX,
        time_proof: false,
    }
    .encode_to_vec();
    let signature = |purpose| common_pb::Signature {
        signature: vec![0x55; 64],
        signer_fingerprint: format!("1220{}", "ef".repeat(32)),
        purpose,
    };
    let request = pb::SendRequest {
        submission,
        signature: Some(signature(common_pb::SignaturePurpose::Submission as i32)),
        trace_context: String::new(),
    };
    let content = pb::SignedEventContent {
        domain_id: format!("bench::1220{}", "01".repeat(32)),
        timestamp_micros: 1,
        sender: member,
        message_id_hash: vec![0x11; 32],
        envelope_hashes: vec![vec![0x22; 32]],
        time_proof: false,
    }
    .encode_to_vec();
    let event = pb::SubscribeResponse {
        event: Some(pb::SequencedEvent {
            counter: 1,
            timestamp_micros: 2,
            previous_timestamp_micros: 1,
            content,
            signature: Some(signature(
                common_pb::SignaturePurpose::SequencedBatch as i32,
            )),
            envelopes: vec![pb::DeliveredEnvelope {
                index: 0,
                envelope: Some(envelope),
            }],
            message_id: String::new(),
            trace_context: String::new(),
            batch_proof: Some(pb::BatchProof {
                leaf_index: 3,
                leaf_count: 28,
                path: vec![vec![0x33; 32]; 5],
            }),
        }),
    };
    (request, event)
}

/// Runs the floor for `duration` after `warmup`: `connections` TLS connections with
/// `in_flight` concurrent `Send`s each, and `subscribers` subscriptions.
pub async fn run(
    payload_bytes: usize,
    connections: usize,
    in_flight: usize,
    subscribers: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<FloorResult> {
    let (request, event) = shapes(payload_bytes);
    let request_bytes = request.encoded_len();
    let event_bytes = event.encoded_len();
    let pki = TestPki::new()?;
    let cert = pki.issue_server(&["localhost", "127.0.0.1"])?;
    let server = Arc::new(FloorServer {
        event,
        subscribers: std::sync::Mutex::new(Vec::new()),
        next: AtomicUsize::new(0),
    });
    // The server on its own runtime (two workers, as a sequencer has on this box), like a
    // separate process: its wake-ups cross threads as the real ones cross processes.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("floor-server")
        .enable_all()
        .build()
        .context("cannot start the floor server's runtime")?;
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind the floor server")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem));
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = {
        let stop = stop.clone();
        let service = SequencerServiceServer::from_arc(server.clone());
        server_rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tonic::transport::Server::builder()
                .tls_config(tls)?
                .tcp_nodelay(true)
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.cancelled(),
                )
                .await?;
            anyhow::Ok(())
        })
    };
    let client_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca_pem()))
        .domain_name("localhost");
    let connect = || async {
        Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(client_tls.clone())?
            .tcp_nodelay(true)
            .connect()
            .await
            .context("cannot connect to the floor server")
    };

    let sent = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..subscribers {
        let mut client = SequencerServiceClient::new(connect().await?);
        let mut stream = client
            .subscribe(pb::SubscribeRequest::default())
            .await?
            .into_inner();
        let delivered = delivered.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    next = stream.message() => match next {
                        Ok(Some(e)) => {
                            std::hint::black_box(&e);
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => return,
                    },
                }
            }
        });
    }
    // Every subscriber is registered before the first send, so each event has one.
    while server
        .subscribers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len()
        < subscribers
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let failed = Arc::new(std::sync::Mutex::new(None::<String>));
    for _ in 0..connections {
        let channel = connect().await?;
        for _ in 0..in_flight {
            let mut client = SequencerServiceClient::new(channel.clone());
            let request = request.clone();
            let sent = sent.clone();
            let stop = stop.clone();
            let failed = failed.clone();
            tasks.spawn(async move {
                while !stop.is_cancelled() {
                    match client.send(request.clone()).await {
                        Ok(_) => {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if !stop.is_cancelled() {
                                *failed.lock().unwrap_or_else(|e| e.into_inner()) =
                                    Some(e.to_string());
                            }
                            return;
                        }
                    }
                }
            });
        }
    }
    tokio::time::sleep(warmup).await;
    let (s0, d0) = (
        sent.load(Ordering::Relaxed),
        delivered.load(Ordering::Relaxed),
    );
    let cpu0 = crate::sysstat::sample(&[]);
    let t0 = Instant::now();
    tokio::time::sleep(duration).await;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = crate::sysstat::CpuUsage::between(&cpu0, &crate::sysstat::sample(&[]));
    let (s1, d1) = (
        sent.load(Ordering::Relaxed),
        delivered.load(Ordering::Relaxed),
    );
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    // The open subscribe streams would hold the graceful shutdown forever.
    server
        .subscribers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    let served = tokio::time::timeout(Duration::from_secs(5), serving).await;
    // Not `shutdown_timeout`: blocking is not allowed in this async context.
    server_rt.shutdown_background();
    match served {
        Ok(Ok(Err(e))) => anyhow::bail!("floor server: {e:#}"),
        Ok(Err(e)) => anyhow::bail!("floor server task: {e}"),
        Ok(Ok(Ok(()))) | Err(_) => {}
    }
    if let Some(e) = failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
        anyhow::bail!("floor send failed: {e}");
    }
    let events = (s1 - s0) as f64;
    let deliveries = (d1 - d0) as f64;
    anyhow::ensure!(events > 0.0, "no send completed in the floor window");
    // A subscriber that fell behind would make the event cheaper than it is.
    anyhow::ensure!(
        deliveries >= events * 0.95,
        "only {deliveries} of {events} floor events were delivered in the window"
    );
    let events_per_sec = events / seconds;
    Ok(FloorResult {
        seconds,
        connections,
        in_flight_per_connection: in_flight,
        subscribers,
        request_bytes,
        event_bytes,
        events_per_sec,
        cpu_micros_per_event: cpu.bench_pct / 100.0 * 1e6 / events_per_sec,
        machine_busy_pct: cpu.machine.user_pct + cpu.machine.system_pct,
    })
}
